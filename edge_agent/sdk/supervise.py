"""Keep a task alive: whatever it raises is logged and it starts again, with back-off."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from edge_agent.contract.backoff import Backoff
from edge_agent.contract.logs import get_logger

log = get_logger("edge_agent.sdk.supervise")

RESTART_MIN_S, RESTART_MAX_S = 1.0, 60.0


async def supervise(name: str, factory: Callable[[], Awaitable[None]]) -> None:
    """Run `factory()` forever: whatever it raises, log it and start it again (with back-off)."""
    backoff = Backoff(RESTART_MIN_S, RESTART_MAX_S)
    while True:
        started = time.monotonic()
        try:
            await factory()
            log.warning("task_returned", task=name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("task_crashed", task=name, error=str(exc))
        if time.monotonic() - started > 10 * RESTART_MAX_S:  # it ran well for a while
            backoff.reset()
        await backoff.sleep()
        log.info("task_restarting", task=name)
