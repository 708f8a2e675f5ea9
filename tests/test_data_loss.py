"""What a gateway.data_loss says about evicted events: `lost` (known never delivered) and
`unconfirmed` (sent, ack not seen). The real pipeline, uplink and outbox, a real Mosquitto
and no collector (so nothing sent is acked)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from edge_agent.config.models import GatewayConfig
from edge_agent.contract.topics import GatewayTopics
from edge_agent.outbox.thread import OutboxThread
from edge_agent.pipeline.core import Pipeline
from edge_agent.sdk.testing import TEST_HIERARCHY as H
from edge_agent.uplink.session import Uplink
from tests.aio import cancel_and_wait
from tests.harness import gateway_yaml, wait_until
from tests.peers import Mosquitto

READING = {"density_db_m": 0.01, "temperature_c": 21.5, "battery_pct": 90, "note": "x" * 300}


async def test_evicted_events_that_were_sent_are_unconfirmed_not_lost(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = GatewayConfig.model_validate(gateway_yaml(H.gateway, mosquitto.url, tmp_path / "o.db"))
    outbox = await OutboxThread.open(tmp_path / "o.db", max_bytes=8000, hierarchy=H,
                                     loss_report_interval_s=0)
    uplink = Uplink(cfg.uplink, cfg.uplink.endpoint(),
                    GatewayTopics(H.district, H.community, H.gateway), outbox,
                    client_id=H.gateway)
    pipeline = Pipeline(H, outbox, commit_linger_s=0.01, on_rows=uplink.offer)
    tasks = [asyncio.create_task(pipeline.run()), asyncio.create_task(uplink.run())]
    try:
        await wait_until(lambda: uplink.status.connected, 20, "connected")
        for _ in range(4):  # sent; no collector, so never acked
            pipeline.emit("smoke-1", "smoke.reading", READING)
        await wait_until(lambda: uplink.status.events_sent >= 4, 10, "4 events sent")
        mosquitto.stop()  # the link goes down: what follows is never sent
        await wait_until(lambda: not uplink.status.connected, 20, "link down")
        for _ in range(30):
            pipeline.emit("smoke-1", "smoke.reading", READING)
        await wait_until(lambda: pipeline.pending == 0, 10, "committed")
    finally:
        await cancel_and_wait(*tasks)
    await outbox.flush_loss_report()
    rows = await outbox.fetch(lane=1, after_seq=0, limit=1000, max_bytes=10**8)
    evicted_total = outbox.stats().evicted_total
    await outbox.close()
    reports = [json.loads(r.body)["data"] for r in rows if r.type == "gateway.data_loss"]
    assert reports and evicted_total > 4
    assert sum(d["evicted"] for d in reports) == evicted_total
    assert sum(d["unconfirmed"] for d in reports) == 4, reports
    assert sum(d["lost"] for d in reports) == evicted_total - 4
    assert all(d["lost"] + d["unconfirmed"] == d["evicted"] for d in reports)
