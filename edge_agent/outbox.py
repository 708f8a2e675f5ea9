"""Durable outbox: the SQLite file where events wait until the collector acknowledges them.

Invariants (each is checked by tests/test_outbox.py; keep them true when changing this file):

1. Durability. `append()` is one transaction (WAL, `synchronous=FULL`): when it returns,
   the rows, their seqs, the persisted `next_seq`, any eviction with its accounting (the
   pending loss report and `evicted_total`, see 6) and any data_loss event it emitted are
   on disk together; when it raises, none of it is and the file is as before. The same
   holds for `flush_loss_report()` and the flush in `close()`.
2. Sequence. Within one epoch seqs are 1, 2, 3, ... assigned without holes and never
   reused, across restarts and crashes too: `next_seq` lives in `meta` and is written in
   the same transaction as the rows (rows are deleted after ack, so MAX(seq) cannot tell).
3. Epoch. A new random epoch (`secrets.token_hex(8)`) is made only when an outbox file is
   created: on first start, or after a corrupt file was quarantined. Never otherwise.
4. Deletion. A row leaves the file only by `delete()` (after the collector's ack) or by
   eviction when a write would exceed `max_bytes`. Nothing else deletes data.
5. Eviction order. TELEMETRY oldest first (lowest seq), then RECORD oldest first. ALARM
   rows (lane 1, including data_loss reports) are never evicted: when only alarms are
   left the cap is overshot, logged and counted (`alarms_over_cap`).
6. Accounting. Every evicted row is added, in the transaction that evicts it, to ONE
   pending loss report kept in `meta` (key `loss_report`, JSON: `evicted`, `by_type`
   {count, first_time, last_time}, `seq_ranges` merged like `wire.to_ranges`,
   `pending_since` by the outbox's `clock`); `evicted_total` (persisted) is the running sum
   of evictions. The pending report becomes one `gateway.data_loss` event (reason
   `outbox_full`, data `evicted`/`by_type`/`seq_ranges` as in event-v1) and is cleared, in
   one transaction, when
   (a) a write finds it `loss_report_interval_s` old (default 60 s), or finds the clock
       set back before `pending_since`;
   (b) an eviction would give it more than `MAX_LOSS_RANGES` seq ranges: it is emitted
       as it is and a new one starts with that eviction;
   (c) `flush_loss_report()` is called; (d) `close()` is called.
   `open()` keeps a report left pending by a crash; the next trigger emits it. Emitting
   takes room like any row: telemetry evicted to make room for the report is named in
   that same report. So an outage costs one data_loss event per interval (plus one per
   `MAX_LOSS_RANGES` ranges), not one per append, and none names more than
   `MAX_LOSS_RANGES` ranges. Every seq below `next_seq` is present, was acknowledged, is
   named in exactly one data_loss event of this epoch, or is in the pending report —
   exactly one of these; `evicted_total` is the sum of `evicted` over the epoch's
   `outbox_full` events plus `stats().loss_pending`.
7. Bytes. `bytes == SUM(size)` over the rows, `size = len(body UTF-8) + ROW_OVERHEAD`.
   After any write, `bytes <= max_bytes` unless every row left is an alarm. The pending
   report lives in `meta` and is not counted: at most `MAX_LOSS_RANGES` ranges and one
   entry per event type, a few KiB.
8. Bodies. `body` is the text the uplink sends verbatim: the event stamped with this
   outbox's epoch and the row's seq, `Event.stamped(epoch, seq).to_json()` byte for byte.
9. No crash loop on a bad file. A file that is not a usable outbox (not a database,
   failing `PRAGMA quick_check`, missing or bad meta, unknown format, or one an earlier
   run saw fail with SQLITE_CORRUPT) is moved aside with its -wal/-shm to
   `<name>.corrupt-<UTC time>` and a fresh file starts with a new epoch and a data_loss
   event (`reason: outbox_corrupt`, `quarantined_file`). The check runs on a read-only
   connection, so a bad file is moved exactly as found (a read-write connection would
   checkpoint its WAL into it on close). Files are only ever renamed, never deleted. A
   file that cannot be opened for other reasons (locked by another process, permissions,
   I/O errors) is left alone and `open()` raises `OutboxError`.
10. One writer. While open, the file is held with SQLite's exclusive lock
   (`locking_mode=EXCLUSIVE`: the WAL index lives in process memory and no other
   connection can read or write); a second process gets `OutboxLockedError`.

Threading: not thread-safe. Make every call from one thread at a time (the agent uses a
single worker thread). `stats()` is the exception: it only returns an immutable snapshot
replaced after each change, so any thread may call it.

The read-write connection is injectable (`connect=`), so tests can wrap it, inject faults
or shrink `max_page_count` to get a real SQLITE_FULL. (The read-only check at open uses its
own `mode=ro` connection.) So is the clock (`clock=`, default `time.time`): it stamps
`created`, the time of data_loss events and `pending_since`, so tests advance a fake
clock instead of sleeping. Opening runs `PRAGMA quick_check` and one `SUM(size)` over the
file: O(file size), a few tens of ms per 100k rows here, longer on SD cards.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

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
#: the rows take on disk (measured here: ~395-byte bodies take ~526 bytes of file per row).
ROW_OVERHEAD = 128
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
#: Most seq ranges one data_loss event names; a pending report that would grow past it
#: is emitted and a new one started (a report stays a few KiB however fragmented).
MAX_LOSS_RANGES = 500
#: Default of `Outbox.open(loss_report_interval_s=...)`: the longest a pending loss report
#: waits for an `append()` to emit it.
LOSS_REPORT_INTERVAL_S = 60.0
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
    #: writes (appends, loss report flushes) since open that left the outbox over its cap
    #: with only alarms left.
    alarms_over_cap: int
    #: evicted events counted in the pending loss report, not yet in a data_loss event.
    loss_pending: int


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


#: An evicted row: (seq, type, observed time as RFC 3339).
_Evicted = tuple[int, str, str]


@dataclass(slots=True)
class _Loss:
    """The pending loss report: evictions not yet named in a data_loss event. Persisted as
    meta `loss_report`; never changed in place once it is the outbox's (copy first)."""

    since: float
    evicted: int = 0
    by_type: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq_ranges: list[list[int]] = field(default_factory=list)

    def copy(self) -> _Loss:
        return _Loss(self.since, self.evicted,
                     {k: dict(v) for k, v in self.by_type.items()},
                     [[a, b] for a, b in self.seq_ranges])

    def add_run(self, first: int, last: int) -> bool:
        """Name seqs first..last (none named yet) in `seq_ranges` and count them in
        `evicted`; False (nothing changed) if that would take more than `MAX_LOSS_RANGES`
        ranges. (Only the first seq of a run can need a new range, so cutting between runs
        is cutting at the first row that does not fit.)"""
        ranges = self.seq_ranges
        i = bisect.bisect_left(ranges, [first])  # the first range starting after `first`
        joins_left = i > 0 and ranges[i - 1][1] + 1 == first
        joins_right = i < len(ranges) and ranges[i][0] == last + 1
        if joins_left and joins_right:
            ranges[i - 1][1] = ranges[i][1]
            del ranges[i]
        elif joins_left:
            ranges[i - 1][1] = last
        elif joins_right:
            ranges[i][0] = first
        elif len(ranges) >= MAX_LOSS_RANGES:
            return False
        else:
            ranges.insert(i, [first, last])
        self.evicted += last - first + 1
        return True

    def count_types(self, items: Sequence[_Evicted]) -> None:
        by_type = self.by_type
        for _, type_, observed in items:
            entry = by_type.get(type_)
            if entry is None:
                by_type[type_] = {"count": 1, "first_time": observed, "last_time": observed}
            else:
                entry["count"] += 1
                if observed < entry["first_time"]:
                    entry["first_time"] = observed
                if observed > entry["last_time"]:
                    entry["last_time"] = observed

    def data(self) -> dict[str, Any]:
        """The `data` of the gateway.data_loss event that reports it."""
        return {"reason": "outbox_full", "evicted": self.evicted,
                "by_type": dict(sorted(self.by_type.items())), "seq_ranges": self.seq_ranges}

    def to_json(self) -> str:
        return json.dumps({"evicted": self.evicted, "by_type": self.by_type,
                           "seq_ranges": self.seq_ranges, "pending_since": self.since},
                          separators=(",", ":"))


def _add_loss(loss: _Loss | None, items: Sequence[_Evicted],
              now: float) -> tuple[_Loss, list[_Loss]]:
    """`loss` (not modified) with `items` added, and the reports that became full on the
    way: when adding a row would give a report more than `MAX_LOSS_RANGES` ranges, that
    report (holding exactly `MAX_LOSS_RANGES`) is done and a new one, pending since `now`,
    starts with the row."""
    work = loss.copy() if loss is not None else _Loss(now)
    done: list[_Loss] = []
    rows = sorted(items)
    start = 0
    for j in range(1, len(rows) + 1):
        if j < len(rows) and rows[j][0] == rows[j - 1][0] + 1:
            continue
        run = rows[start:j]  # consecutive seqs
        if not work.add_run(run[0][0], run[-1][0]):
            done.append(work)
            work = _Loss(now)
            work.add_run(run[0][0], run[-1][0])
        work.count_types(run)
        start = j
    return work, done


def _parse_loss(text: object, next_seq: int, evicted_total: int, epoch: str) -> _Loss:
    """The pending loss report stored in meta, checked; `_Corrupt` if it is not one."""
    def bad(why: str) -> _Corrupt:
        return _Corrupt(f"meta loss_report is not a pending loss report: {why}", epoch)

    def is_int(x: object) -> bool:
        return type(x) is int

    try:
        obj = json.loads(str(text))
    except ValueError as exc:
        raise bad(f"not JSON ({exc})") from None
    keys = {"evicted", "by_type", "seq_ranges", "pending_since"}
    if not isinstance(obj, dict) or set(obj) != keys:
        raise bad(f"expected an object with keys {sorted(keys)}")
    evicted, by_type, ranges, since = (obj[k] for k in
                                       ("evicted", "by_type", "seq_ranges", "pending_since"))
    if not is_int(evicted) or not 1 <= evicted <= evicted_total:
        raise bad(f"evicted={evicted!r} (evicted_total={evicted_total})")
    if type(since) not in (int, float) or not math.isfinite(since):
        raise bad(f"pending_since={since!r}")
    if not isinstance(ranges, list) or not ranges:
        raise bad("seq_ranges empty or not a list")
    prev, named = -1, 0
    for r in ranges:
        if not (isinstance(r, list) and len(r) == 2 and is_int(r[0]) and is_int(r[1])
                and prev + 1 < r[0] <= r[1] < next_seq):
            raise bad(f"seq range {r!r} (ranges must be sorted, apart, below {next_seq})")
        prev, named = r[1], named + r[1] - r[0] + 1
    if named != evicted:
        raise bad(f"seq_ranges name {named} seqs, evicted={evicted}")
    if not isinstance(by_type, dict) or not all(
            isinstance(v, dict) and set(v) == {"count", "first_time", "last_time"}
            and is_int(v["count"]) and v["count"] >= 1 and isinstance(v["first_time"], str)
            and isinstance(v["last_time"], str) for v in by_type.values()):
        raise bad("by_type entries must be {count, first_time, last_time}")
    if sum(v["count"] for v in by_type.values()) != evicted:
        raise bad("by_type counts do not add up to evicted")
    return _Loss(float(since), evicted, by_type, ranges)


@dataclass(slots=True)
class _State:
    epoch: str
    next_seq: int
    evicted_total: int
    events: int
    bytes: int
    loss: _Loss | None = None


@dataclass(slots=True)
class _Pending:
    """What a committed write changes in memory (applied only after COMMIT succeeded)."""

    next_seq: int
    events: int
    bytes: int
    evicted_total: int
    evicted: list[_Evicted]
    loss: _Loss | None
    #: (seq, evicted) of each data_loss event this write emitted.
    reports: list[tuple[int, int]]
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
    """Close a sqlite_utils Database or a sqlite3 connection, ignoring errors."""
    if db is not None:
        with contextlib.suppress(sqlite3.Error):
            (db if isinstance(db, sqlite3.Connection) else db.conn).close()


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


def _readonly_connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True,
                           timeout=BUSY_TIMEOUT_S, isolation_level=None)


def _inspect(path: Path) -> None:
    """Check an existing file through a read-only connection: lock, the note of an earlier
    run, `PRAGMA quick_check`, tables and meta. Read-only, because closing a read-write
    connection checkpoints the WAL into the main file and deletes the -wal: a corrupt file
    must be quarantined exactly as found. Raises `_Corrupt` or `OutboxError`."""
    conn: sqlite3.Connection | None = None
    try:
        conn = _readonly_connect(path)
        conn.execute("BEGIN")  # one read snapshot; BUSY here if another process holds it
        marker = _side(path, _MARKER_SUFFIX)
        if marker.exists():
            try:
                seen = marker.read_text("utf-8", errors="replace")[:300]
            except OSError:
                seen = ""
            raise _Corrupt(f"an earlier run saw corruption: {seen or '?'}")
        rows = conn.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise _Corrupt("quick_check: " + "; ".join(str(r[0])[:200] for r in rows[:3]))
        _load(Database(conn, recursive_triggers=False, execute_plugins=False))
    except sqlite3.Error as exc:
        raise _open_error(exc, path) from exc
    finally:
        if conn is not None:
            _close_quietly(conn)


def _lock(conn: sqlite3.Connection) -> None:
    """Hold the file exclusively while open. Set before the first read, so WAL keeps its
    index in process memory (no -shm) and no other process can read or write."""
    conn.isolation_level = None
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("BEGIN IMMEDIATE")  # take the lock now (no write), not at the first append
    conn.execute("COMMIT")


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
    loss = None
    if "loss_report" in meta:
        loss = _parse_loss(meta["loss_report"], next_seq, evicted_total, epoch)
        for first, last in loss.seq_ranges:
            if conn.execute("SELECT 1 FROM events WHERE seq BETWEEN ? AND ? LIMIT 1",
                            (first, last)).fetchone():
                raise _Corrupt(f"meta loss_report names seqs {first}-{last} but one of them "
                               "is stored", epoch)
    return _State(epoch, next_seq, evicted_total, int(count), int(total), loss)


def _create_schema(db: Any, epoch: str, now: float) -> None:
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
        {"key": "created_at", "value": format_time(now)},
    ])


class Outbox:
    """Bounded, durable FIFO of stamped events in one SQLite file. See the module docstring."""

    def __init__(self, db: Any, path: Path, max_bytes: int, hierarchy: Hierarchy,
                 state: _State, quarantined: Path | None, *,
                 loss_report_interval_s: float = LOSS_REPORT_INTERVAL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._conn: sqlite3.Connection | None = db.conn
        self._path = path
        self._max_bytes = max_bytes
        self._hierarchy = hierarchy
        self._interval = loss_report_interval_s
        self._clock = clock
        self._epoch = state.epoch
        self._next_seq = state.next_seq
        self._evicted_total = state.evicted_total
        self._loss = state.loss
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
             connect: Callable[[Path], sqlite3.Connection] | None = None,
             loss_report_interval_s: float = LOSS_REPORT_INTERVAL_S,
             clock: Callable[[], float] = time.time) -> Outbox:
        """Open the outbox at `path`, creating it if missing, quarantining it if corrupt.

        `loss_report_interval_s`: how old the pending loss report may get before an
        `append()` emits it as a data_loss event (0: every evicting append reports at once).
        `clock`: unix time now, for that age and for `created`/event times.

        Raises `OutboxLockedError` if another process holds it, `OutboxError` for files
        it must not touch (permissions, I/O errors) — never for corruption. A loss report
        left pending by a crash is kept (see invariant 6).
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if not (math.isfinite(loss_report_interval_s) and loss_report_interval_s >= 0):
            raise ValueError(f"loss_report_interval_s must be >= 0, not "
                             f"{loss_report_interval_s}")
        interval = float(loss_report_interval_s)
        path = Path(path)
        factory = connect or default_connect
        marker = _side(path, _MARKER_SUFFIX)
        if not path.exists():
            with contextlib.suppress(OSError):
                marker.unlink()  # a note about a file that is gone
        bad: _Corrupt | None = None
        quarantined: Path | None = None
        if path.exists():
            try:
                _inspect(path)
            except _Corrupt as exc:
                bad, quarantined = exc, _quarantine(path, exc)
        db: Any = None
        try:
            try:
                db = Database(factory(path), recursive_triggers=False, execute_plugins=False)
                _lock(db.conn)
                state = None if bad else _load(db)
                _use_wal(db.conn, path)
            except sqlite3.Error as exc:
                raise _open_error(exc, path) from exc
        except _Corrupt as exc:  # passed read-only a moment ago; the next open() retries
            _close_quietly(db)
            raise OutboxError(f"outbox {path} failed its check: {exc.reason}") from exc
        except BaseException:
            _close_quietly(db)
            raise
        if state is not None:
            box = cls(db, path, max_bytes, hierarchy, state, None,
                      loss_report_interval_s=interval, clock=clock)
            log.info("outbox_opened", path=str(path), epoch=box._epoch, events=box._events,
                     bytes=box._bytes, next_seq=box._next_seq, max_bytes=max_bytes,
                     loss_pending=box._stats.loss_pending)
            return box
        return cls._create(db, path, max_bytes, hierarchy, bad, quarantined, interval, clock)

    @classmethod
    def _create(cls, db: Any, path: Path, max_bytes: int, hierarchy: Hierarchy,
                bad: _Corrupt | None, quarantined: Path | None, interval: float,
                clock: Callable[[], float]) -> Outbox:
        """Make the file an empty outbox with a new epoch; after a quarantine, report it
        with a data_loss event in the same transaction."""
        epoch = secrets.token_hex(8)
        box = cls(db, path, max_bytes, hierarchy, _State(epoch, 1, 0, 0, 0), quarantined,
                  loss_report_interval_s=interval, clock=clock)
        pending = None
        try:
            with db.atomic():
                now = box._clock()
                _create_schema(db, epoch, now)
                if bad is not None and quarantined is not None:
                    data: dict[str, Any] = {"reason": "outbox_corrupt", "evicted": 0,
                                            "by_type": {}, "quarantined_file": str(quarantined),
                                            "detail": bad.reason[:300]}
                    if bad.previous_epoch:
                        data["previous_epoch"] = bad.previous_epoch
                    event = new_event(hierarchy, hierarchy.gateway, "gateway.data_loss", data,
                                      observed_at=now)
                    pending = box._write(box._rows([event], now), now)
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
        """Emit a pending loss report, then close the file (SQLite checkpoints the WAL into
        it). Idempotent. If the report cannot be written (disk full, ...), that is logged
        and the file is closed anyway: the report stays pending on disk for the next run."""
        if self._conn is None:
            return
        try:
            if self._loss is not None:
                self.flush_loss_report()
        except OutboxError as exc:
            log.error("outbox_loss_report_not_flushed", path=str(self._path),
                      loss_pending=self._stats.loss_pending, error=str(exc))
        finally:
            conn, self._conn = self._conn, None
            conn.close()
        log.info("outbox_closed", path=str(self._path), events=self._events,
                 bytes=self._bytes, next_seq=self._next_seq, loss_pending=self._stats.loss_pending)

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
        events = list(events)
        if not events:
            self._live()
            return []
        first = self._next_seq
        now = self._clock()
        rows = self._rows(events, now)
        self._commit(rows, now, flush=False, doing=f"appending {len(rows)} events")
        return list(range(first, first + len(rows)))

    def flush_loss_report(self) -> int | None:
        """Emit the pending loss report now as a `gateway.data_loss` event and clear it (one
        transaction); returns the event's seq, or None if nothing was pending. Telemetry
        evicted to make room for the event is named in it too."""
        self._live()
        if self._loss is None:
            return None
        now = self._clock()
        pending = self._commit([], now, flush=True, doing="writing the data_loss report")
        return pending.reports[-1][0]

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

    def _commit(self, rows: list[Row], now: float, *, flush: bool, doing: str) -> _Pending:
        """`_write` in one transaction, then take over its figures."""
        conn = self._live()
        try:
            with self._db.atomic():
                pending = self._write(rows, now, flush=flush)
        except sqlite3.Error as exc:
            raise self._runtime_error(exc, doing) from exc
        finally:
            if conn.in_transaction:  # atomic() rolls back; make sure of it
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        self._apply(pending)
        return pending

    def _rows(self, events: Sequence[Event], now: float) -> list[Row]:
        """Stamp and serialize `events` with the next seqs (no I/O)."""
        epoch, seq = self._epoch, self._next_seq
        rows: list[Row] = []
        for event in events:
            body, raw = encodable_body(stamped_body(event, epoch, seq), event, epoch, seq)
            retention = int(event.retention)
            rows.append((seq, event.id, event.type, retention,
                         LANE_ALARM if retention == _ALARM else LANE_NORMAL,
                         now, len(raw) + ROW_OVERHEAD, body))
            seq += 1
        return rows

    def _due(self, loss: _Loss, now: float) -> bool:
        """Trigger (a): the pending report is old enough (or the clock went back past it)."""
        return now - loss.since >= self._interval or now < loss.since

    def _write(self, rows: list[Row], now: float, *, flush: bool = False) -> _Pending:
        """Insert `rows`; evict if over the cap and add the evictions to the pending loss
        report; emit that report if due (or `flush`); persist counters and the report.
        Must run inside a transaction; changes nothing in memory."""
        conn = self._live()
        if rows:
            conn.executemany(_INSERT, rows)
        total = self._bytes + sum(r[6] for r in rows)
        count = self._events + len(rows)
        next_seq = rows[-1][0] + 1 if rows else self._next_seq
        loss = self._loss
        # A write that finds the report due reports all it evicts too: nothing stays pending.
        emit = flush or (loss is not None and self._due(loss, now))
        evicted: list[_Evicted] = []
        reports: list[tuple[int, int]] = []
        report: Row | None = None  # the data_loss row of `loss`, built when it is due
        while True:
            if loss is not None and report is None and (emit or self._due(loss, now)):
                report = self._data_loss_row(loss, next_seq, now)
            need = total + (report[6] if report is not None else 0) - self._max_bytes
            if need <= 0:
                break
            batch: list[_Evicted] = []
            freed, n = self._evict_oldest(need, batch)
            if n == 0:
                break  # only alarms left: the cap is overshot
            total, count = total - freed, count - n
            evicted += batch
            loss, full = _add_loss(loss, batch, now)
            for done in full:  # trigger (b): too many ranges for one report
                row = self._data_loss_row(done, next_seq, now)
                conn.execute(_INSERT, row)
                reports.append((next_seq, done.evicted))
                total, count, next_seq = total + row[6], count + 1, next_seq + 1
            report = None  # `loss` changed: rebuild
        if loss is not None and (emit or self._due(loss, now)):
            if report is None:
                report = self._data_loss_row(loss, next_seq, now)
            conn.execute(_INSERT, report)
            reports.append((next_seq, loss.evicted))
            total, count, next_seq = total + report[6], count + 1, next_seq + 1
            loss = None
        if loss is not self._loss:
            if loss is None:
                conn.execute("DELETE FROM meta WHERE key = 'loss_report'")
            else:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('loss_report', ?)",
                             (loss.to_json(),))
        if evicted:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'evicted_total'",
                         (str(self._evicted_total + len(evicted)),))
        if next_seq != self._next_seq:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(next_seq),))
        return _Pending(next_seq=next_seq, events=count, bytes=total,
                        evicted_total=self._evicted_total + len(evicted), evicted=evicted,
                        loss=loss, reports=reports, over_cap=total > self._max_bytes,
                        was_empty=self._events == 0, created=now)

    def _evict_oldest(self, need: int, evicted: list[_Evicted]) -> tuple[int, int]:
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

    def _data_loss_row(self, loss: _Loss, seq: int, now: float) -> Row:
        """The stored row of the gateway.data_loss event that reports `loss` at `seq`."""
        event = new_event(self._hierarchy, self._hierarchy.gateway, "gateway.data_loss",
                          loss.data(), observed_at=now)
        body, raw = encodable_body(stamped_body(event, self._epoch, seq), event, self._epoch,
                                   seq)
        return (seq, event.id, event.type, _ALARM, LANE_ALARM, now, len(raw) + ROW_OVERHEAD,
                body)

    def _apply(self, p: _Pending) -> None:
        """Take over the figures of a committed write and report what it did."""
        episode_starts = bool(p.evicted) and self._loss is None
        self._next_seq, self._events, self._bytes = p.next_seq, p.events, p.bytes
        self._evicted_total = p.evicted_total
        self._loss = p.loss
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
            # Warn when a loss starts; while it goes on, each report is the warning.
            (log.warning if episode_starts else log.debug)(
                "outbox_evicted", path=str(self._path), evicted=len(p.evicted),
                by_type=counts, evicted_total=self._evicted_total,
                loss_pending=self._stats.loss_pending, bytes=self._bytes,
                max_bytes=self._max_bytes)
        for seq, evicted in p.reports:
            log.warning("outbox_loss_reported", path=str(self._path), data_loss_seq=seq,
                        evicted=evicted, evicted_total=self._evicted_total,
                        loss_pending=self._stats.loss_pending)
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
            alarms_over_cap=self._alarms_over_cap,
            loss_pending=0 if self._loss is None else self._loss.evicted)
