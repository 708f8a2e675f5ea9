"""Liveness for systemd's watchdog: ping only while every stage shows progress.

Each long-running stage (the agent's pipeline and uplink, the collector's broker session
and ingest) calls `Beats.beat(stage)` in its main loop, also while idle: its waits have a
timeout of at most `BEAT_S`, so an idle stage still beats. `keep_alive` sends `WATCHDOG=1`
every half interval if, and only if, every stage beat within the last interval. A stage
wedged (its coroutine stuck on something that never comes, no beat) makes the pings stop,
and so does a blocked event loop (`keep_alive` runs on it): systemd then kills and restarts
the service (`WatchdogSec=`, `Restart=always`; docs/deploy.md).

Invariants
1. A stage counts from the moment `Beats` is made (it must beat within the interval of
   its start); a stage at `rest` (not running by design, e.g. the collector's ingest
   between broker sessions) is never stale until it beats again.
2. No ping while any stage is stale; the stale stage is logged once per episode (with
   its age), and its recovery once.
3. A wait inside a stage longer than `BEAT_S` goes through `sleep_beating` (or has a
   timeout): the watchdog interval must exceed `BEAT_S` plus the longest single step a
   stage may take without beating (a broker connect: its timeout), see docs/deploy.md.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from edge_agent.contract import sdnotify
from edge_agent.contract.logs import get_logger

log = get_logger("edge_agent.contract.watchdog")

#: The longest an idle stage waits without beating (seconds).
BEAT_S = 0.5


def no_beat() -> None:
    """The default beat of a stage nobody watches."""


class Beats:
    """The last beat (monotonic seconds) of each stage watched."""

    def __init__(self, *stages: str) -> None:
        now = time.monotonic()
        self._last = dict.fromkeys(stages, now)

    def beat(self, stage: str) -> None:
        self._last[stage] = time.monotonic()

    def beater(self, stage: str) -> Callable[[], None]:
        """A no-argument beat for `stage` (given to a stage that knows nothing of names)."""
        self._last.setdefault(stage, time.monotonic())
        return lambda: self.beat(stage)

    def rest(self, stage: str) -> None:
        """`stage` is not running by design: not stale until it beats again."""
        self._last[stage] = math.inf

    def stale(self, max_age_s: float) -> dict[str, float]:
        """Stages whose last beat is older than `max_age_s`, with its age (seconds)."""
        now = time.monotonic()
        return {stage: round(now - at, 2) for stage, at in self._last.items()
                if now - at > max_age_s}


async def sleep_beating(seconds: float, beat: Callable[[], None]) -> None:
    """`asyncio.sleep(seconds)` that beats at least every `BEAT_S` meanwhile."""
    end = time.monotonic() + seconds
    while True:
        beat()
        left = end - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, BEAT_S))


async def keep_alive(beats: Beats, interval_s: float, *, service: str,
                     status: Callable[[], str] | None = None) -> None:
    """Forever: every `interval_s / 2`, `WATCHDOG=1` if no stage is stale (module doc)."""
    stale_before: dict[str, float] = {}
    while True:
        stale = beats.stale(interval_s)
        if not stale:
            lines = ["WATCHDOG=1"]
            if status is not None:
                lines.append(f"STATUS={status()}")
            sdnotify.notify(*lines)
        new = {s: age for s, age in stale.items() if s not in stale_before}
        if new:
            log.error("watchdog_stage_stale", service=service, stages=sorted(stale),
                      ages_s=stale, interval_s=interval_s,
                      hint="no progress from these stages: watchdog pings stop and systemd "
                           "restarts the service (WatchdogSec=)")
        if stale_before and not stale:
            log.warning("watchdog_stages_recovered", service=service,
                        stages=sorted(stale_before))
        stale_before = stale
        await asyncio.sleep(interval_s / 2)
