"""District store backends, chosen by URL: `sqlite:///…` (embedded default) or `postgresql://…`.

Owns the tables (`schema`: `events` is a public contract), idempotent inserts, stream
watermarks and gaps, the quarantine. Imports `edge_agent.contract` and the collector's
own models; nothing of ingest or MQTT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collector.store.base import (
    DroppedCount,
    Gap,
    IngestResult,
    Origin,
    Payload,
    QuarantineEntry,
    Store,
    StoreError,
    StoreLost,
    StoreStats,
    StreamInfo,
)
from collector.store.url import StoreUrl, parse_store_url

if TYPE_CHECKING:
    from collector.quarantine import QuarantineLimits

__all__ = ["DroppedCount", "Gap", "IngestResult", "Origin", "Payload", "QuarantineEntry", "Store",
           "StoreError", "StoreLost", "StoreStats", "StoreUrl", "StreamInfo", "migrate_store",
           "open_store", "parse_store_url"]


def open_store(url: str, *, create: bool = True,
               quarantine: QuarantineLimits | None = None,
               retention_days: int | None = None) -> Store:
    """Open (and with `create`, initialise) the store at `url`; raises StoreError.

    `quarantine`: the bounds on quarantined entries (defaults: `QuarantineLimits()`).
    PostgreSQL: the schema comes from `migrate_store`, never from here (an older one is
    refused); with `create` (a running collector) the store also keeps its partitions,
    dropping those older than `retention_days` (None: keep everything).
    """
    try:
        parsed = parse_store_url(url)
    except ValueError as exc:
        raise StoreError(f"store URL {url!r}: {exc}") from None
    if parsed.kind == "postgresql":
        from collector.store.postgres import PostgresStore

        assert parsed.dsn is not None
        pg = PostgresStore(parsed.dsn, create=create, quarantine=quarantine,
                           retention_days=retention_days)
        pg.open()
        return pg
    from collector.store.sqlite import SqliteStore

    assert parsed.path is not None
    store = SqliteStore(parsed.path, create=create, quarantine=quarantine)
    store.open()
    return store


def migrate_store(url: str) -> list[str]:
    """Bring the store's schema up to date; returns what was applied (idempotent)."""
    try:
        parsed = parse_store_url(url)
    except ValueError as exc:
        raise StoreError(f"store URL {url!r}: {exc}") from None
    if parsed.kind == "sqlite":
        open_store(url).close()  # SQLite creates its schema on open
        return []
    from collector.store.pg_migrate import migrate_url

    assert parsed.dsn is not None
    return migrate_url(parsed.dsn)
