"""Server-sent events for the page: one builder for all open pages.

While at least one page listens, a single task builds the status document every
`interval_s` (one for viewers with the credential, one without, only if someone of that
kind listens), serializes it once and hands it to every listener; a slow listener gets
only the newest document, never a growing backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from edge_agent.contract.logs import get_logger

log = get_logger("edge_agent.status")

INTERVAL_S = 1.0


class Listener:
    def __init__(self, authenticated: bool) -> None:
        self.authenticated = authenticated
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1)

    def offer(self, payload: str | None) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(payload)


class Broadcaster:
    def __init__(self, build: Callable[[bool], dict[str, Any]],
                 interval_s: float = INTERVAL_S) -> None:
        self.build = build
        self.interval_s = interval_s
        self.listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def subscribe(self, authenticated: bool) -> Listener:
        listener = Listener(authenticated)
        self.listeners.add(listener)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="status-stream")
        self._wake.set()
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    async def close(self) -> None:
        for listener in list(self.listeners):
            listener.offer(None)
        self.listeners.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self.listeners:
            for authenticated in (False, True):
                targets = [x for x in self.listeners if x.authenticated is authenticated]
                if targets:
                    try:
                        self._publish(authenticated, targets)
                    except Exception as exc:  # a bug in one document must not end the stream
                        log.exception("status_stream_build_failed", error=str(exc)[:200])
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()

    def _publish(self, authenticated: bool, targets: list[Listener]) -> None:
        payload = json.dumps(self.build(authenticated), ensure_ascii=False,
                             separators=(",", ":"))
        for listener in targets:
            listener.offer(payload)
