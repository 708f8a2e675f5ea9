"""The published JSON Schemas: `event-v1.schema.json` (one event, the envelope and each
catalog type's `data`) and `status-v1.schema.json` (the gateway's `/api/status`). Read
with `importlib.resources`; no code but this docstring."""
