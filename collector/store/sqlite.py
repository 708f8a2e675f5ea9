"""SQLite store: WAL, synchronous=FULL (an ack promises durability), one transaction per payload.

Schema creation goes through sqlite-utils from `schema.py`; the hot path is plain sqlite3.
Several collector processes may share one file: `BEGIN IMMEDIATE` takes the write lock
up front and waits up to `busy_timeout_s` for it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from collector.model import EVENT_COLUMNS, EventRow, Rejected
from collector.store.base import (
    Gap,
    IngestResult,
    Origin,
    QuarantineEntry,
    StoreError,
    StoreStats,
    StreamInfo,
)
from collector.store.intervals import split_missing
from collector.store.schema import RAW_CAP, SCHEMA_VERSION, TABLES, Column
from edge_agent.envelope import format_time

_PY_TYPES: dict[str, type] = {"text": str, "integer": int, "blob": bytes, "json": str}
_INSERT_EVENT = (f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})")
_UPSERT_STREAM = """
INSERT INTO streams (gateway, epoch, first_seen, last_seen, high_seq, received, contiguous_through)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (gateway, epoch) DO UPDATE SET last_seen = excluded.last_seen,
  high_seq = excluded.high_seq, received = excluded.received,
  contiguous_through = excluded.contiguous_through
"""
_INSERT_QUARANTINE = """
INSERT INTO quarantine (received_at, topic, gateway_from_topic, reason, raw, raw_size, event_id)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_MISSING = """
SELECT prev + 1, seq - 1 FROM (
  SELECT seq, LAG(seq, 1, ?) OVER (ORDER BY seq) AS prev
  FROM (SELECT DISTINCT seq FROM events WHERE gateway = ? AND epoch = ? AND seq > ?)
) WHERE seq > prev + 1
"""
_EXPLAINED = "SELECT from_seq, to_seq, reason FROM explained_gaps WHERE gateway = ? AND epoch = ?"
_IN_CHUNK = 500

StreamKey = tuple[str, str]


class SqliteStore:
    def __init__(self, path: Path, *, create: bool = True, busy_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._create = create
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        if not self._create and not self.path.exists():
            raise StoreError(f"no store at {self.path}")
        try:
            if self._create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), isolation_level=None,
                                   check_same_thread=False, timeout=self._busy_timeout_s)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            if self._create:
                _create_schema(conn)
            elif not _has_schema(conn):
                conn.close()
                raise StoreError(f"{self.path} is not a collector store (no events table)")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is not open")
        return self._conn

    # ------------------------------------------------------------------ writes

    def ingest(self, origin: Origin, accepted: Sequence[EventRow],
               rejected: Sequence[Rejected]) -> IngestResult:
        now = format_time(self._clock())
        with _transaction(self.conn) as cur:
            inserted = self._insert_events(cur, accepted, now)
            self._insert_quarantine(cur, origin, rejected, now)
        return IngestResult(len(inserted), len(accepted) - len(inserted), len(rejected))

    def quarantine(self, origin: Origin, rejected: Sequence[Rejected]) -> int:
        return self.ingest(origin, (), rejected).quarantined

    def _insert_events(self, cur: sqlite3.Cursor, rows: Sequence[EventRow],
                       now: str) -> list[EventRow]:
        if not rows:
            return []
        groups: dict[StreamKey, list[EventRow]] = defaultdict(list)
        for row in rows:
            groups[(row.gateway, row.epoch)].append(row)
        before = {key: _existing_seqs(cur, key, {r.seq for r in group})
                  for key, group in groups.items()}
        inserted: list[EventRow] = []
        for row in rows:
            cur.execute(_INSERT_EVENT, row.values(now))
            if cur.rowcount == 1:
                inserted.append(row)
        new_by_stream: dict[StreamKey, set[int]] = defaultdict(set)
        for row in inserted:
            new_by_stream[(row.gateway, row.epoch)].add(row.seq)
            if row.type == "gateway.data_loss":
                _record_explained(cur, row)
        for key, seqs in new_by_stream.items():
            _advance_stream(cur, key, seqs - before[key], now)
        return inserted

    def _insert_quarantine(self, cur: sqlite3.Cursor, origin: Origin,
                           rejected: Iterable[Rejected], now: str) -> None:
        cur.executemany(_INSERT_QUARANTINE, [
            (now, origin.topic, origin.gateway, r.reason, r.raw[:RAW_CAP], len(r.raw), r.event_id)
            for r in rejected
        ])

    # ------------------------------------------------------------------ reads

    def gaps(self, gateway: str | None = None) -> list[Gap]:
        sql = ("SELECT gateway, epoch, contiguous_through FROM streams "
               "WHERE contiguous_through < high_seq")
        args: tuple[Any, ...] = ()
        if gateway is not None:
            sql, args = sql + " AND gateway = ?", (gateway,)
        out: list[Gap] = []
        for gw, epoch, contiguous in self.conn.execute(sql + " ORDER BY gateway, epoch", args):
            missing = self.conn.execute(_MISSING, (contiguous, gw, epoch, contiguous)).fetchall()
            explained = self.conn.execute(_EXPLAINED, (gw, epoch)).fetchall()
            out.extend(Gap(gw, epoch, lo, hi, ok, reason)
                       for lo, hi, ok, reason in split_missing(missing, explained))
        return out

    def quarantined(self, limit: int = 50) -> list[QuarantineEntry]:
        rows = self.conn.execute(
            "SELECT id, received_at, topic, gateway_from_topic, reason, raw, raw_size, event_id "
            "FROM quarantine ORDER BY id DESC LIMIT ?", (limit,))
        return [QuarantineEntry(*row) for row in rows]

    def stats(self) -> StoreStats:
        c = self.conn
        streams = [StreamInfo(*row) for row in c.execute(
            "SELECT gateway, epoch, first_seen, last_seen, high_seq, received, contiguous_through "
            "FROM streams ORDER BY gateway, first_seen")]
        return StoreStats(
            events=c.execute("SELECT COUNT(*) FROM events").fetchone()[0],
            quarantined=c.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0],
            gateways=len({s.gateway for s in streams}),
            last_received_at=c.execute("SELECT MAX(received_at) FROM events").fetchone()[0],
            streams=streams,
        )


# ---------------------------------------------------------------------- helpers


class _transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error (including cancellation)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Cursor:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn.cursor()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _create_schema(conn: sqlite3.Connection) -> None:
    db = sqlite_utils.Database(conn)
    for table in TABLES:
        db.table(table.name).create(
            {c.name: _PY_TYPES[c.type] for c in table.columns},
            pk=table.pk[0] if len(table.pk) == 1 else table.pk,
            not_null={c.name for c in table.columns if _not_null(c, table.pk)},
            if_not_exists=True,
        )
        for cols in table.indexes:
            db.table(table.name).create_index(list(cols), index_name=table.index_name(cols),
                                              if_not_exists=True)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _not_null(column: Column, pk: tuple[str, ...]) -> bool:
    # A single INTEGER primary key is SQLite's rowid: assigned on insert, never NULL.
    return column.not_null and not (pk == (column.name,) and column.type == "integer")


def _has_schema(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'")
    return row.fetchone() is not None


def _existing_seqs(cur: sqlite3.Cursor, key: StreamKey, seqs: set[int]) -> set[int]:
    found: set[int] = set()
    ordered = sorted(seqs)
    for i in range(0, len(ordered), _IN_CHUNK):
        chunk = ordered[i:i + _IN_CHUNK]
        cur.execute(f"SELECT seq FROM events WHERE gateway = ? AND epoch = ? "
                    f"AND seq IN ({', '.join('?' * len(chunk))})", (*key, *chunk))
        found.update(s for (s,) in cur.fetchall())
    return found


def _advance_stream(cur: sqlite3.Cursor, key: StreamKey, new_seqs: set[int], now: str) -> None:
    """Fold newly seen seqs into the stream's watermark row."""
    if not new_seqs:
        return  # a new id reusing a seq already stored: the watermark does not move
    row = cur.execute("SELECT first_seen, high_seq, received, contiguous_through FROM streams "
                      "WHERE gateway = ? AND epoch = ?", key).fetchone()
    first_seen, high, received, contiguous = row if row else (now, 0, 0, 0)
    high = max(high, max(new_seqs))
    received += len(new_seqs)
    contiguous = high if received == high else _contiguous_from(cur, key, contiguous)
    cur.execute(_UPSERT_STREAM, (*key, first_seen, now, high, received, contiguous))


def _contiguous_from(cur: sqlite3.Cursor, key: StreamKey, through: int, page: int = 1000) -> int:
    """Walk the (gateway, epoch, seq) index forward from `through` while seqs follow on."""
    while True:
        seqs = cur.execute("SELECT seq FROM events WHERE gateway = ? AND epoch = ? AND seq > ? "
                           "ORDER BY seq LIMIT ?", (*key, through, page)).fetchall()
        for (seq,) in seqs:
            if seq == through + 1:
                through = seq
            elif seq > through + 1:
                return through
        if len(seqs) < page:
            return through


def _record_explained(cur: sqlite3.Cursor, row: EventRow) -> None:
    data = json.loads(row.data)
    reason = data.get("reason")
    cur.executemany(
        "INSERT OR IGNORE INTO explained_gaps (gateway, epoch, from_seq, to_seq, reason, event_id) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(row.gateway, row.epoch, lo, hi, reason, row.id)
         for lo, hi in data.get("seq_ranges") or [] if lo <= hi],
    )
