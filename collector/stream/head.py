"""Wakes the SSE streams when the store has new events, instead of each polling alone.

One task per server reads the store's unfiltered tail every `poll_s` (positions only
matter; each event is read once more in all) and, when something new became visible,
wakes every stream waiting. A stream takes `waiter()` BEFORE it reads its page, so an
event that arrives between its read and its wait still wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib

from collector.stream.filter import Filter
from collector.stream.position import Position
from collector.stream.reader import Reader
from edge_agent.contract.logs import get_logger

log = get_logger("collector.stream")


class Head:
    def __init__(self, reader: Reader, poll_s: float) -> None:
        self._reader = reader
        self._poll_s = poll_s
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.position = Position.start(reader.kind)

    def waiter(self) -> asyncio.Event:
        """The event that is set at the next change after this call."""
        return self._changed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-head")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _catch_up(self) -> bool:
        grew = False
        while True:
            page = await asyncio.to_thread(self._reader.read, self.position, Filter())
            grew = grew or bool(page.events)
            self.position = page.next
            if not page.more:
                return grew

    async def _run(self) -> None:
        await self._catch_up()  # start at the current end: streams read their own past
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                grew = await self._catch_up()
            except Exception as exc:  # the store is away: streams keep their heartbeats
                log.warning("stream_head_read_failed", error=" ".join(str(exc).split()))
                grew = True  # let the streams try (and fail) themselves
            if grew:
                changed, self._changed = self._changed, asyncio.Event()
                changed.set()
