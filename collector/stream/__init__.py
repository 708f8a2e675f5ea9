"""The event stream API (issue 12): departments read the district store in commit order.

- `position`: where a reader is in a store (SQLite rowid, PostgreSQL `(tx, id)`);
- `cursor`: that position as an opaque, HMAC-authenticated token;
- `filter`: request filters and a consumer's scope, planned into SQL (pure, no I/O);
- `reader`: pages of events after a position, never skipping a late commit;
- `params`: query parameters parsed and checked (pure);
- `api`, `sse`: the aiohttp routes (`openapi.yaml` documents them).

Imports the store's key helpers and models; nothing of ingest or MQTT. Consumers and their
tokens come from `collector.consumers` through the small protocol in `access`.
"""
