"""Pages of events after a position, in the store's commit order; never a skipped row.

`read(after, filter, limit)` returns at most `limit` events after `after` and the
position to continue from. When the page is not full, that position is the end of what
the read could see (SQLite: the largest rowid; PostgreSQL: just below the horizon), so a
selective filter does not rescan the same rows on the next call.

PostgreSQL: one REPEATABLE READ transaction takes the horizon
`pg_snapshot_xmin(pg_current_snapshot())` (every transaction below it has ended, and its
rows are in this snapshot) and then reads `(tx, id) > after AND tx < horizon` from
`event_rows` joined to `places` (not the `events` view: its `ulid_text` is slow in bulk;
`pg_keys.uuid_ulid` turns the uuid back into the ULID here).

Synchronous (sqlite3, psycopg): the API calls it in a worker thread.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from collector.model import EventRow
from collector.store.pg_keys import epoch_text, uuid_ulid
from collector.store.url import parse_store_url
from collector.stream.filter import POSTGRES, SQLITE, Filter, where
from collector.stream.position import Position, StoreKind
from edge_agent.contract.envelope import format_time

MAX_PAGE = 1000
_U128_MAX = (1 << 128) - 1
#: Windows of transaction ids one PostgreSQL read may look at before it answers.
_MAX_WINDOWS = 48


class ReaderError(RuntimeError):
    """The store cannot be read (gone, not a collector store); meant for the operator."""


@dataclass(frozen=True, slots=True)
class Page:
    """`events`: (position, CloudEvent JSON) in order; `next`: where to continue;
    `more`: events after `next` were already visible (read again at once)."""

    events: list[tuple[Position, bytes]]
    next: Position
    more: bool


class Reader(Protocol):
    kind: StoreKind

    def read(self, after: Position, flt: Filter, limit: int = MAX_PAGE) -> Page: ...

    def end(self) -> Position:
        """The furthest position a read could return now: no cursor this server issued
        for this store is beyond it (a later one belongs to a store since replaced)."""

    def close(self) -> None: ...


def _envelope(cols: tuple[Any, ...]) -> bytes:
    """id, type, district, street, community, gateway, device, time, epoch, seq, severity,
    data (SQLite's text values) -> the CloudEvent JSON as the edge sent it."""
    id_, type_, district, street, community, gateway, device, time, epoch, seq, sev, data = cols
    source = f"/{district}/{street}/{community}/{gateway}/{device}"
    return EventRow(id_, type_, source, district, street, community, gateway, device, time,
                    epoch, seq, sev, data).envelope_json()


_SQLITE_PAGE = ("SELECT rowid, id, type, district, street, community, gateway, device, time, "
                "epoch, seq, severity, data FROM events WHERE rowid > ? AND ({where}) "
                "ORDER BY rowid LIMIT ?")


class SqliteReader:
    """Reads a SQLite store file (its own connection; the collector may be writing)."""

    kind: StoreKind = "sqlite"

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise ReaderError(f"no store at {path}")
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                     timeout=30)
        self._conn.execute("PRAGMA query_only = 1")  # (mode=ro cannot open a WAL file alone)
        self._lock = threading.Lock()
        self._closed = False
        sql = self._conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' "
                                 "AND name = 'events'").fetchone()
        if sql is None:
            raise ReaderError(f"{path} is not a collector store (no events table)")
        if "WITHOUT ROWID" in str(sql[0]).upper():  # rowid order is the read order
            raise ReaderError(f"{path}: the events table has no rowid")

    def read(self, after: Position, flt: Filter, limit: int = MAX_PAGE) -> Page:
        limit = max(1, min(limit, MAX_PAGE))
        cond, params = where(flt, SQLITE)
        with self._lock:  # one read transaction: the page and the head in one snapshot
            if self._closed:
                raise ReaderError("the reader is closed")
            self._conn.execute("BEGIN")
            try:
                rows = self._conn.execute(_SQLITE_PAGE.format(where=cond),
                                          [after.a, *params, limit + 1]).fetchall()
                head = self._conn.execute("SELECT max(rowid) FROM events").fetchone()[0]
            finally:
                self._conn.execute("COMMIT")
        events = [(Position("sqlite", r[0]), _envelope(tuple(r[1:]))) for r in rows[:limit]]
        if len(rows) > limit:
            return Page(events, events[-1][0], True)
        end = max(after.a, head or 0)
        return Page(events, Position("sqlite", end), False)

    def end(self) -> Position:
        """The largest rowid (0 for an empty store): rows are never deleted, so it only
        grows while this is the same store."""
        with self._lock:
            if self._closed:
                raise ReaderError("the reader is closed")
            head = self._conn.execute("SELECT max(rowid) FROM events").fetchone()[0]
        return Position("sqlite", head or 0)

    def close(self) -> None:
        # Under the read lock: closing a sqlite3 connection while another thread reads on it
        # crashes the process (a page read by the fleet projector's thread when the API
        # stops did, in tests/test_fleet_api.py).
        with self._lock:
            self._closed = True
            self._conn.close()


_HORIZON = b"SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
_PG_PAGE = ("SELECT e.tx, e.id, e.type, p.district, p.street, p.community, p.gateway, "
            "e.device, e.time, e.epoch, e.seq, e.severity, e.data "
            "FROM event_rows e JOIN places p ON p.id = e.place "
            "WHERE e.tx >= %s AND (e.tx, e.id) > (%s, %s) AND e.tx < %s AND ({where}) "
            "ORDER BY e.tx, e.id LIMIT %s")


class EnvelopeCache:
    """The CloudEvent JSON of recently read positions. Streams at the tail read the same
    new events, each with its own filter: turning a row into JSON (ULID text, time,
    JSON of `data`: ~30 µs) is done once per event, not once per consumer."""

    def __init__(self, size: int = 20_000) -> None:
        self._size = size
        self._items: dict[Position, bytes] = {}
        self._lock = threading.Lock()

    def get(self, pos: Position) -> bytes | None:
        return self._items.get(pos)

    def put(self, pos: Position, body: bytes) -> None:
        with self._lock:
            self._items[pos] = body
            if len(self._items) > self._size:  # dicts keep insertion order: drop the oldest
                for old in list(self._items)[: self._size // 10]:
                    del self._items[old]


class PostgresReader:
    """Reads `event_rows` below the oldest open transaction (a small pool of its own)."""

    kind: StoreKind = "postgresql"

    def __init__(self, dsn: str, pool_size: int = 4, statement_timeout_ms: int = 30_000,
                 window: int = 16) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self._psycopg = psycopg
        self._cache = EnvelopeCache()
        #: transaction ids per read window (a group commit is one id)
        self.window = window
        self._pool: ConnectionPool[Any] = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, open=False, name="stream-reader",
            kwargs={"connect_timeout": 10,
                    "options": f"-c statement_timeout={statement_timeout_ms}"})
        try:
            self._pool.open(wait=True, timeout=15)
        except Exception as exc:
            self._pool.close()
            raise ReaderError(f"cannot read the store postgresql://…: {exc}") from None

    def read(self, after: Position, flt: Filter, limit: int = MAX_PAGE) -> Page:
        """Reads windows of transaction ids: `tx >= after.tx AND tx < upper`, so the BRIN
        index on `tx` reads only those block ranges and a page far back does not sort the
        whole table. A window that returned little is followed by one 4 times as wide
        (empty stretches of ids cost a few steps); at most `_MAX_WINDOWS` per call."""
        limit = max(1, min(limit, MAX_PAGE))
        cond, params = where(flt, POSTGRES)
        sql = _PG_PAGE.format(where=cond).encode()
        iso = self._psycopg.IsolationLevel.REPEATABLE_READ
        rows: list[Any] = []
        with self._pool.connection() as conn:
            conn.isolation_level = iso
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(_HORIZON)
                horizon = int(cur.fetchone()[0])
                start, window = after, self.window
                for _ in range(_MAX_WINDOWS):
                    upper = min(horizon, max(start.a, 0) + 1 + window)
                    cur.execute(sql, [start.a, start.a, start.uuid, upper, *params,
                                      limit + 1 - len(rows)])
                    got = cur.fetchall()
                    rows += got
                    if len(rows) > limit or upper >= horizon:
                        break
                    if not got or len(got) < limit // 4:
                        window *= 4
                    start = Position("postgresql", upper - 1, _U128_MAX)
        events = []
        for r in rows[:limit]:
            pos = Position("postgresql", r[0], r[1].int)
            body = self._cache.get(pos)
            if body is None:
                body = _pg_envelope(r[1:])
                self._cache.put(pos, body)
            events.append((pos, body))
        if len(rows) > limit:
            return Page(events, events[-1][0], True)
        # Every transaction below `upper` (<= the horizon) has ended and was read.
        end = Position("postgresql", upper - 1, _U128_MAX)
        return Page(events, max(end, after), upper < horizon)

    def end(self) -> Position:
        """Just below the horizon: a read's `next` is at most `(horizon - 1, max uuid)`, and
        the horizon (the oldest transaction still open) never goes back."""
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(_HORIZON)
            horizon = int(cur.fetchone()[0])
        return Position("postgresql", horizon - 1, _U128_MAX)

    def close(self) -> None:
        self._pool.close()


def _pg_envelope(r: tuple[Any, ...]) -> bytes:
    id_, type_, district, street, community, gateway, device, time, epoch, seq, sev, data = r
    assert isinstance(id_, UUID) and isinstance(time, datetime)
    return _envelope((uuid_ulid(id_), type_, district, street, community, gateway, device,
                      format_time(time.timestamp()), epoch_text(epoch), seq, sev, data))


def open_reader(store_url: str) -> Reader:
    """A reader for the store at `store_url`; raises ReaderError or ValueError (bad URL)."""
    parsed = parse_store_url(store_url)
    if parsed.kind == "postgresql":
        assert parsed.dsn is not None
        return PostgresReader(parsed.dsn)
    assert parsed.path is not None
    return SqliteReader(parsed.path)
