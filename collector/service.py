"""The collector under systemd (`Type=notify`, `WatchdogSec=`): READY, STATUS, STOPPING
and the watchdog fed only while the event loop and every ingest stage are alive.

Invariants
1. READY=1 is sent once the store is open and the collector is subscribed on the broker
   (the first time; a reconnect is no new start).
2. WATCHDOG=1 pings go out only while the broker session, the validator and the
   committer beat within the interval (`Collector.beats`, `contract.watchdog`).
3. STOPPING=1 as soon as the stop is asked for (before the groups in hand are committed).
4. Without `$NOTIFY_SOCKET` / `$WATCHDOG_USEC` nothing is sent and nothing fails.
"""

from __future__ import annotations

import asyncio
from functools import partial

from collector.ingest import Collector
from edge_agent.contract import sdnotify
from edge_agent.contract.watchdog import keep_alive


def status_line(collector: Collector) -> str:
    c = collector.counters
    state = "subscribed" if collector.subscribed.is_set() else "connecting"
    return (f"{state} ({collector.endpoint.describe()}), {c.messages} payloads, "
            f"{c.inserted} events stored")


async def announce(collector: Collector, stop: asyncio.Event) -> None:
    """Run beside `collector.run(stop)`; returns once STOPPING=1 is sent (the pings end
    then: the stages stop beating while the collector shuts down)."""
    interval = sdnotify.watchdog_interval_s()
    pings = None
    if interval is not None:
        pings = asyncio.create_task(keep_alive(collector.beats, interval,
                                               service="edge-collector",
                                               status=partial(status_line, collector)))
    subscribed = asyncio.ensure_future(collector.subscribed.wait())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        sdnotify.notify("STATUS=connecting to the broker")
        await asyncio.wait({subscribed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            sdnotify.notify("READY=1", f"STATUS={status_line(collector)}")
        await stopped
        sdnotify.notify("STOPPING=1", "STATUS=stopping: committing the groups in hand")
    finally:
        for task in (subscribed, stopped, pings):
            if task is not None:
                task.cancel()
