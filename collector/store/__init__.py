"""District store backends, chosen by URL (`sqlite:///…` now, `postgresql://…` later).

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
    QuarantineEntry,
    Store,
    StoreError,
    StoreStats,
    StreamInfo,
)
from collector.store.url import StoreUrl, parse_store_url

if TYPE_CHECKING:
    from collector.quarantine import QuarantineLimits

__all__ = ["DroppedCount", "Gap", "IngestResult", "Origin", "QuarantineEntry", "Store",
           "StoreError", "StoreStats", "StoreUrl", "StreamInfo", "open_store", "parse_store_url"]


def open_store(url: str, *, create: bool = True,
               quarantine: QuarantineLimits | None = None) -> Store:
    """Open (and with `create`, initialise) the store at `url`; raises StoreError.

    `quarantine`: the bounds on quarantined entries (defaults: `QuarantineLimits()`).
    """
    try:
        parsed = parse_store_url(url)
    except ValueError as exc:
        raise StoreError(f"store URL {url!r}: {exc}") from None
    if parsed.kind == "postgresql":
        raise StoreError("PostgreSQL backend not installed yet; use a sqlite:/// store URL")
    from collector.store.sqlite import SqliteStore

    assert parsed.path is not None
    store = SqliteStore(parsed.path, create=create, quarantine=quarantine)
    store.open()
    return store
