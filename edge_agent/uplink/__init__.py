"""Uplink: outbox rows → MQTT batches → collector acks → outbox deletes.

Owns the MQTT session to the district broker: batches, the in-flight window, acks,
resends, the gateway's retained status and Last Will, and the collectors' presence. It
knows MQTT and the outbox's public surface (`edge_agent.outbox`), nothing of drivers or
devices; it imports `edge_agent.contract` (topics, wire format, MQTT connection) and
`edge_agent.outbox`. The invariants it keeps are written at the top of `session`.
"""

from edge_agent.uplink.session import FRESH_SESSION_S, Batch, Uplink

__all__ = ["FRESH_SESSION_S", "Batch", "Uplink"]
