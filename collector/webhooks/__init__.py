"""Push subscriptions (webhooks, issue 12 item 3): the stream delivered to a department's
HTTPS endpoint as signed CloudEvents batches, at least once, with a cursor of its own.

- `signing`: the Standard Webhooks signature (pure);
- `plan`: batches, Webhook-Id, what a response means, target URLs (pure);
- `db`: the two tables on either store (SQLite: created on open; PostgreSQL: migration
  `0005_webhooks.sql`);
- `service`: `Webhooks` (add, list, remove, rotate, cursor and counters, dead letters);
- `deliver`: the asyncio delivery loop, one task per subscription (aiohttp client);
- `lag`: how far each subscription is behind (the lag page and `webhooks list`);
- `web`: `/v1/webhooks` and `/webhooks` on the API listener (operator token), and the
  hook that runs the delivery loop inside `edge-collector serve` / `run --serve`;
- `cli`: `edge-collector webhooks add|list|remove|replay|rotate`.

The stream is read through `collector.stream.reader` with the consumer's scope
(`collector.consumers`); docs/webhooks.md explains the whole.
"""
