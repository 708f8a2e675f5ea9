"""The district store schema, described once for every backend.

`events` is a public contract (the district platform reads it); the other
tables are the collector's own. SQLite turns this description into DDL through
sqlite-utils; PostgreSQL has the same tables and columns written out in its numbered
migrations (`migrations/pg/`, `timestamptz`/`bigint`/`bytea`/`jsonb`), which a schema
change must extend with a new file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from collector.model import EVENT_COLUMNS

ColumnType = Literal["text", "integer", "blob", "json"]
SCHEMA_VERSION = 1
#: Quarantined payloads keep at most this many raw bytes (`raw_size` keeps the real size).
RAW_CAP = 64 * 1024


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    not_null: bool = True


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    pk: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()
    unique: tuple[tuple[str, ...], ...] = ()

    def index_name(self, cols: tuple[str, ...]) -> str:
        return f"idx_{self.name}_{'_'.join(cols)}"


def _t(name: str) -> Column:
    return Column(name, "text")


_EVENT_TYPES: dict[str, ColumnType] = {"seq": "integer", "data": "json"}

EVENTS = Table(
    "events",
    tuple(Column(c, _EVENT_TYPES.get(c, "text")) for c in EVENT_COLUMNS),
    pk=("id",),
    indexes=(("gateway", "epoch", "seq"), ("type", "time"), ("received_at",)),
)

#: One row per (gateway, epoch): the watermark. Missing seqs are the holes in 1..high_seq.
STREAMS = Table(
    "streams",
    (_t("gateway"), _t("epoch"), _t("first_seen"), _t("last_seen"),
     Column("high_seq", "integer"), Column("received", "integer"),
     Column("contiguous_through", "integer")),
    pk=("gateway", "epoch"),
)

#: Seq ranges the edge outbox evicted on purpose, from `gateway.data_loss` events.
EXPLAINED_GAPS = Table(
    "explained_gaps",
    (_t("gateway"), _t("epoch"), Column("from_seq", "integer"), Column("to_seq", "integer"),
     _t("reason"), _t("event_id")),
    pk=("event_id", "from_seq"),
    indexes=(("gateway", "epoch"),),
)

QUARANTINE = Table(
    "quarantine",
    (Column("id", "integer"), _t("received_at"), _t("topic"),
     Column("gateway_from_topic", "text", not_null=False), _t("reason"),
     Column("raw", "blob"), Column("raw_size", "integer"),
     Column("event_id", "text", not_null=False)),
    pk=("id",),
    # (gateway, raw_size) covers the per-gateway usage sums of the quarantine caps.
    indexes=(("received_at",), ("gateway_from_topic", "raw_size")),
)

#: What the quarantine did not keep (rate, caps) or let go (expired), per gateway and cause;
#: `gateway` is "" for payloads on a topic that names none.
QUARANTINE_DROPPED = Table(
    "quarantine_dropped",
    (_t("gateway"), _t("cause"), Column("rows", "integer"), Column("bytes", "integer"),
     _t("first_at"), _t("last_at")),
    pk=("gateway", "cause"),
)

#: Who may read the store through the stream API (`collector.consumers`): a name and a
#: scope (areas and type patterns, space-separated; areas "" = all).
CONSUMERS = Table("consumers", (_t("name"), _t("areas"), _t("types"), _t("created_at")),
                  pk=("name",))

#: A consumer's bearer tokens, stored as SHA-256 only (`hash`, unique: the lookup).
CONSUMER_TOKENS = Table(
    "consumer_tokens",
    (_t("id"), _t("consumer"), _t("hash"), _t("hint"), _t("created_at"),
     Column("expires_at", "text", not_null=False), Column("revoked_at", "text", not_null=False),
     Column("last_used_at", "text", not_null=False)),
    pk=("id",),
    indexes=(("consumer",),),
    unique=(("hash",),),
)

#: One row per read through the stream API; bounded by `audit_retention_days`.
CONSUMER_AUDIT = Table(
    "consumer_audit",
    (Column("id", "integer"), _t("at"), _t("consumer"), _t("route"), _t("scope"),
     Column("events", "integer")),
    pk=("id",),
    indexes=(("at",), ("consumer", "at")),
)

CONSUMER_TABLES: tuple[Table, ...] = (CONSUMERS, CONSUMER_TOKENS, CONSUMER_AUDIT)

#: Push subscriptions (`collector.webhooks`): the signing secret is kept in the clear (it
#: signs every batch; docs/webhooks.md says why), the cursor is a stream Position
#: (`cursor_b`: the 128-bit part as decimal text), and the delivery counters.
WEBHOOKS = Table(
    "webhooks",
    (_t("name"), _t("consumer"), _t("url"), _t("secret"), Column("cursor_a", "integer"),
     _t("cursor_b"), _t("created_at"), Column("delivered", "integer"),
     Column("attempts", "integer"), Column("failures", "integer"),
     Column("dead_lettered", "integer"), Column("last_error", "text", not_null=False),
     Column("last_success_at", "text", not_null=False)),
    pk=("name",),
)

#: Batches a receiver refused (4xx past the retries): kept whole for `webhooks replay`.
WEBHOOK_DEAD_LETTERS = Table(
    "webhook_dead_letters",
    (Column("id", "integer"), _t("webhook"), _t("batch_id"), Column("body", "blob"),
     Column("events", "integer"), Column("status", "integer"), _t("error"), _t("at"),
     Column("replayed_at", "text", not_null=False)),
    pk=("id",),
    indexes=(("webhook", "replayed_at"),),
)

WEBHOOK_TABLES: tuple[Table, ...] = (WEBHOOKS, WEBHOOK_DEAD_LETTERS)

TABLES: tuple[Table, ...] = (EVENTS, STREAMS, EXPLAINED_GAPS, QUARANTINE, QUARANTINE_DROPPED,
                             *CONSUMER_TABLES, *WEBHOOK_TABLES)
