"""District collector: MQTT ingest, validation, quarantine, the district store.

Owns everything between the broker and the district store: topic identity, the gateway
registry (where each gateway is installed), validation, bounded quarantine, idempotent
inserts and acks after commit (`ingest`, `validate`, `registry`, `quarantine`,
`store/`), and the Mosquitto it may run itself (`managed_broker`). Imports only
`edge_agent.contract` of the agent (checked by `./run lint`).
"""
