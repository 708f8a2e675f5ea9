"""Edge agent for community gateways: devices in, durable events out over MQTT.

One folder per stage of the event path (`rules`, `pipeline`, `outbox`, `uplink`), the
shared `contract`, the driver `sdk`, the gateway `config`, the `status` page; `agent`
composes them and `cli` is the `edge-agent` command (docs/architecture.md).
"""

from edge_agent import _lean_imports as _lean_imports  # first: keeps ~25 MiB out of the agent

__version__ = "0.1.0"
