"""The outbox behind one worker thread, so fsyncs never stall the event loop.

SQLite commits with `synchronous=FULL` take milliseconds on eMMC/SD cards; drivers
polling serial buses must not wait for them. Every outbox call runs, in order, on a
single dedicated thread which also opened the connection.

Acknowledged rows are deleted write-behind (`ack`): they ride along with the next call
to the thread (in the transaction of the next append, usually the very next commit) or
go within `ACK_FLUSH_S` on their own, so one uplink round costs one thread hop and one
transaction instead of two. Calls that read rows (`fetch`, `get`) apply pending acks
first, so an acknowledged row is never read back.

A full disk is not fatal. The outbox keeps a reserve file next to it
(`edge_agent.outbox._reserve`), released when alarms cannot be committed and at start-up
when the file cannot be opened. If it still cannot be opened (a first start on a full
disk), the agent runs degraded: `is_open` is False, `append_rows` raises
`OutboxFullDiskError` after trying to open it again (the pipeline keeps events in memory,
bounded, alarms first), reads find nothing, and `stats()` has an empty epoch, which no
ack matches.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

from edge_agent.contract.envelope import Event, Hierarchy
from edge_agent.contract.logs import get_logger
from edge_agent.outbox import _reserve as outbox_reserve
from edge_agent.outbox.store import (
    Appended,
    Outbox,
    OutboxFullDiskError,
    OutboxRow,
    OutboxStats,
)

T = TypeVar("T")

log = get_logger("edge_agent.outbox.store")

#: Longest time an acknowledged row waits for another outbox call to delete it with.
ACK_FLUSH_S = 0.2


#: Stats while the outbox could not be opened (degraded start on a full disk).
_NOT_OPEN = OutboxStats(events=0, bytes=0, oldest_created=None, evicted_total=0, next_seq=1,
                        epoch="", alarms_over_cap=0, loss_pending=0)


class OutboxThread:
    def __init__(self, outbox: Outbox | None, executor: ThreadPoolExecutor, *,
                 opener: Callable[[], Outbox] | None = None, path: Path | None = None
                 ) -> None:
        self._outbox = outbox
        self._executor = executor
        self._opener = opener
        self.path = outbox.path if outbox is not None else Path(path or "")
        self.epoch = outbox.epoch if outbox is not None else ""
        self.quarantined = outbox.quarantined if outbox is not None else None
        #: why the outbox is not open (degraded start), "" once it is
        self.open_error = ""
        self._acked: list[int] = []
        #: acked rows taken for a delete that has not yet dropped them from the counters
        self._deleting = 0
        self._deleting_lock = threading.Lock()  # changed on both threads
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, path: Path, *, max_bytes: int, hierarchy: Hierarchy,
                   loss_report_interval_s: float = 60.0) -> OutboxThread:
        """Open the outbox on its thread. On a full disk the reserve is released and the
        open tried again; if it still fails, the result is not open (degraded, see the
        module docstring) and every append tries again."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        opener = partial(Outbox.open, path, max_bytes=max_bytes, hierarchy=hierarchy,
                         loss_report_interval_s=loss_report_interval_s)
        loop = asyncio.get_running_loop()
        try:
            outbox = await loop.run_in_executor(executor, partial(_open_on_full_disk, opener,
                                                                  path))
        except OutboxFullDiskError as exc:
            log.error("outbox_not_opened", path=str(path), error=str(exc), degraded=True,
                      hint="running without the outbox: events wait in memory (bounded, "
                           "alarms first) until the disk has room; free space under it")
            thread = cls(None, executor, opener=opener, path=path)
            thread.open_error = str(exc)
            return thread
        except BaseException:
            executor.shutdown(wait=False)
            raise
        await loop.run_in_executor(executor, outbox_reserve.ensure, path)
        return cls(outbox, executor, opener=opener)

    @property
    def is_open(self) -> bool:
        return self._outbox is not None

    def _box(self) -> Outbox:
        """The open outbox (on the thread); opens it now if a degraded start left it
        closed. Raises `OutboxFullDiskError` while that fails."""
        if self._outbox is None:
            if self._opener is None:
                raise OutboxFullDiskError(f"outbox {self.path} is not open")
            box = _open_on_full_disk(self._opener, self.path)
            self._outbox, self.epoch, self.quarantined = box, box.epoch, box.quarantined
            self.open_error = ""
            log.warning("outbox_opened_late", path=str(self.path), epoch=box.epoch)
            outbox_reserve.ensure(self.path)
        return self._outbox

    async def reclaim(self) -> bool:
        """`Outbox.reclaim` (full disk: checkpoint and truncate the WAL)."""
        if self._outbox is None:
            return False
        return await self._run(self._outbox.reclaim)

    def mark_sent(self, lane: int, seq: int) -> None:
        """`Outbox.mark_sent` (in memory, from the loop thread)."""
        if self._outbox is not None:
            self._outbox.mark_sent(lane, seq)

    async def release_reserve(self) -> bool:
        """Give the reserve's room to the outbox (disk full, alarms waiting)."""
        return await self._run(partial(outbox_reserve.release, self.path))

    async def restore_reserve(self) -> bool:
        """Write the reserve again (commits succeed again); False if there is no room."""
        return await self._run(partial(outbox_reserve.ensure, self.path))

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _run_after_acks(self, fn: Callable[[], T]) -> T:
        """`fn` on the thread, after deleting the acknowledged rows still pending."""
        acked = self._take_acked()
        if acked:
            await self._keeping_acks(acked, lambda: self._box().delete(acked))
        return await self._run(fn)

    async def _keeping_acks(self, acked: list[int], fn: Callable[[], T]) -> T:
        """`fn` on the thread, which deletes the rows `acked` (taken by `_take_acked`; it
        may do more in the same transaction); if it fails they are acked again, to be
        deleted with the next call."""
        def deleting() -> T:
            try:
                return fn()
            finally:
                with self._deleting_lock:
                    self._deleting -= len(acked)
        try:
            return await self._run(deleting)
        except BaseException:
            self._acked[:0] = acked  # not deleted: try again with the next call
            raise

    async def append(self, events: Sequence[Event]) -> list[int]:
        return [row.seq for row in (await self.append_rows(events)).rows]

    async def append_rows(self, events: Sequence[Event]) -> Appended:
        acked = self._take_acked()
        def append() -> Appended:
            opened_now = self._outbox is None
            appended = self._box().append_rows(events, acked=acked)
            # Opened late (degraded start): the rows stored earlier were never read, so
            # the uplink must read the outbox rather than take only these.
            return replace(appended, alone=False) if opened_now else appended
        return await self._keeping_acks(acked, append)

    async def fetch(self, *, lane: int, after_seq: int, limit: int, max_bytes: int
                    ) -> list[OutboxRow]:
        if self._outbox is None:
            return []
        box = self._outbox
        return await self._run_after_acks(partial(
            box.fetch, lane=lane, after_seq=after_seq, limit=limit, max_bytes=max_bytes))

    async def get(self, seqs: Iterable[int]) -> list[OutboxRow]:
        if self._outbox is None:
            return []
        return await self._run_after_acks(partial(self._outbox.get, list(seqs)))

    async def delete(self, seqs: Iterable[int]) -> int:
        """Delete now (and whatever acks are pending); returns rows deleted."""
        acked = self._take_acked()
        return await self._keeping_acks(acked, lambda: self._box().delete([*acked, *seqs]))

    def ack(self, seqs: Iterable[int]) -> None:
        """The collector acknowledged these rows: delete them write-behind (see above)."""
        self._acked.extend(seqs)
        if self._acked and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                ACK_FLUSH_S, self._flush_acks)

    def waiting(self) -> int:
        """Rows not yet acknowledged: the outbox's count less the acks pending and those
        being deleted (taken from `_acked` at the start of a delete, they leave `_deleting`
        on the thread right after the outbox's counters drop, so no ack is counted twice
        or not at all while the delete runs)."""
        return max(0, self.stats().events - len(self._acked) - self._deleting)

    def _take_acked(self) -> list[int]:
        """The pending acks, for a delete: they count as `_deleting` until it has run (every
        caller hands them to `_keeping_acks`)."""
        acked, self._acked = self._acked, []
        with self._deleting_lock:
            self._deleting += len(acked)
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        return acked

    def _flush_acks(self) -> None:
        self._ack_timer = None
        acked = self._take_acked()
        if acked:
            task = asyncio.get_running_loop().create_task(self._delete_acked(acked))
            self._ack_tasks.add(task)
            task.add_done_callback(self._ack_tasks.discard)

    async def _delete_acked(self, acked: list[int]) -> None:
        try:
            await self._keeping_acks(acked, lambda: self._box().delete(acked))
        except Exception as exc:
            log.error("outbox_ack_delete_failed", rows=len(acked), error=str(exc),
                      hint="kept; retried with the next outbox call")
            self.ack([])  # re-arm the timer for the rows put back

    async def flush_loss_report(self) -> int | None:
        if self._outbox is None:
            return None
        return await self._run_after_acks(self._outbox.flush_loss_report)

    def stats(self) -> OutboxStats:
        """In-memory counters; safe to read from the loop thread."""
        box = self._outbox
        return box.stats() if box is not None else _NOT_OPEN

    async def close(self) -> None:
        if self._outbox is not None:
            box = self._outbox
            try:
                await self._run_after_acks(box.close)
            except OutboxFullDiskError as exc:  # the acks' deletes could not be written
                log.error("outbox_acks_not_deleted", path=str(self.path), error=str(exc),
                          hint="those rows are sent again after the restart (the collector "
                               "drops the duplicates)")
                await self._run(box.close)
        self._executor.shutdown(wait=True)


def _open_on_full_disk(opener: Callable[[], Outbox], path: Path) -> Outbox:
    """`opener()`; on a full disk, release the reserve and try once more."""
    try:
        return opener()
    except OutboxFullDiskError:
        if not outbox_reserve.release(path):
            raise
    return opener()
