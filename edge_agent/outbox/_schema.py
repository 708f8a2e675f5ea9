"""What an outbox file holds.

The tables and meta keys of the on-disk format, the row an event is stored as (invariants
7 and 8: its size and its stamped body), and `Figures`, the counters that meta and the
rows add up to. The public constants are re-exported by `edge_agent.outbox.store`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.contract.envelope import Event, Hierarchy, Retention, format_time, new_event
from edge_agent.outbox._body import encodable_body, stamped_body
from edge_agent.outbox._loss import Loss

#: On-disk format; a file with another value is treated as not ours (quarantined).
FORMAT_VERSION = 1
#: `PRAGMA application_id` of outbox files ("EDOB"), for `file(1)` and forensics.
APPLICATION_ID = 0x45444F42
#: Bytes counted per row on top of its body: the other columns, the record and cell
#: headers, the two index entries and page slack, so that `max_bytes` is close to what
#: the rows take on disk (measured here: ~395-byte bodies take ~526 bytes of file per row).
ROW_OVERHEAD = 128
LANE_NORMAL = 0
LANE_ALARM = 1

COLUMNS = {"seq": int, "id": str, "type": str, "retention": int, "lane": int,
           "created": float, "size": int, "body": str}
#: The columns of an `OutboxRow`, in its field order.
ROW_COLS = "seq, id, type, lane, created, body"
INSERT = ("INSERT INTO events (seq, id, type, retention, lane, created, size, body)"
          " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")

_ALARM = int(Retention.ALARM)

#: A stored row, in `INSERT` order: (seq, id, type, retention, lane, created, size, body).
Row = tuple[int, str, str, int, int, float, int, str]


@dataclass(frozen=True, slots=True)
class Figures:
    """What the file says once a transaction is committed: meta's `epoch`, `next_seq`,
    `evicted_total` and `loss_report` (None: nothing pending), and the rows' count and
    `SUM(size)`."""

    epoch: str
    next_seq: int
    evicted_total: int
    events: int
    bytes: int
    loss: Loss | None = None


#: The tables and indexes of a new file (the statements earlier versions had sqlite-utils
#: generate, to the character: files made by either look the same).
DDL = (
    'CREATE TABLE "events" (\n   "seq" INTEGER PRIMARY KEY,\n   "id" TEXT NOT NULL,\n'
    '   "type" TEXT NOT NULL,\n   "retention" INTEGER NOT NULL,\n   "lane" INTEGER NOT NULL,\n'
    '   "created" REAL NOT NULL,\n   "size" INTEGER NOT NULL,\n   "body" TEXT NOT NULL\n)',
    'CREATE INDEX "events_lane_seq"\n    ON "events" ("lane", "seq")',
    # Eviction looks for the oldest row of a retention class.
    'CREATE INDEX "events_retention_seq"\n    ON "events" ("retention", "seq")',
    'CREATE TABLE "meta" (\n   "key" TEXT PRIMARY KEY,\n   "value" TEXT NOT NULL\n)',
)


def create_schema(conn: sqlite3.Connection, epoch: str, now: float) -> None:
    """Tables, indexes and meta of a new outbox file (call inside a transaction)."""
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    for statement in DDL:
        conn.execute(statement)
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
        ("format", str(FORMAT_VERSION)),
        ("epoch", epoch),
        ("next_seq", "1"),
        ("evicted_total", "0"),
        ("created_at", format_time(now)),
    ])


def stored_rows(events: Sequence[Event], epoch: str, first_seq: int, now: float) -> list[Row]:
    """`events` stamped with `epoch` and seqs from `first_seq` on, as rows (no I/O)."""
    seq = first_seq
    rows: list[Row] = []
    for event in events:
        body, raw = encodable_body(stamped_body(event, epoch, seq), event, epoch, seq)
        retention = int(event.retention)
        rows.append((seq, event.id, event.type, retention,
                     LANE_ALARM if retention == _ALARM else LANE_NORMAL,
                     now, len(raw) + ROW_OVERHEAD, body))
        seq += 1
    return rows


def data_loss_row(hierarchy: Hierarchy, loss: Loss, epoch: str, seq: int, now: float) -> Row:
    """The row of the gateway.data_loss event that reports `loss` at `seq` (an alarm, as
    the catalog says: never evicted)."""
    event = new_event(hierarchy, hierarchy.gateway, "gateway.data_loss", loss.data(),
                      observed_at=now)
    return stored_rows([event], epoch, seq, now)[0]
