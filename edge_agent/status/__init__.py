"""The gateway's local status page for property staff, and its machine endpoints.

`/` (the page, zh-CN by default, English on a toggle), `/api/status` (JSON, schema
`edge_agent/contract/schemas/status-v1.schema.json`), `/api/stream` (server-sent events),
`/metrics` (Prometheus text), `/healthz`, `/snapshots/{id}.jpg` (credential only).
See docs/status.md.

Reads the agent's state through `AgentView` (pipeline, outbox, uplink counters); imports
`edge_agent.contract` and the stages' public surfaces, never a driver.
"""
