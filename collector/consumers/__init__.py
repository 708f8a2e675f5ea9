"""Consumers of the stream API: who may read what, their tokens, and the audit of reads.

A consumer (e.g. `消防-河东`) has a `Scope`: areas (district/street/community codes) ×
event-type patterns. Its bearer tokens are random, stored as SHA-256 only, may expire
and be revoked (`tokens.py`). Every read is audited: a log line and a table row
(`audit.py`). Tables in both stores: `collector/store/schema.py` (SQLite) and
`collector/store/migrations/pg/0004_consumers.sql`. The CLI is `edge-collector consumers`
(`cli.py`); docs/consumers.md explains the whole.

The stream API uses only this module's names: `open_consumers(url)`, then
`authenticate(token)` per request and `audit(...)` per read.
"""

from __future__ import annotations

from collector.consumers.db import open_db
from collector.consumers.errors import ConsumerError, StoreUnavailable
from collector.consumers.scope import Scope, parse_scope
from collector.consumers.service import (
    CACHE_S,
    AuditRow,
    Consumer,
    ConsumerInfo,
    Consumers,
    NewToken,
    TokenInfo,
)

__all__ = ["CACHE_S", "AuditRow", "Consumer", "ConsumerError", "ConsumerInfo", "Consumers",
           "NewToken", "Scope", "StoreUnavailable", "TokenInfo", "open_consumers",
           "parse_scope"]


def open_consumers(store_url: str, *, audit_retention_days: int | None = 90,
                   cache_s: float = CACHE_S) -> Consumers:
    """The consumers of the store at `store_url` (sqlite:///… or postgresql://…).

    Raises ConsumerError (a message with a hint) when the store cannot be used. Close it
    (or use it as a context manager): that writes the audit rows still queued.
    """
    return Consumers(open_db(store_url), audit_retention_days=audit_retention_days,
                     cache_s=cache_s)
