"""SQLite store: WAL, synchronous=FULL (an ack promises durability), one transaction per group.

Schema creation goes through sqlite-utils from `schema.py`; the hot path is plain sqlite3.
Several collector processes may share one file: `BEGIN IMMEDIATE` takes the write lock
up front and waits up to `busy_timeout_s` for it.

The payloads waiting are one transaction (group commit, `_group`: one fsync for all). If
an event makes it fail (a value SQLite cannot bind: validation should have caught it),
the transaction is rolled back and run again with one SAVEPOINT per payload, then per
event of a payload refused again: the refused event is quarantined, the others stored. An id
already stored with other content is a conflict: quarantined with both content hashes.
Quarantine entries are bounded (`collector.quarantine`): rate and caps per gateway, a
total cap, retention; what is not kept is counted in `quarantine_dropped`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from collector.model import EVENT_COLUMNS, EventRow, Rejected
from collector.quarantine import DropCause, QuarantineLimits, RateGate, condense, stored_size
from collector.store._group import EXPIRE_EVERY_S as EXPIRE_EVERY_S
from collector.store._group import GroupCommit
from collector.store._rows import conflict_entry, content_hash
from collector.store.base import (
    DroppedCount,
    Gap,
    IngestResult,
    Origin,
    Payload,
    QuarantineEntry,
    StoreError,
    StoreLost,
    StoreStats,
    StreamInfo,
)
from collector.store.intervals import split_missing
from collector.store.schema import RAW_CAP, SCHEMA_VERSION, TABLES, Column, Table
from collector.text import storable
from edge_agent.contract.backoff import Backoff
from edge_agent.contract.envelope import format_time
from edge_agent.contract.logs import get_logger

log = get_logger("collector.store")


def _import_sqlite_utils() -> ModuleType:
    """sqlite-utils without numpy: installed (the camera driver's dependency), numpy is
    picked up by sqlite-utils for column adapters this store never uses, ~11 MiB of
    resident memory. Hidden for that one import, then unhidden."""
    hidden = "numpy" not in sys.modules
    if hidden:
        sys.modules["numpy"] = None  # type: ignore[assignment]  # makes `import numpy` fail
    try:
        import sqlite_utils
    finally:
        if hidden and sys.modules.get("numpy", ...) is None:
            del sys.modules["numpy"]
    return sqlite_utils


sqlite_utils = _import_sqlite_utils()

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
_CONTENT_COLUMNS = tuple(c for c in EVENT_COLUMNS if c != "received_at")
_STORED_CONTENT = f"SELECT {', '.join(_CONTENT_COLUMNS)} FROM events WHERE id = ?"
_USAGE = "SELECT COUNT(*), COALESCE(SUM(MIN(raw_size, ?)), 0) FROM quarantine"
_COUNT_DROPPED = """
INSERT INTO quarantine_dropped (gateway, cause, rows, bytes, first_at, last_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (gateway, cause) DO UPDATE SET rows = rows + excluded.rows,
  bytes = bytes + excluded.bytes, last_at = excluded.last_at
"""
_IN_CHUNK = 500
#: Retrying an open that found the file locked (another collector creating it).
OPEN_RETRY_INITIAL_S, OPEN_RETRY_MAX_S = 0.02, 0.5
LOCKED_HINT = ("; another process holds the file locked (a collector, or a long sqlite3 "
               "session): stop it, or raise busy_timeout")
#: Errors an event's values cause while binding or inserting: that event is refused, the
#: rest stored. Everything else (disk full, lock timeout, I/O) fails the payload unacked.
_EVENT_FAULTS = (ValueError, OverflowError, sqlite3.IntegrityError, sqlite3.InterfaceError,
                 sqlite3.DataError)
#: Longest text kept from untrusted input in a quarantine row.
_REASON_MAX, _TOPIC_MAX, _ID_MAX = 2000, 300, 64

StreamKey = tuple[str, str]


class SqliteStore(GroupCommit[sqlite3.Cursor]):
    _event_faults = _EVENT_FAULTS

    def __init__(self, path: Path, *, create: bool = True, busy_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.time,
                 quarantine: QuarantineLimits | None = None) -> None:
        self.path = path
        self._create = create
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self.limits = quarantine or QuarantineLimits()
        self._rate = RateGate(self.limits.rows_per_minute_per_gateway)
        self._expired_at = float("-inf")
        self._conn: sqlite3.Connection | None = None
        #: (st_dev, st_ino) of the file opened: a commit checks the path still names it
        self._identity: tuple[int, int] | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open (and create) the file; a lock held by another collector is waited out.

        Several collectors started at once on a new file race for the switch to WAL and
        the schema: SQLite answers `database is locked` to those (its busy handler does
        not cover a journal-mode change), so the whole open is retried with back-off for
        up to `busy_timeout_s`. Every step is idempotent.
        """
        if not self._create and not self.path.exists():
            raise StoreError(f"no store at {self.path}")
        deadline = time.monotonic() + self._busy_timeout_s
        backoff = Backoff(OPEN_RETRY_INITIAL_S, OPEN_RETRY_MAX_S)
        while True:
            try:
                self._conn = self._open_once()
                self._identity = _file_identity(self.path)
                break
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or time.monotonic() >= deadline:
                    raise StoreError(f"cannot open store {self.path}: {exc}"
                                     + (LOCKED_HINT if _is_locked(exc) else "")) from exc
                time.sleep(min(backoff.next_s(), max(0.0, deadline - time.monotonic())))
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        if self._create:
            self.expire_quarantine()

    def _open_once(self) -> sqlite3.Connection:
        if self._create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), isolation_level=None,
                               check_same_thread=False, timeout=self._busy_timeout_s)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            if self._create:
                _create_schema(conn)
            elif not _has_schema(conn):
                raise StoreError(f"{self.path} is not a collector store (no events table)")
        except BaseException:
            conn.close()
            raise
        return conn
        if self._create:
            self.expire_quarantine()

    def describe(self) -> str:
        return f"sqlite:{self.path}"

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

    def ingest_many(self, items: Sequence[Payload]) -> list[IngestResult]:
        if not items:
            return []
        results = self._commit_group(items, self._clock())
        self._check_same_file()  # after the COMMIT, before anything of it is acked
        return results

    def _check_same_file(self) -> None:
        """Raise StoreLost if `path` no longer names the file this connection writes to.

        A deleted (or replaced) SQLite file stays writable through the open connection:
        commits succeed into a file nobody will read again, and acking them would lose
        them for good (the edge deletes what is acked). One stat per group.
        """
        try:
            now = _file_identity(self.path)
        except FileNotFoundError:
            now = None
        except OSError as exc:
            raise StoreLost(f"store {self.path}: cannot check the file ({exc}); "
                            "nothing committed since is acked") from exc
        if now != self._identity:
            what = "was deleted" if now is None else "was replaced by another file"
            raise StoreLost(
                f"store {self.path} {what} while the collector had it open: the last "
                "group went into the old file and is not acked (its gateways resend it). "
                "Restore the file (a backup) or let the collector start a new one: it "
                "stops now and opens the path anew on its restart (systemd restarts it)")

    def _tx(self) -> _transaction:
        return _transaction(self.conn)

    @contextlib.contextmanager
    def _savepoint(self, cur: sqlite3.Cursor) -> Iterator[None]:
        cur.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            cur.execute("ROLLBACK TO part")
            raise
        finally:
            cur.execute("RELEASE part")

    def _insert_events(self, cur: sqlite3.Cursor, rows: Sequence[EventRow],
                       now: str) -> tuple[list[EventRow], list[Rejected]]:
        """Insert `rows`; returns those inserted and the conflicts (id stored, other content)."""
        if not rows:
            return [], []
        groups: dict[StreamKey, list[EventRow]] = defaultdict(list)
        for row in rows:
            groups[(row.gateway, row.epoch)].append(row)
        before = {key: _existing_seqs(cur, key, {r.seq for r in group})
                  for key, group in groups.items()}
        inserted: list[EventRow] = []
        conflicts: list[Rejected] = []
        for row in rows:
            cur.execute(_INSERT_EVENT, row.values(now))
            if cur.rowcount == 1:
                inserted.append(row)
                continue
            stored = cur.execute(_STORED_CONTENT, (row.id,)).fetchone()
            received = tuple(v for c, v in zip(EVENT_COLUMNS, row.values(now), strict=True)
                             if c != "received_at")
            if stored is not None and tuple(stored) != received:
                conflicts.append(conflict_entry(row, content_hash(stored), content_hash(received)))
        new_by_stream: dict[StreamKey, set[int]] = defaultdict(set)
        for row in inserted:
            new_by_stream[(row.gateway, row.epoch)].add(row.seq)
            if row.type == "gateway.data_loss":
                _record_explained(cur, row)
        for key, seqs in new_by_stream.items():
            _advance_stream(cur, key, seqs - before[key], now)
        return inserted, conflicts

    def _insert_quarantine(self, cur: sqlite3.Cursor, origin: Origin,
                           rejected: Sequence[Rejected], now: float) -> tuple[int, int]:
        """Write what the bounds allow; returns (entries written, rejections dropped)."""
        if not rejected:
            return 0, 0
        stamp = format_time(now)
        gateway = origin.gateway or ""
        entries = condense(rejected)
        allowed = self._rate.take(gateway, len(entries), now)
        drops: dict[DropCause, list[int]] = defaultdict(lambda: [0, 0])
        for entry in entries[allowed:]:
            drops["rate"][0] += 1
            drops["rate"][1] += len(entry.raw)
        lim = self.limits
        gw_rows, gw_bytes = cur.execute(_USAGE + " WHERE gateway_from_topic IS ?",
                                        (RAW_CAP, origin.gateway)).fetchone()
        all_rows, all_bytes = cur.execute(_USAGE, (RAW_CAP,)).fetchone()
        keep: list[Rejected] = []
        for entry in entries[:allowed]:
            size = stored_size(entry)
            cause: DropCause | None = None
            if gw_rows >= lim.max_rows_per_gateway or gw_bytes + size > lim.max_bytes_per_gateway:
                cause = "gateway_cap"
            elif all_rows >= lim.max_rows or all_bytes + size > lim.max_bytes:
                cause = "total_cap"
            if cause is not None:
                drops[cause][0] += 1
                drops[cause][1] += len(entry.raw)
                continue
            keep.append(entry)
            gw_rows, gw_bytes = gw_rows + 1, gw_bytes + size
            all_rows, all_bytes = all_rows + 1, all_bytes + size
        topic = storable(origin.topic, _TOPIC_MAX)
        cur.executemany(_INSERT_QUARANTINE, [
            (stamp, topic, origin.gateway, storable(r.reason, _REASON_MAX), r.raw[:RAW_CAP],
             len(r.raw), storable(r.event_id, _ID_MAX) if r.event_id is not None else None)
            for r in keep
        ])
        for cause, (rows, size) in drops.items():
            cur.execute(_COUNT_DROPPED, (gateway, cause, rows, size, stamp, stamp))
        return len(keep), sum(rows for rows, _ in drops.values())

    def expire_quarantine(self) -> int:
        now = self._clock()
        with _transaction(self.conn) as cur:
            return self._expire(cur, now)

    def _expire(self, cur: sqlite3.Cursor, now: float) -> int:
        self._expired_at = now
        cutoff = format_time(now - self.limits.retention_days * 86400)
        stamp = format_time(now)
        by_gateway = cur.execute(
            "SELECT COALESCE(gateway_from_topic, ''), COUNT(*), SUM(raw_size) FROM quarantine "
            "WHERE received_at < ? GROUP BY 1", (cutoff,)).fetchall()
        if not by_gateway:
            return 0
        cur.execute("DELETE FROM quarantine WHERE received_at < ?", (cutoff,))
        for gateway, rows, size in by_gateway:
            cur.execute(_COUNT_DROPPED, (gateway, "expired", rows, size, stamp, stamp))
        return sum(rows for _, rows, _ in by_gateway)

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
        quarantined, quarantine_bytes = c.execute(
            "SELECT COUNT(*), COALESCE(SUM(raw_size), 0) FROM quarantine").fetchone()
        dropped = [DroppedCount(*row) for row in c.execute(
            "SELECT gateway, cause, rows, bytes, last_at FROM quarantine_dropped "
            "ORDER BY gateway, cause")] if _has_table(c, "quarantine_dropped") else []
        return StoreStats(
            events=c.execute("SELECT COUNT(*) FROM events").fetchone()[0],
            quarantined=quarantined,
            gateways=len({s.gateway for s in streams}),
            last_received_at=c.execute("SELECT MAX(received_at) FROM events").fetchone()[0],
            streams=streams,
            quarantine_bytes=quarantine_bytes,
            dropped=dropped,
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
    create_tables(conn, TABLES)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def create_tables(conn: sqlite3.Connection, tables: Sequence[Table]) -> None:
    """Create `tables` and their indexes where missing (idempotent): also how a store file
    made by an older collector gets tables added since (the consumers')."""
    db = sqlite_utils.Database(conn)
    for table in tables:
        db.table(table.name).create(
            {c.name: _PY_TYPES[c.type] for c in table.columns},
            pk=table.pk[0] if len(table.pk) == 1 else table.pk,
            not_null={c.name for c in table.columns if _not_null(c, table.pk)},
            if_not_exists=True,
        )
        for cols in table.indexes:
            db.table(table.name).create_index(list(cols), index_name=table.index_name(cols),
                                              if_not_exists=True)
        for cols in table.unique:
            db.table(table.name).create_index(list(cols), index_name=table.index_name(cols),
                                              unique=True, if_not_exists=True)


def _not_null(column: Column, pk: tuple[str, ...]) -> bool:
    # A single INTEGER primary key is SQLite's rowid: assigned on insert, never NULL.
    return column.not_null and not (pk == (column.name,) and column.type == "integer")


def _file_identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "database is locked" in text or "database is busy" in text


def _has_schema(conn: sqlite3.Connection) -> bool:
    return _has_table(conn, "events")


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
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
