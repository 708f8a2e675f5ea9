"""The `Outbox` class: one SQLite file, append / fetch / delete / stats.

The invariants it keeps, its threading rules and its private modules are written down
in `edge_agent.outbox` (the package docstring). Threading: not thread-safe but for
`stats()`; the agent calls it from one worker thread (`edge_agent.outbox.thread`).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from edge_agent.contract.envelope import Event, Hierarchy, new_event
from edge_agent.contract.logs import get_logger
from edge_agent.contract.wire import to_ranges
from edge_agent.outbox._errors import (
    OutboxError,
    OutboxFullDiskError,
    OutboxLockedError,
    errname,
    is_corruption,
    is_locked,
)
from edge_agent.outbox._open import (
    Opened,
    close_quietly,
    fsync_dir,
    mark_for_quarantine,
    open_error,
    open_file,
)
from edge_agent.outbox._schema import (
    APPLICATION_ID,
    FORMAT_VERSION,
    LANE_ALARM,
    LANE_NORMAL,
    ROW_COLS,
    ROW_OVERHEAD,
    Figures,
    Row,
    create_schema,
    stored_rows,
)
from edge_agent.outbox._transaction import transaction
from edge_agent.outbox._write import Limits, Written, write

__all__ = [
    "APPLICATION_ID",
    "BUSY_TIMEOUT_S",
    "FORMAT_VERSION",
    "LANE_ALARM",
    "LANE_NORMAL",
    "LOSS_REPORT_INTERVAL_S",
    "MAX_LOSS_RANGES",
    "ROW_OVERHEAD",
    "Appended",
    "Outbox",
    "OutboxError",
    "OutboxFullDiskError",
    "OutboxLockedError",
    "OutboxRow",
    "OutboxStats",
    "default_connect",
]

log = get_logger("edge_agent.outbox.store")

# BUSY_TIMEOUT_S and MAX_LOSS_RANGES are read from this module at each use, and passed on
# to the private modules from here, so that tests can lower them.
#: How long `open()` waits for another holder of the file before `OutboxLockedError`.
BUSY_TIMEOUT_S = 2.0
#: Most seq ranges one data_loss event names; a pending report that would grow past it
#: is emitted and a new one started (a report stays a few KiB however fragmented).
MAX_LOSS_RANGES = 500
#: Default of `Outbox.open(loss_report_interval_s=...)`: the longest a pending loss report
#: waits for an `append()` to emit it.
LOSS_REPORT_INTERVAL_S = 60.0
#: Seqs per `IN (...)` query in `get()`.
_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    id: str
    type: str
    lane: int
    created: float
    body: str


@dataclass(frozen=True, slots=True)
class Appended:
    """What one `append_rows` stored."""

    rows: list[OutboxRow]
    #: True when these rows are all the transaction added (no eviction, no data_loss
    #: report written): a reader that had every earlier row needs nothing but these.
    alone: bool


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


# Defined in a private module, public here (tracebacks and pickles name this module).
for _cls in (OutboxError, OutboxLockedError, OutboxFullDiskError):
    _cls.__module__ = __name__
del _cls


def default_connect(path: Path) -> sqlite3.Connection:
    """The production connection: autocommit (explicit transactions), usable from the one
    worker thread that serializes the calls even if it is not the thread that opened it."""
    return sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)


class Outbox:
    """Bounded, durable FIFO of stamped events in one SQLite file. See the module docstring."""

    def __init__(self, conn: sqlite3.Connection, path: Path, limits: Limits, figures: Figures,
                 quarantined: Path | None, clock: Callable[[], float]) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._limits = limits
        self._clock = clock
        self._figures = figures
        self._oldest: float | None = None
        self._alarms_over_cap = 0
        #: highest seq of the normal lane the uplink sent (`mark_sent`); what was stored
        #: before this open may have been sent by an earlier run
        self._sent_through = figures.next_seq - 1
        self.quarantined = quarantined
        if figures.events:
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
        limits = Limits(max_bytes, float(loss_report_interval_s), hierarchy)
        path = Path(path)
        opened = open_file(path, connect or default_connect, BUSY_TIMEOUT_S)
        if opened.figures is None:
            return cls._create(opened, path, limits, clock)
        box = cls(opened.conn, path, limits, opened.figures, None, clock)
        stats = box.stats()
        log.info("outbox_opened", path=str(path), epoch=stats.epoch, events=stats.events,
                 bytes=stats.bytes, next_seq=stats.next_seq, max_bytes=max_bytes,
                 loss_pending=stats.loss_pending)
        return box

    @classmethod
    def _create(cls, opened: Opened, path: Path, limits: Limits,
                clock: Callable[[], float]) -> Outbox:
        """Make the file an empty outbox with a new epoch; after a quarantine, report it
        with a data_loss event in the same transaction."""
        conn, moved = opened.conn, opened.quarantine
        epoch = secrets.token_hex(8)
        box = cls(conn, path, limits, Figures(epoch, 1, 0, 0, 0),
                  moved.file if moved else None, clock)
        written = None
        try:
            with transaction(conn):
                now = box._clock()
                create_schema(conn, epoch, now)
                if moved is not None:
                    gateway = limits.hierarchy
                    event = new_event(gateway, gateway.gateway, "gateway.data_loss",
                                      moved.report_data(), observed_at=now)
                    written = box._write(stored_rows([event], epoch, 1, now), now, box._figures)
        except sqlite3.Error as exc:
            close_quietly(conn)
            err = open_error(exc, path)
            raise (err if isinstance(err, OutboxError) else OutboxError(str(err))) from exc
        except BaseException:
            close_quietly(conn)
            raise
        if written is not None:
            box._apply(written, now)
        fsync_dir(path.parent)
        log.info("outbox_created", path=str(path), epoch=epoch, max_bytes=limits.max_bytes,
                 quarantined_file=str(moved.file) if moved else None)
        return box

    def close(self) -> None:
        """Emit a pending loss report, then close the file (SQLite checkpoints the WAL into
        it). Idempotent. If the report cannot be written (disk full, ...), that is logged
        and the file is closed anyway: the report stays pending on disk for the next run."""
        if self._conn is None:
            return
        try:
            if self._figures.loss is not None:
                self.flush_loss_report()
        except OutboxError as exc:
            log.error("outbox_loss_report_not_flushed", path=str(self._path),
                      loss_pending=self._stats.loss_pending, error=str(exc))
        finally:
            conn, self._conn = self._conn, None
            conn.close()
        stats = self._stats
        log.info("outbox_closed", path=str(self._path), events=stats.events,
                 bytes=stats.bytes, next_seq=stats.next_seq, loss_pending=stats.loss_pending)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ properties

    @property
    def epoch(self) -> str:
        return self._figures.epoch

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_bytes(self) -> int:
        return self._limits.max_bytes

    def stats(self) -> OutboxStats:
        """In-memory figures; no I/O, safe from any thread."""
        return self._stats

    # ------------------------------------------------------------------ writes

    def append(self, events: Sequence[Event], *, acked: Iterable[int] = ()) -> list[int]:
        """Store `events` in one transaction; returns their seqs (in order).

        Rows named in `acked` (acknowledged by the collector) are deleted first, in the
        same transaction. Evicts (and reports) old telemetry/records in it too if the cap
        would be exceeded. On a full disk raises `OutboxFullDiskError` and writes nothing.
        """
        return [row.seq for row in self.append_rows(events, acked=acked).rows]

    def append_rows(self, events: Sequence[Event], *, acked: Iterable[int] = ()) -> Appended:
        """`append`, returning the stored rows (bodies included) for the uplink to send
        without reading them back."""
        events = list(events)
        ranges = to_ranges(int(s) for s in acked)
        if not events:
            self._delete(ranges)
            return Appended([], alone=True)
        now = self._clock()
        rows = stored_rows(events, self._figures.epoch, self._figures.next_seq, now)
        written = self._commit(rows, now, flush=False,
                               doing=f"appending {len(rows)} events", acked=ranges)
        return Appended([OutboxRow(seq, id_, type_, lane, created, body)
                         for seq, id_, type_, _, lane, created, _, body in rows],
                        alone=not written.evicted and not written.reports)

    def flush_loss_report(self) -> int | None:
        """Emit the pending loss report now as a `gateway.data_loss` event and clear it (one
        transaction); returns the event's seq, or None if nothing was pending. Telemetry
        evicted to make room for the event is named in it too."""
        self._live()
        if self._figures.loss is None:
            return None
        now = self._clock()
        written = self._commit([], now, flush=True, doing="writing the data_loss report")
        return written.reports[-1][0]

    def delete(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged rows; unknown seqs are ignored. Returns rows deleted.
        Committed without an fsync (invariant 4)."""
        return self._delete(to_ranges(int(s) for s in seqs))

    def _delete(self, ranges: Sequence[Sequence[int]]) -> int:
        conn = self._live()
        if not ranges:
            return 0
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            try:
                with transaction(conn):
                    deleted, freed = _delete_ranges(conn, ranges)
            finally:
                conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise self._runtime_error(exc, "deleting acknowledged events") from exc
        if deleted:
            f = self._figures
            self._figures = replace(f, events=f.events - deleted, bytes=f.bytes - freed)
            self._refresh_oldest()
        return deleted

    def mark_sent(self, lane: int, seq: int) -> None:
        """The uplink is sending the rows of `lane` up to `seq` (called before it
        publishes). An evicted row at or below it is reported `unconfirmed` (perhaps stored,
        its ack not seen), any other `lost` (never sent). Only the normal lane is evicted.
        In memory, no I/O: callable from any thread."""
        if lane == LANE_NORMAL and seq > self._sent_through:
            self._sent_through = seq

    def reclaim(self) -> bool:
        """On a full disk: checkpoint the WAL into the main file and truncate it
        (`wal_checkpoint(TRUNCATE)`). The main file reuses the pages acked rows freed, so
        this usually gives back most of the WAL's room. True if the WAL shrank; False if
        it did not (nothing to give back, or no room for the checkpoint either)."""
        conn = self._live()
        wal = self._path.with_name(self._path.name + "-wal")
        try:
            before = wal.stat().st_size
        except OSError:
            return False
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("outbox_checkpoint_failed", path=str(self._path), error=str(exc),
                        errname=errname(exc))
            return False
        try:
            after = wal.stat().st_size
        except OSError:
            after = 0
        if busy or after >= before:
            return False
        log.debug("outbox_wal_reclaimed", path=str(self._path), freed=before - after)
        return True

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
                f"SELECT {ROW_COLS}, size FROM events WHERE lane = ? AND seq > ?"
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
                    f"SELECT {ROW_COLS} FROM events WHERE seq IN ({marks}) ORDER BY seq",
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
        name = errname(exc)
        if name == "SQLITE_FULL":
            return OutboxFullDiskError(
                f"outbox {self._path}: disk full while {doing}; nothing was written. Free "
                f"space on {self._path.parent} or lower outbox.max_bytes (now "
                f"{self._limits.max_bytes}) below the free space: {exc}")
        if is_corruption(exc):
            mark_for_quarantine(self._path, f"{name}: {exc}")
            log.error("outbox_corruption_detected", path=str(self._path), error=str(exc),
                      errname=name, doing=doing)
            return OutboxError(f"outbox {self._path} is corrupt ({exc}) while {doing}; "
                               "the next open() moves it aside")
        if is_locked(name):
            return OutboxLockedError(f"outbox {self._path} is locked while {doing}: {exc}")
        return OutboxError(f"outbox {self._path}: {exc} while {doing} [{name}]")

    def _commit(self, rows: list[Row], now: float, *, flush: bool, doing: str,
                acked: Sequence[Sequence[int]] = ()) -> Written:
        """Delete `acked` and `_write` in one transaction, then take over what it did."""
        conn = self._live()
        deleted = 0
        try:
            with transaction(conn):
                figures = self._figures
                if acked:
                    deleted, freed = _delete_ranges(conn, acked)
                    figures = replace(figures, events=figures.events - deleted,
                                      bytes=figures.bytes - freed)
                written = self._write(rows, now, figures, flush=flush)
        except sqlite3.Error as exc:
            raise self._runtime_error(exc, doing) from exc
        finally:
            if conn.in_transaction:  # transaction() rolls back; make sure of it
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        self._apply(written, now, deleted=deleted)
        return written

    def _write(self, rows: list[Row], now: float, figures: Figures, *,
               flush: bool = False) -> Written:
        """`_write.write` on this outbox; inside a transaction, changes nothing in
        memory."""
        return write(self._live(), figures, rows, now, self._limits, flush=flush,
                     max_ranges=MAX_LOSS_RANGES, sent_through=self._sent_through)

    def _apply(self, written: Written, now: float, *, deleted: int = 0) -> None:
        """Take over the figures of a committed write (made at `now`, after deleting
        `deleted` acknowledged rows) and report what it did."""
        before, evicted = self._figures, written.evicted
        episode_starts = bool(evicted) and before.loss is None
        self._figures = after = written.figures
        if evicted or deleted:
            self._refresh_oldest()
        elif before.events == 0:
            self._oldest = now
        if written.over_cap:
            self._alarms_over_cap += 1
        self._publish()
        path, max_bytes = str(self._path), self._limits.max_bytes
        loss_pending = self._stats.loss_pending
        if evicted:
            counts: dict[str, int] = {}
            for _, type_, _ in evicted:
                counts[type_] = counts.get(type_, 0) + 1
            # Warn when a loss starts; while it goes on, each report is the warning.
            (log.warning if episode_starts else log.debug)(
                "outbox_evicted", path=path, evicted=len(evicted), by_type=counts,
                evicted_total=after.evicted_total, loss_pending=loss_pending,
                bytes=after.bytes, max_bytes=max_bytes)
        for seq, reported in written.reports:
            log.warning("outbox_loss_reported", path=path, data_loss_seq=seq,
                        evicted=reported, evicted_total=after.evicted_total,
                        loss_pending=loss_pending)
        if written.over_cap:
            log.warning("outbox_over_cap_alarms_only", path=path, bytes=after.bytes,
                        max_bytes=max_bytes, events=after.events,
                        alarms_over_cap=self._alarms_over_cap)

    def _refresh_oldest(self) -> None:
        conn = self._live()
        row = conn.execute("SELECT created FROM events ORDER BY seq LIMIT 1").fetchone()
        self._oldest = None if row is None else float(row[0])
        self._publish()

    def _publish(self) -> None:
        f = self._figures
        self._stats = OutboxStats(
            events=f.events, bytes=f.bytes, oldest_created=self._oldest,
            evicted_total=f.evicted_total, next_seq=f.next_seq, epoch=f.epoch,
            alarms_over_cap=self._alarms_over_cap,
            loss_pending=0 if f.loss is None else f.loss.evicted)


def _delete_ranges(conn: sqlite3.Connection, ranges: Iterable[Sequence[int]]
                   ) -> tuple[int, int]:
    """Delete the rows of `ranges` (inside the caller's transaction): (rows, bytes)."""
    deleted = freed = 0
    for first, last in ranges:
        for (size,) in conn.execute(
                "DELETE FROM events WHERE seq BETWEEN ? AND ? RETURNING size",
                (first, last)).fetchall():
            deleted += 1
            freed += size
    return deleted, freed
