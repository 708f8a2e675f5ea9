"""The agent under systemd (`Type=notify`, `WatchdogSec=`): READY, STATUS, STOPPING and
the watchdog fed only while the event loop, the pipeline and the uplink are all alive.

Invariants
1. READY=1 is sent once the outbox is open and every task of the agent is started.
2. WATCHDOG=1 pings go out (every half `$WATCHDOG_USEC`) only while both the pipeline and
   the uplink beat within the interval (`contract.watchdog`); a wedged one, or a blocked
   event loop, stops them and systemd restarts the agent.
3. Without `$NOTIFY_SOCKET` / `$WATCHDOG_USEC` (not under systemd) none of this does
   anything, and no task is started for it.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING

from edge_agent.contract import sdnotify
from edge_agent.contract.watchdog import Beats, keep_alive
from edge_agent.sdk.supervise import supervise

if TYPE_CHECKING:
    from edge_agent.agent import Agent

#: The stages whose progress feeds the watchdog.
STAGES = ("pipeline", "uplink")


def status_line(agent: Agent) -> str:
    """One line for `systemctl status` (no secret: counts and the broker's address)."""
    up = "connected" if agent.uplink.status.connected else "down"
    return (f"uplink {up} ({agent.uplink.status.broker}), "
            f"outbox {agent.outbox.stats().events} events waiting")


def started(agent: Agent, tg: asyncio.TaskGroup) -> None:
    """Every task is started: wire the beats, start the watchdog task, say READY=1."""
    beats = Beats(*STAGES)
    agent.pipeline.beat = beats.beater("pipeline")
    agent.uplink.beat = beats.beater("uplink")
    interval = sdnotify.watchdog_interval_s()
    if interval is not None:
        ping = partial(keep_alive, beats, interval, service="edge-agent",
                       status=partial(status_line, agent))
        tg.create_task(supervise("watchdog", ping))
    sdnotify.notify("READY=1", f"STATUS={status_line(agent)}")


def stopping() -> None:
    sdnotify.notify("STOPPING=1", "STATUS=stopping: committing what is held to the outbox")
