"""Pipeline commit batching: telemetry lingers for a burst, alarms never wait."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.outbox.thread import OutboxThread
from edge_agent.pipeline.core import Pipeline
from edge_agent.sdk.testing import TEST_HIERARCHY
from tests.aio import cancel_and_wait

READING = {"density_db_m": 0.01, "temperature_c": 21.5, "battery_pct": 90}


@contextlib.asynccontextmanager
async def pipeline(tmp_path: Path, linger_s: float) -> AsyncIterator[tuple[Pipeline, Commits]]:
    outbox = await OutboxThread.open(tmp_path / "outbox.db", max_bytes=10**8,
                                     hierarchy=TEST_HIERARCHY)
    commits = Commits(outbox)
    pipe = Pipeline(TEST_HIERARCHY, outbox, commit_linger_s=linger_s, on_commit=commits.seen)
    task = asyncio.create_task(pipe.run())
    try:
        yield pipe, commits
    finally:
        await cancel_and_wait(task)
        await outbox.close()


class Commits(list[int]):
    """Events in the outbox after each commit; `first` is set by the first one."""

    def __init__(self, outbox: OutboxThread) -> None:
        super().__init__()
        self.outbox = outbox
        self.first = asyncio.Event()

    def seen(self) -> None:
        self.append(self.outbox.stats().events)
        self.first.set()

    async def wait(self, within_s: float) -> bool:
        async with asyncio.timeout(within_s):
            await self.first.wait()
        return True


async def test_telemetry_waits_for_the_linger_and_is_committed_as_one_batch(tmp_path: Path
                                                                              ) -> None:
    async with pipeline(tmp_path, linger_s=1.0) as (pipe, commits):
        for _ in range(5):
            pipe.emit("smoke-1", "smoke.reading", READING)
        await asyncio.sleep(0.1)
        assert commits == []  # still gathering (0.9 s of margin for a busy machine)
        await commits.wait(10.0)
        assert commits == [5]  # one commit for the burst


async def test_an_alarm_ends_the_linger_at_once(tmp_path: Path) -> None:
    async with pipeline(tmp_path, linger_s=30.0) as (pipe, commits):
        pipe.emit("smoke-1", "smoke.reading", READING)
        await asyncio.sleep(0.1)
        assert commits == []
        pipe.emit("smoke-1", "smoke.alarm", {"state": "raised", "alarm_id": "a1"})
        # far sooner than the 30 s linger: the reading goes with the alarm
        assert await commits.wait(5.0)
        assert commits == [2]


@pytest.mark.parametrize("linger_s", [0.0, 0.05])
async def test_an_alarm_alone_is_committed_without_waiting(tmp_path: Path,
                                                           linger_s: float) -> None:
    async with pipeline(tmp_path, linger_s=linger_s) as (pipe, commits):
        pipe.emit("gate-1", "gate.forced_open", {"state": "raised", "alarm_id": "f1"})
        assert await commits.wait(5.0)
        assert commits == [1]


async def test_one_outage_is_one_offline_and_one_online_whatever_the_reasons(
        tmp_path: Path) -> None:
    """offline → error → offline (the reason changes while the device stays down) is one
    outage: one device.offline, then one device.online whose offline_s spans all of it."""
    from edge_agent.sdk.api import DeviceState

    seen: list[tuple[str, dict[str, object]]] = []
    async with pipeline(tmp_path, 0.0) as (pipe, _commits):
        pipe.on_event = lambda e: seen.append((e.type, dict(e.data)))
        pipe.device_state("cam-1", DeviceState.ONLINE)
        pipe.device_state("cam-1", DeviceState.OFFLINE, "no answer")
        await asyncio.sleep(0.2)
        pipe.device_state("cam-1", DeviceState.ERROR, "wrong password")
        pipe.device_state("cam-1", DeviceState.OFFLINE, "no answer")
        assert pipe.devices["cam-1"].reason == "no answer"
        pipe.device_state("cam-1", DeviceState.ONLINE, "answers again")
    assert [t for t, _ in seen] == ["device.offline", "device.online"], seen
    assert seen[0][1]["reason"] == "no answer"
    offline_s = seen[1][1]["offline_s"]
    assert isinstance(offline_s, float) and offline_s >= 0.2
