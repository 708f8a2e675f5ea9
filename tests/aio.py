"""asyncio helpers for tests."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(*tasks: asyncio.Task[object] | asyncio.Future[object]) -> None:
    """Cancel `tasks` and wait until each has ended (a task may still clean up after the
    cancel: close a connection, flush a queue); their CancelledError is swallowed, any
    other exception propagates."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
