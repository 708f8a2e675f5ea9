"""The outbox behind one worker thread, so fsyncs never stall the event loop.

SQLite commits with `synchronous=FULL` take milliseconds on eMMC/SD cards; drivers
polling serial buses must not wait for them. Every outbox call runs, in order, on a
single dedicated thread which also opened the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from edge_agent.envelope import Event, Hierarchy
from edge_agent.outbox import Outbox, OutboxRow, OutboxStats

T = TypeVar("T")


class OutboxThread:
    def __init__(self, outbox: Outbox, executor: ThreadPoolExecutor) -> None:
        self._outbox = outbox
        self._executor = executor
        self.epoch = outbox.epoch
        self.quarantined = outbox.quarantined

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

    async def append(self, events: Sequence[Event]) -> list[int]:
        return await self._run(partial(self._outbox.append, events))

    async def fetch(self, *, lane: int, after_seq: int, limit: int, max_bytes: int
                    ) -> list[OutboxRow]:
        return await self._run(partial(self._outbox.fetch, lane=lane, after_seq=after_seq,
                                       limit=limit, max_bytes=max_bytes))

    async def get(self, seqs: Iterable[int]) -> list[OutboxRow]:
        return await self._run(partial(self._outbox.get, list(seqs)))

    async def delete(self, seqs: Iterable[int]) -> int:
        return await self._run(partial(self._outbox.delete, list(seqs)))

    async def flush_loss_report(self) -> int | None:
        return await self._run(self._outbox.flush_loss_report)

    def stats(self) -> OutboxStats:
        """In-memory counters; safe to read from the loop thread."""
        return self._outbox.stats()

    async def close(self) -> None:
        await self._run(self._outbox.close)
        self._executor.shutdown(wait=True)
