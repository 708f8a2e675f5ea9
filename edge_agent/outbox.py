"""Durable outbox: the SQLite file where events wait until the collector acknowledges them.

Invariants (each is checked by tests/test_outbox.py; keep them true when changing this file):

1. Durability. `append()` is one transaction (WAL, `synchronous=FULL`): when it returns,
   the rows, their seqs, the persisted `next_seq` and any eviction with its data_loss
   report are on disk together; when it raises, none of it is and the file is as before.
2. Sequence. Within one epoch seqs are 1, 2, 3, ... assigned without holes and never
   reused, across restarts and crashes too: `next_seq` lives in `meta` and is written in
   the same transaction as the rows (rows are deleted after ack, so MAX(seq) cannot tell).
3. Epoch. A new random epoch (`secrets.token_hex(8)`) is made only when an outbox file is
   created: on first start, or after a corrupt file was quarantined. Never otherwise.
4. Deletion. A row leaves the file only by `delete()` (after the collector's ack) or by
   eviction when an append would exceed `max_bytes`. Nothing else deletes data.
5. Eviction order. TELEMETRY oldest first (lowest seq), then RECORD oldest first. ALARM
   rows (lane 1, including data_loss reports) are never evicted: when only alarms are
   left the cap is overshot, logged and counted (`alarms_over_cap`).
6. Accounting. Every evicted row is named in a `gateway.data_loss` event appended in the
   same transaction, at most one per `append()`: `evicted` is the number of rows it
   evicted and `seq_ranges` are exactly their seqs. `evicted_total` (persisted) is the
   running sum. So every seq below `next_seq` is present, was acknowledged, or is listed
   in exactly one data_loss event of this epoch.
7. Bytes. `bytes == SUM(size)` over the rows, `size = len(body UTF-8) + ROW_OVERHEAD`.
   After `append()`, `bytes <= max_bytes` unless every row left is an alarm.
8. Bodies. `body` is the text the uplink sends verbatim: the event stamped with this
   outbox's epoch and the row's seq, `Event.stamped(epoch, seq).to_json()` byte for byte.
9. No crash loop on a bad file. A file that is not a usable outbox (not a database,
   failing `PRAGMA quick_check`, missing or bad meta, unknown format, or one an earlier
   run saw fail with SQLITE_CORRUPT) is moved aside with its -wal/-shm to
   `<name>.corrupt-<UTC time>` and a fresh file starts with a new epoch and a data_loss
   event (`reason: outbox_corrupt`, `quarantined_file`). Files are only ever renamed,
   never deleted. A file that cannot be opened for other reasons (locked by another
   process, permissions, I/O errors) is left alone and `open()` raises `OutboxError`.
10. One writer. While open, the file is held with SQLite's exclusive lock
   (`locking_mode=EXCLUSIVE`, so WAL runs without a -shm file); a second process gets
   `OutboxLockedError`.

Threading: not thread-safe. Make every call from one thread at a time (the agent uses a
single worker thread). `stats()` is the exception: it only returns an immutable snapshot
replaced after each change, so any thread may call it.

The connection is injectable (`connect=`), so tests can wrap it, inject faults or shrink
`max_page_count` to get a real SQLITE_FULL.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlite_utils import Database

from edge_agent._outbox_body import encodable_body, stamped_body
from edge_agent.envelope import Event, Hierarchy, Retention, format_time, new_event
from edge_agent.logs import get_logger
from edge_agent.wire import to_ranges

log = get_logger("edge_agent.outbox")

#: On-disk format; a file with another value is treated as not ours (quarantined).
FORMAT_VERSION = 1
#: `PRAGMA application_id` of outbox files ("EDOB"), for `file(1)` and forensics.
APPLICATION_ID = 0x45444F42
#: Bytes counted per row on top of its body: the other columns, the record and cell
#: headers, the two index entries and page slack, so that `max_bytes` is close to what
#: the rows take on disk (measured: ~300-byte bodies fill ~420 bytes of file per row).
ROW_OVERHEAD = 120
LANE_NORMAL = 0
LANE_ALARM = 1
#: How long `open()` waits for another holder of the file before `OutboxLockedError`.
BUSY_TIMEOUT_S = 2.0

_SIDE_FILES = ("", "-wal", "-shm", "-journal")
_MARKER_SUFFIX = ".needs-quarantine"
_EPOCH_RE = re.compile(r"[0-9a-f]{16}")
_UINT_RE = re.compile(r"[0-9]{1,18}")
_COLUMNS = {"seq": int, "id": str, "type": str, "retention": int, "lane": int,
            "created": float, "size": int, "body": str}
_ROW_COLS = "seq, id, type, lane, created, body"
_INSERT = ("INSERT INTO events (seq, id, type, retention, lane, created, size, body)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
#: Room set aside for the data_loss report when eviction starts (refined in a loop).
_DATA_LOSS_RESERVE = 600 + ROW_OVERHEAD
#: Seqs per `IN (...)` query in `get()`.
_IN_CHUNK = 500
_ALARM = int(Retention.ALARM)

Row = tuple[int, str, str, int, int, float, int, str]


class OutboxError(Exception):
    """Anything the outbox cannot do; the message names the file."""


class OutboxLockedError(OutboxError):
    """Another process holds the outbox file."""


class OutboxFullDiskError(OutboxError):
    """The disk (or SQLite's page limit) is full; the append was not written."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    id: str
    type: str
    lane: int
    created: float
    body: str


@dataclass(frozen=True, slots=True)
class OutboxStats:
    events: int
    bytes: int
    #: `created` (unix time of append) of the lowest seq present: the longest waiting.
    oldest_created: float | None
    evicted_total: int
    next_seq: int
    epoch: str
    #: append() calls since open that left the outbox over its cap with only alarms left.
    alarms_over_cap: int


def default_connect(path: Path) -> sqlite3.Connection:
    """The production connection: autocommit (explicit transactions), usable from the one
    worker thread that serializes the calls even if it is not the thread that opened it."""
    return sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)


class _Corrupt(Exception):
    """The file is not a usable outbox: quarantine it."""

    def __init__(self, reason: str, previous_epoch: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.previous_epoch = previous_epoch


@dataclass(slots=True)
class _State:
    epoch: str
    next_seq: int
    evicted_total: int
    events: int
    bytes: int


@dataclass(slots=True)
class _Pending:
    """What a committed write changes in memory (applied only after COMMIT succeeded)."""

    next_seq: int
    events: int
    bytes: int
    evicted_total: int
    evicted: list[tuple[int, str, str]]
    data_loss_seq: int | None
    over_cap: bool
    was_empty: bool
    created: float


def _errname(exc: BaseException) -> str:
    return str(getattr(exc, "sqlite_errorname", "") or "")


def _is_corruption(exc: BaseException) -> bool:
    name = _errname(exc)
    return (name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB"
            or name == "SQLITE_IOERR_SHORT_READ")


def _open_error(exc: sqlite3.Error, path: Path) -> Exception:
    """Classify an error met while opening: quarantine, or refuse and leave the file alone."""
    name = _errname(exc)
    if _is_corruption(exc):
        return _Corrupt(f"{name}: {exc}")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return OutboxLockedError(
            f"outbox {path} is locked by another process (another edge-agent is using it?): "
            f"{exc}")
    if name == "SQLITE_FULL":
        return OutboxFullDiskError(f"cannot open outbox {path}: disk full ({exc}); free space "
                                   f"on {path.parent}")
    hint = " (does the directory exist, and may this user write it?)" if name.startswith(
        ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")) else ""
    return OutboxError(f"cannot open outbox {path}: {exc} [{name or type(exc).__name__}]{hint}")


def _close_quietly(db: Any) -> None:
    if db is not None:
        with contextlib.suppress(sqlite3.Error):
            db.conn.close()


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a file creation in `directory` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _side(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _quarantine(path: Path, bad: _Corrupt) -> Path:
    """Move `path` and its -wal/-shm aside to `<name>.corrupt-<UTC time>`; return the new path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = _side(path, f".corrupt-{stamp}")
    n = 1
    while any(_side(dest, sfx).exists() for sfx in _SIDE_FILES):
        dest, n = _side(path, f".corrupt-{stamp}.{n}"), n + 1
    moved = []
    try:
        for sfx in _SIDE_FILES:
            src = _side(path, sfx)
            if src.exists():
                os.replace(src, _side(dest, sfx))
                moved.append(src.name)
    except OSError as exc:
        raise OutboxError(f"outbox {path} is corrupt ({bad.reason}) and could not be moved "
                          f"aside to {dest}: {exc}") from exc
    _fsync_dir(path.parent)
    with contextlib.suppress(OSError):
        _side(path, _MARKER_SUFFIX).unlink()
    log.error("outbox_quarantined", path=str(path), quarantined_file=str(dest),
              reason=bad.reason, moved=moved, previous_epoch=bad.previous_epoch)
    return dest


def _uint(meta: dict[str, Any], key: str, minimum: int, epoch: str | None) -> int:
    value = meta.get(key)
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not _UINT_RE.fullmatch(text) or int(text) < minimum:
        raise _Corrupt(f"meta {key}={value!r} is not an integer >= {minimum}", epoch)
    return int(text)


def _configure(conn: sqlite3.Connection, path: Path) -> str | None:
    """Lock and check the file without writing to it (a file that turns out to be corrupt
    or foreign is quarantined byte for byte). Returns the marker's reason if an earlier
    run saw this file fail with corruption. WAL is switched on by `_use_wal` afterwards."""
    conn.isolation_level = None
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("BEGIN IMMEDIATE")  # take the lock now (no write), not at the first append
    conn.execute("COMMIT")
    marker = _side(path, _MARKER_SUFFIX)
    if marker.exists():
        try:
            return marker.read_text("utf-8", errors="replace")[:300] or "corruption seen"
        except OSError:
            return "corruption seen"
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        raise _Corrupt("quick_check: " + "; ".join(str(r[0])[:200] for r in rows[:3]))
    return None


def _use_wal(conn: sqlite3.Connection, path: Path) -> None:
    """WAL with `synchronous=FULL`: a returned commit survives power loss."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise OutboxError(f"outbox {path}: cannot switch to WAL (journal_mode={mode})")
    conn.execute("PRAGMA synchronous=FULL")


def _load(db: Any) -> _State | None:
    """Read and check the meta of an opened file; None for a file without tables (new)."""
    conn: sqlite3.Connection = db.conn
    tables = set(db.table_names())
    if not tables:
        return None
    meta: dict[str, Any] = {}
    if "meta" in tables:
        meta = {str(k): v for k, v in conn.execute("SELECT key, value FROM meta")}
    epoch_value = meta.get("epoch")
    epoch = epoch_value if isinstance(epoch_value, str) and _EPOCH_RE.fullmatch(
        epoch_value) else None
    if "meta" not in tables:
        raise _Corrupt(f"meta table missing (tables: {sorted(tables)[:5]})")
    if "events" not in tables:
        raise _Corrupt("events table missing", epoch)
    if meta.get("format") != str(FORMAT_VERSION):
        raise _Corrupt(f"meta format={meta.get('format')!r}, expected '{FORMAT_VERSION}'", epoch)
    if epoch is None:
        raise _Corrupt(f"meta epoch={epoch_value!r} is not 16 lowercase hex characters")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    if columns != set(_COLUMNS):
        raise _Corrupt(f"events columns {sorted(columns)} differ from {sorted(_COLUMNS)}",
                       epoch)
    next_seq = _uint(meta, "next_seq", 1, epoch)
    evicted_total = _uint(meta, "evicted_total", 0, epoch)
    count, total, max_seq = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(seq), 0) FROM events").fetchone()
    if max_seq >= next_seq:
        raise _Corrupt(f"meta next_seq={next_seq} but seq {max_seq} is stored", epoch)
    return _State(epoch, next_seq, evicted_total, int(count), int(total))


def _create_schema(db: Any, epoch: str) -> None:
    """Tables, indexes and meta of a new outbox file (call inside a transaction)."""
    conn: sqlite3.Connection = db.conn
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db["events"].create(_COLUMNS, pk="seq", not_null=set(_COLUMNS) - {"seq"})
    db["events"].create_index(["lane", "seq"], index_name="events_lane_seq")
    # Eviction looks for the oldest row of a retention class.
    db["events"].create_index(["retention", "seq"], index_name="events_retention_seq")
    db["meta"].create({"key": str, "value": str}, pk="key", not_null={"value"})
    db["meta"].insert_all([
        {"key": "format", "value": str(FORMAT_VERSION)},
        {"key": "epoch", "value": epoch},
        {"key": "next_seq", "value": "1"},
        {"key": "evicted_total", "value": "0"},
        {"key": "created_at", "value": format_time(time.time())},
    ])


class Outbox:
    """Bounded, durable FIFO of stamped events in one SQLite file. See the module docstring."""

    def __init__(self, db: Any, path: Path, max_bytes: int, hierarchy: Hierarchy,
                 state: _State, quarantined: Path | None) -> None:
        self._db = db
        self._conn: sqlite3.Connection | None = db.conn
        self._path = path
        self._max_bytes = max_bytes
        self._hierarchy = hierarchy
        self._epoch = state.epoch
        self._next_seq = state.next_seq
        self._evicted_total = state.evicted_total
        self._events = state.events
        self._bytes = state.bytes
        self._oldest: float | None = None
        self._alarms_over_cap = 0
        self.quarantined = quarantined
        if self._events:
            self._refresh_oldest()
        else:
            self._publish()

    # ------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, path: Path, *, max_bytes: int, hierarchy: Hierarchy,
             connect: Callable[[Path], sqlite3.Connection] | None = None) -> Outbox:
        """Open the outbox at `path`, creating it if missing, quarantining it if corrupt.

        Raises `OutboxLockedError` if another process holds it, `OutboxError` for files
        it must not touch (permissions, I/O errors) — never for corruption.
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        path = Path(path)
        factory = connect or default_connect
        marker = _side(path, _MARKER_SUFFIX)
        if not path.exists():
            with contextlib.suppress(OSError):
                marker.unlink()  # a note about a file that is gone
        bad: _Corrupt | None = None
        quarantined: Path | None = None
        for attempt in (1, 2):
            db: Any = None
            try:
                try:
                    db = Database(factory(path), recursive_triggers=False,
                                  execute_plugins=False)
                    seen = _configure(db.conn, path)
                    if seen is not None:
                        raise _Corrupt(f"an earlier run saw corruption: {seen}")
                    state = _load(db)
                    _use_wal(db.conn, path)
                except sqlite3.Error as exc:
                    raise _open_error(exc, path) from exc
            except _Corrupt as exc:
                _close_quietly(db)
                if attempt == 2:
                    raise OutboxError(f"fresh outbox {path} is unusable: {exc.reason}") from exc
                bad, quarantined = exc, _quarantine(path, exc)
                continue
            except BaseException:
                _close_quietly(db)
                raise
            break
        if state is not None:
            box = cls(db, path, max_bytes, hierarchy, state, None)
            log.info("outbox_opened", path=str(path), epoch=box._epoch, events=box._events,
                     bytes=box._bytes, next_seq=box._next_seq, max_bytes=max_bytes)
            return box
        return cls._create(db, path, max_bytes, hierarchy, bad, quarantined)

    @classmethod
    def _create(cls, db: Any, path: Path, max_bytes: int, hierarchy: Hierarchy,
                bad: _Corrupt | None, quarantined: Path | None) -> Outbox:
        """Make the file an empty outbox with a new epoch; after a quarantine, report it
        with a data_loss event in the same transaction."""
        epoch = secrets.token_hex(8)
        box = cls(db, path, max_bytes, hierarchy, _State(epoch, 1, 0, 0, 0), quarantined)
        pending = None
        try:
            with db.atomic():
                _create_schema(db, epoch)
                if bad is not None and quarantined is not None:
                    data: dict[str, Any] = {"reason": "outbox_corrupt", "evicted": 0,
                                            "by_type": {}, "quarantined_file": str(quarantined),
                                            "detail": bad.reason[:300]}
                    if bad.previous_epoch:
                        data["previous_epoch"] = bad.previous_epoch
                    event = new_event(hierarchy, hierarchy.gateway, "gateway.data_loss", data)
                    pending = box._write(box._rows([event]))
        except sqlite3.Error as exc:
            _close_quietly(db)
            err = _open_error(exc, path)
            raise (err if isinstance(err, OutboxError) else OutboxError(str(err))) from exc
        except BaseException:
            _close_quietly(db)
            raise
        if pending is not None:
            box._apply(pending)
        _fsync_dir(path.parent)
        log.info("outbox_created", path=str(path), epoch=epoch, max_bytes=max_bytes,
                 quarantined_file=str(quarantined) if quarantined else None)
        return box

    def close(self) -> None:
        """Close the file (SQLite checkpoints the WAL into it). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            log.info("outbox_closed", path=str(self._path), events=self._events,
                     bytes=self._bytes, next_seq=self._next_seq)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ properties

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def stats(self) -> OutboxStats:
        """In-memory figures; no I/O, safe from any thread."""
        return self._stats

    # ------------------------------------------------------------------ writes

    def append(self, events: Sequence[Event]) -> list[int]:
        """Store `events` in one transaction; returns their seqs (in order).

        Evicts (and reports) old telemetry/records in the same transaction if the cap
        would be exceeded. On a full disk raises `OutboxFullDiskError` and writes nothing.
        """
        conn = self._live()
        events = list(events)
        if not events:
            return []
        first = self._next_seq
        rows = self._rows(events)
        try:
            with self._db.atomic():
                pending = self._write(rows)
        except sqlite3.Error as exc:
            raise self._runtime_error(exc, f"appending {len(rows)} events") from exc
        finally:
            if conn.in_transaction:  # atomic() rolls back; make sure of it
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        self._apply(pending)
        return list(range(first, first + len(rows)))

    def delete(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged rows; unknown seqs are ignored. Returns rows deleted."""
        conn = self._live()
        ranges = to_ranges(int(s) for s in seqs)
        if not ranges:
            return 0
        deleted = freed = 0
        try:
            with self._db.atomic():
                for first, last in ranges:
                    for (size,) in conn.execute(
                            "DELETE FROM events WHERE seq BETWEEN ? AND ? RETURNING size",
                            (first, last)).fetchall():
                        deleted += 1
                        freed += size
        except sqlite3.Error as exc:
            raise self._runtime_error(exc, "deleting acknowledged events") from exc
        if deleted:
            self._events -= deleted
            self._bytes -= freed
            self._refresh_oldest()
        return deleted

    # ------------------------------------------------------------------ reads

    def fetch(self, *, lane: int, after_seq: int, limit: int, max_bytes: int) -> list[OutboxRow]:
        """Rows of `lane` with seq > after_seq, ascending, at most `limit`, bodies summing to
        at most `max_bytes` UTF-8 bytes — but always at least one row if there is one."""
        conn = self._live()
        if limit < 1:
            return []
        out: list[OutboxRow] = []
        used = 0
        try:
            cur = conn.execute(
                f"SELECT {_ROW_COLS}, size FROM events WHERE lane = ? AND seq > ?"
                " ORDER BY seq LIMIT ?", (lane, after_seq, limit))
            try:
                for seq, id_, type_, lane_, created, body, size in cur:
                    n = size - ROW_OVERHEAD
                    if out and used + n > max_bytes:
                        break
                    out.append(OutboxRow(seq, id_, type_, lane_, created, body))
                    used += n
            finally:
                cur.close()
        except sqlite3.Error as exc:
            raise self._runtime_error(exc, "reading events") from exc
        return out

    def get(self, seqs: Iterable[int]) -> list[OutboxRow]:
        """The rows still present among `seqs`, ascending (for resends)."""
        conn = self._live()
        wanted = sorted({int(s) for s in seqs})
        out: list[OutboxRow] = []
        try:
            for i in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[i:i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                out.extend(OutboxRow(*r) for r in conn.execute(
                    f"SELECT {_ROW_COLS} FROM events WHERE seq IN ({marks}) ORDER BY seq",
                    chunk))
        except sqlite3.Error as exc:
            raise self._runtime_error(exc, "reading events") from exc
        return out

    # ------------------------------------------------------------------ internals

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox {self._path} is closed")
        return self._conn

    def _runtime_error(self, exc: sqlite3.Error, doing: str) -> OutboxError:
        name = _errname(exc)
        if name == "SQLITE_FULL":
            return OutboxFullDiskError(
                f"outbox {self._path}: disk full while {doing}; nothing was written. Free "
                f"space on {self._path.parent} or lower outbox.max_bytes (now {self._max_bytes})"
                f" below the free space: {exc}")
        if _is_corruption(exc):
            # Leave a note so the next open() quarantines the file instead of failing again.
            with contextlib.suppress(OSError):
                _side(self._path, _MARKER_SUFFIX).write_text(f"{name}: {exc}", "utf-8")
            log.error("outbox_corruption_detected", path=str(self._path), error=str(exc),
                      errname=name, doing=doing)
            return OutboxError(f"outbox {self._path} is corrupt ({exc}) while {doing}; "
                               "the next open() moves it aside")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return OutboxLockedError(f"outbox {self._path} is locked while {doing}: {exc}")
        return OutboxError(f"outbox {self._path}: {exc} while {doing} [{name}]")

    def _rows(self, events: Sequence[Event]) -> list[Row]:
        """Stamp and serialize `events` with the next seqs (no I/O)."""
        epoch, seq, now = self._epoch, self._next_seq, time.time()
        rows: list[Row] = []
        for event in events:
            body, raw = encodable_body(stamped_body(event, epoch, seq), event, epoch, seq)
            retention = int(event.retention)
            rows.append((seq, event.id, event.type, retention,
                         LANE_ALARM if retention == _ALARM else LANE_NORMAL,
                         now, len(raw) + ROW_OVERHEAD, body))
            seq += 1
        return rows

    def _write(self, rows: list[Row]) -> _Pending:
        """Insert `rows`, evict and report if over the cap, persist counters.
        Must run inside a transaction; changes nothing in memory."""
        conn = self._live()
        conn.executemany(_INSERT, rows)
        total = self._bytes + sum(r[6] for r in rows)
        count = self._events + len(rows)
        next_seq = rows[-1][0] + 1
        evicted: list[tuple[int, str, str]] = []
        data_loss: Row | None = None
        now = rows[-1][5]
        if total > self._max_bytes:
            while True:
                need = total + (data_loss[6] if data_loss else _DATA_LOSS_RESERVE) \
                    - self._max_bytes
                if data_loss is not None and need <= 0:
                    break
                freed, n = self._evict_oldest(need, evicted)
                total, count = total - freed, count - n
                if n == 0:
                    break  # only alarms left
                data_loss = self._data_loss_row(evicted, next_seq, now)
            if data_loss is not None:
                conn.execute(_INSERT, data_loss)
                total, count, next_seq = total + data_loss[6], count + 1, next_seq + 1
                conn.execute("UPDATE meta SET value = ? WHERE key = 'evicted_total'",
                             (str(self._evicted_total + len(evicted)),))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(next_seq),))
        return _Pending(next_seq=next_seq, events=count, bytes=total,
                        evicted_total=self._evicted_total + len(evicted), evicted=evicted,
                        data_loss_seq=data_loss[0] if data_loss else None,
                        over_cap=total > self._max_bytes, was_empty=self._events == 0,
                        created=now)

    def _evict_oldest(self, need: int, evicted: list[tuple[int, str, str]]) -> tuple[int, int]:
        """Delete the oldest TELEMETRY, then RECORD rows until `need` bytes are freed (or
        none are left). Appends (seq, type, time) of each to `evicted`."""
        conn = self._live()
        freed = n = 0
        for retention in (Retention.TELEMETRY, Retention.RECORD):
            last = None
            cur = conn.execute(
                "SELECT seq, type, size, json_extract(body, '$.time'), created FROM events"
                " WHERE retention = ? ORDER BY seq", (int(retention),))
            try:
                for seq, type_, size, observed, created in cur:
                    evicted.append((seq, type_, observed if isinstance(observed, str)
                                    else format_time(created)))
                    freed, n, last = freed + size, n + 1, seq
                    if freed >= need:
                        break
            finally:
                cur.close()
            if last is not None:  # exactly the rows read above: the oldest of this class
                conn.execute("DELETE FROM events WHERE retention = ? AND seq <= ?",
                             (int(retention), last))
            if freed >= need:
                break
        return freed, n

    def _data_loss_row(self, evicted: list[tuple[int, str, str]], seq: int,
                       now: float) -> Row:
        by_type: dict[str, dict[str, Any]] = {}
        for _, type_, observed in evicted:
            entry = by_type.get(type_)
            if entry is None:
                by_type[type_] = {"count": 1, "first_time": observed, "last_time": observed}
            else:
                entry["count"] += 1
                entry["first_time"] = min(entry["first_time"], observed)
                entry["last_time"] = max(entry["last_time"], observed)
        data = {"reason": "outbox_full", "evicted": len(evicted),
                "by_type": dict(sorted(by_type.items())),
                "seq_ranges": to_ranges(s for s, _, _ in evicted)}
        event = new_event(self._hierarchy, self._hierarchy.gateway, "gateway.data_loss", data)
        body, raw = encodable_body(stamped_body(event, self._epoch, seq), event, self._epoch,
                                   seq)
        return (seq, event.id, event.type, _ALARM, LANE_ALARM, now, len(raw) + ROW_OVERHEAD,
                body)

    def _apply(self, p: _Pending) -> None:
        """Take over the figures of a committed write and report what it did."""
        self._next_seq, self._events, self._bytes = p.next_seq, p.events, p.bytes
        self._evicted_total = p.evicted_total
        if p.evicted:
            self._refresh_oldest()
        elif p.was_empty:
            self._oldest = p.created
        if p.over_cap:
            self._alarms_over_cap += 1
        self._publish()
        if p.evicted:
            counts: dict[str, int] = {}
            for _, type_, _ in p.evicted:
                counts[type_] = counts.get(type_, 0) + 1
            log.warning("outbox_evicted", path=str(self._path), evicted=len(p.evicted),
                        by_type=counts, evicted_total=self._evicted_total,
                        data_loss_seq=p.data_loss_seq, bytes=self._bytes,
                        max_bytes=self._max_bytes)
        if p.over_cap:
            log.warning("outbox_over_cap_alarms_only", path=str(self._path), bytes=self._bytes,
                        max_bytes=self._max_bytes, events=self._events,
                        alarms_over_cap=self._alarms_over_cap)

    def _refresh_oldest(self) -> None:
        conn = self._live()
        row = conn.execute("SELECT created FROM events ORDER BY seq LIMIT 1").fetchone()
        self._oldest = None if row is None else float(row[0])
        self._publish()

    def _publish(self) -> None:
        self._stats = OutboxStats(
            events=self._events, bytes=self._bytes, oldest_created=self._oldest,
            evicted_total=self._evicted_total, next_seq=self._next_seq, epoch=self._epoch,
            alarms_over_cap=self._alarms_over_cap)
