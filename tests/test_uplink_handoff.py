"""Uplink invariant 6: committed rows are handed over, not read back; anything else that
changes the outbox sends a lane back to reading it. Real Mosquitto, real collector."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edge_agent.config.models import GatewayConfig
from edge_agent.contract.topics import GatewayTopics
from edge_agent.outbox.thread import OutboxThread
from edge_agent.pipeline.core import Pipeline
from edge_agent.sdk.testing import TEST_HIERARCHY as H
from edge_agent.uplink.session import Uplink
from tests.aio import cancel_and_wait
from tests.harness import collector, collector_yaml, gateway_yaml, query, wait_until, write_yaml
from tests.peers import Mosquitto

READING = {"density_db_m": 0.01, "temperature_c": 21.5, "battery_pct": 90}


class CountingOutbox(OutboxThread):
    """The real outbox thread, counting the reads the uplink makes."""

    fetches = 0

    async def fetch(self, **kw: Any) -> Any:
        self.fetches += 1
        return await super().fetch(**kw)


@contextlib.asynccontextmanager
async def forwarding(tmp: Path, broker: Mosquitto, *, max_bytes: int = 10**8
                     ) -> AsyncIterator[tuple[Pipeline, Uplink, CountingOutbox, Path]]:
    store = tmp / "district.db"
    col = collector(write_yaml(tmp / "c.yaml", collector_yaml(broker.url, store)),
                    tmp / "c.log").start()
    cfg = GatewayConfig.model_validate(gateway_yaml(H.gateway, broker.url, tmp / "o.db"))
    opened = await OutboxThread.open(tmp / "o.db", max_bytes=max_bytes, hierarchy=H,
                                     loss_report_interval_s=0)
    outbox = CountingOutbox(opened._outbox, opened._executor)
    uplink = Uplink(cfg.uplink, cfg.uplink.endpoint(),
                    GatewayTopics(H.district, H.community, H.gateway), outbox,
                    client_id=H.gateway)
    pipeline = Pipeline(H, outbox, commit_linger_s=0.01, on_rows=uplink.offer)
    tasks = [asyncio.create_task(pipeline.run()), asyncio.create_task(uplink.run())]
    try:
        yield pipeline, uplink, outbox, store
    finally:
        await cancel_and_wait(*tasks)
        await outbox.close()
        col.stop()


def stored(store: Path, type_: str = "smoke.reading") -> list[int]:
    if not store.exists():
        return []
    return [int(r[0]) for r in query(store, "SELECT seq FROM events WHERE type=? ORDER BY seq",
                                     type_)]


async def test_caught_up_lanes_send_committed_rows_without_reading_them_back(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with forwarding(tmp_path, mosquitto) as (pipeline, uplink, outbox, store):
        await wait_until(lambda: uplink.status.connected, 20, "connected")
        await wait_until(lambda: all(uplink._caught_up.values()), 10, "both lanes caught up")
        reads = outbox.fetches
        for i in range(60):
            pipeline.emit(f"smoke-{i % 3}", "smoke.reading", READING)
            if i % 20 == 19:
                pipeline.emit("smoke-0", "smoke.alarm", {"state": "raised", "alarm_id": str(i)})
            await asyncio.sleep(0.01)
        await wait_until(lambda: len(stored(store)) == 60
                         and len(stored(store, "smoke.alarm")) == 3, 30, "every event stored")
        assert outbox.fetches == reads, "a caught-up uplink read rows back"
    seqs = sorted(stored(store) + stored(store, "smoke.alarm"))
    assert seqs == list(range(seqs[0], seqs[0] + 63))


async def test_an_eviction_sends_the_lane_back_to_the_outbox_and_nothing_is_unaccounted(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with forwarding(tmp_path, mosquitto, max_bytes=6000) as (pipeline, uplink, outbox,
                                                                   store):
        await wait_until(lambda: uplink.status.connected, 20, "connected")
        await wait_until(lambda: all(uplink._caught_up.values()), 10, "both lanes caught up")
        reads = outbox.fetches
        for _ in range(40):  # a burst bigger than the cap: the outbox evicts and reports
            pipeline.emit("smoke-1", "smoke.reading", {**READING, "note": "x" * 300})
        await wait_until(lambda: outbox.stats().evicted_total > 0, 10, "an eviction")
        await wait_until(lambda: stored(store, "gateway.data_loss"), 30, "the data_loss report")
        created = pipeline.counters.committed
        evicted = outbox.stats().evicted_total
        await wait_until(lambda: len(stored(store)) + evicted >= 40, 30, "the rest stored")
        assert outbox.fetches > reads, "after an eviction the lane must read the outbox"
    assert created >= 40 and len(stored(store)) + evicted == 40


async def test_a_fall_back_during_a_fetch_keeps_the_lane_reading_the_outbox(
        tmp_path: Path) -> None:
    """Rows handed over while a fetch is under way overflow the buffer (it is dropped):
    the lane must not count as caught up when that fetch comes back empty, or those rows
    would never be sent. No broker needed: only the uplink's choice of rows."""
    from edge_agent.config.models import UplinkConfig
    from edge_agent.contract.envelope import new_event

    cfg = UplinkConfig(broker="mqtt://127.0.0.1:1", batch_max_events=2)
    outbox = await OutboxThread.open(tmp_path / "o.db", max_bytes=10**8, hierarchy=H)
    uplink = Uplink(cfg, cfg.endpoint(),
                    GatewayTopics(H.district, H.community, H.gateway), outbox,
                    client_id=H.gateway)
    real_fetch = outbox.fetch
    burst = [new_event(H, "smoke-1", "smoke.reading", READING) for _ in range(20)]

    async def fetch_while_a_burst_is_committed(**kw: Any) -> Any:
        rows = await real_fetch(**kw)
        if kw["lane"] == 0 and burst:
            appended = await outbox.append_rows(list(burst))  # after the fetch's read
            burst.clear()
            uplink.offer(appended)  # 20 rows > 8 batches of 2: the buffer is dropped
        return rows

    outbox.fetch = fetch_while_a_burst_is_committed  # type: ignore[method-assign]
    try:
        sent: list[int] = []
        for _ in range(30):
            sent += [row.seq for row in await uplink._next_rows()]
        assert sent == list(range(1, 21))
    finally:
        await outbox.close()
