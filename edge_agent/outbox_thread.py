"""The outbox behind one worker thread, so fsyncs never stall the event loop.

SQLite commits with `synchronous=FULL` take milliseconds on eMMC/SD cards; drivers
polling serial buses must not wait for them. Every outbox call runs, in order, on a
single dedicated thread which also opened the connection.

Acknowledged rows are deleted write-behind (`ack`): they ride along with the next call
to the thread (in the transaction of the next append, usually the very next commit) or
go within `ACK_FLUSH_S` on their own, so one uplink round costs one thread hop and one
transaction instead of two. Calls that read rows (`fetch`, `get`) apply pending acks
first, so an acknowledged row is never read back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from edge_agent.envelope import Event, Hierarchy
from edge_agent.logs import get_logger
from edge_agent.outbox import Appended, Outbox, OutboxRow, OutboxStats

T = TypeVar("T")

log = get_logger("edge_agent.outbox")

#: Longest time an acknowledged row waits for another outbox call to delete it with.
ACK_FLUSH_S = 0.2


class OutboxThread:
    def __init__(self, outbox: Outbox, executor: ThreadPoolExecutor) -> None:
        self._outbox = outbox
        self._executor = executor
        self.epoch = outbox.epoch
        self.quarantined = outbox.quarantined
        self._acked: list[int] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, path: Path, *, max_bytes: int, hierarchy: Hierarchy,
                   loss_report_interval_s: float = 60.0) -> OutboxThread:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        loop = asyncio.get_running_loop()
        try:
            outbox = await loop.run_in_executor(
                executor, partial(Outbox.open, path, max_bytes=max_bytes, hierarchy=hierarchy,
                                  loss_report_interval_s=loss_report_interval_s))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(outbox, executor)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _run_after_acks(self, fn: Callable[[], T]) -> T:
        """`fn` on the thread, after deleting the acknowledged rows still pending."""
        acked = self._take_acked()
        if not acked:
            return await self._run(fn)

        def both() -> T:
            self._outbox.delete(acked)
            return fn()
        return await self._keeping_acks(acked, both)

    async def _keeping_acks(self, acked: list[int], fn: Callable[[], T]) -> T:
        try:
            return await self._run(fn)
        except BaseException:
            self._acked[:0] = acked  # not deleted: try again with the next call
            raise

    async def append(self, events: Sequence[Event]) -> list[int]:
        return [row.seq for row in (await self.append_rows(events)).rows]

    async def append_rows(self, events: Sequence[Event]) -> Appended:
        acked = self._take_acked()
        return await self._keeping_acks(acked, partial(self._outbox.append_rows, events,
                                                       acked=acked))

    async def fetch(self, *, lane: int, after_seq: int, limit: int, max_bytes: int
                    ) -> list[OutboxRow]:
        return await self._run_after_acks(partial(
            self._outbox.fetch, lane=lane, after_seq=after_seq, limit=limit,
            max_bytes=max_bytes))

    async def get(self, seqs: Iterable[int]) -> list[OutboxRow]:
        return await self._run_after_acks(partial(self._outbox.get, list(seqs)))

    async def delete(self, seqs: Iterable[int]) -> int:
        """Delete now (and whatever acks are pending); returns rows deleted."""
        acked = self._take_acked()
        return await self._keeping_acks(acked, partial(self._outbox.delete, [*acked, *seqs]))

    def ack(self, seqs: Iterable[int]) -> None:
        """The collector acknowledged these rows: delete them write-behind (see above)."""
        self._acked.extend(seqs)
        if self._acked and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                ACK_FLUSH_S, self._flush_acks)

    def waiting(self) -> int:
        """Rows not yet acknowledged (the outbox's count less the pending acks)."""
        return max(0, self._outbox.stats().events - len(self._acked))

    def _take_acked(self) -> list[int]:
        acked, self._acked = self._acked, []
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
            await self._keeping_acks(acked, partial(self._outbox.delete, acked))
        except Exception as exc:
            log.error("outbox_ack_delete_failed", rows=len(acked), error=str(exc),
                      hint="kept; retried with the next outbox call")
            self.ack([])  # re-arm the timer for the rows put back

    async def flush_loss_report(self) -> int | None:
        return await self._run_after_acks(self._outbox.flush_loss_report)

    def stats(self) -> OutboxStats:
        """In-memory counters; safe to read from the loop thread."""
        return self._outbox.stats()

    async def close(self) -> None:
        await self._run_after_acks(self._outbox.close)
        self._executor.shutdown(wait=True)
