"""What the edge and the collector share, and what the district platform may rely on.

The data contract: the event envelope v1 and its catalog (`envelope`), the MQTT topics
(`topics`), the batch and ack payloads (`wire`) and the published JSON Schemas
(`schemas`: event-v1, status-v1). Beside it, the plumbing both processes are built from:
opening MQTT clients (`mqtt`), structured logging (`logs`), back-off (`backoff`),
strict settings files (`settings`), systemd's notify protocol (`sdnotify`) and the stage
beats that feed its watchdog (`watchdog`). Changing the data contract needs a version bump.

Imports nothing of `edge_agent` outside this package: the collector imports this and
nothing else of the agent (enforced by import-linter, see pyproject.toml).
"""
