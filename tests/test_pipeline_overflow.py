"""The in-memory queue before the outbox, flooded: the real pipeline and a real outbox."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edge_agent.contract.envelope import schema
from edge_agent.outbox.thread import OutboxThread
from edge_agent.pipeline import core as pipeline_module
from edge_agent.pipeline.core import Pipeline
from edge_agent.sdk.testing import TEST_HIERARCHY as H
from tests.aio import cancel_and_wait
from tests.harness import wait_until

READING = {"density_db_m": 0.01, "temperature_c": 21.5, "battery_pct": 90}


async def test_a_flood_drops_telemetry_not_alarms_and_reports_what_it_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "MAX_PENDING", 1000)
    outbox = await OutboxThread.open(tmp_path / "o.db", max_bytes=10**8, hierarchy=H)
    pipe = Pipeline(H, outbox, commit_linger_s=0.01)
    task = asyncio.create_task(pipe.run())
    try:
        # A driver floods faster than the commit task can run (no await in between):
        # 5,000 readings with 25 raise/clear pairs among them.
        for i in range(5000):
            pipe.emit("smoke-1", "smoke.reading", READING)
            if i % 200 == 100:
                pipe.emit("smoke-2", "smoke.alarm", {"state": "raised", "alarm_id": f"a{i}"})
            if i % 200 == 150:
                pipe.emit("smoke-2", "smoke.alarm", {"state": "cleared", "alarm_id": f"a{i - 50}"})
        await wait_until(lambda: pipe.pending == 0 and outbox.stats().next_seq > 1000, 30,
                         "the queue committed")
    finally:
        await cancel_and_wait(task)
    rows = await outbox.fetch(lane=1, after_seq=0, limit=1000, max_bytes=10**8)
    readings = await outbox.fetch(lane=0, after_seq=0, limit=5000, max_bytes=10**9)
    await outbox.close()
    alarms = [json.loads(r.body) for r in rows if r.type == "smoke.alarm"]
    assert [a["data"]["state"] for a in alarms] == ["raised", "cleared"] * 25, "alarms dropped"
    losses = [json.loads(r.body) for r in rows if r.type == "gateway.data_loss"]
    assert len(losses) == 1, "the drops were not reported"
    data = losses[0]["data"]
    assert data["reason"] == "queue_full"
    assert data["evicted"] == data["lost"] == pipe.counters.dropped == 5000 - len(readings)
    assert data["by_type"]["smoke.reading"]["count"] == pipe.counters.dropped
    assert pipe.counters.dropped >= 3000
    import fastjsonschema

    fastjsonschema.compile(schema())(losses[0])  # the collector accepts it
