"""Resend R6 in the real uplink: a backlog leaves in slow start after every connect (two
telemetry batches, doubling per round of acks in time), and alarms never wait for the
window. Real Mosquitto; the collector is a plain MQTT client here, so that the test
decides when each round of acks goes out."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

from edge_agent.config.models import GatewayConfig
from edge_agent.contract import batch_v2
from edge_agent.contract.envelope import new_event
from edge_agent.contract.topics import GatewayTopics
from edge_agent.contract.wire import Ack, to_ranges
from edge_agent.outbox.thread import OutboxThread
from edge_agent.pipeline.core import Pipeline
from edge_agent.sdk.testing import TEST_HIERARCHY as H
from edge_agent.uplink.resend import SLOW_START_BATCHES
from edge_agent.uplink.session import Uplink
from tests.aio import cancel_and_wait
from tests.harness import gateway_yaml, wait_until
from tests.peers import Mosquitto

READING = {"density_db_m": 0.01, "temperature_c": 21.5, "battery_pct": 90}
BACKLOG = 4000  # 20 batches of 200
TOPICS = GatewayTopics(H.district, H.community, H.gateway)
#: how long each round of batches is held before the test acks it (well below
#: FRESH_ACK_TIMEOUT_S, so that no batch is resent and every ack counts as in time)
ROUND_S = 0.25


class StubCollector:
    """Takes every batch, remembers each once (by its first seq: resends aside) and acks
    them only when told."""

    def __init__(self) -> None:
        self.pending: list[list[dict[str, Any]]] = []
        self.seen: set[int] = set()
        self.acked: set[int] = set()
        self.client: aiomqtt.Client | None = None

    @contextlib.asynccontextmanager
    async def connected(self, broker: Mosquitto) -> AsyncIterator[None]:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="stub-collector") as c:
            await c.subscribe(TOPICS.events, qos=1)
            self.client = c
            reader = asyncio.create_task(self._read(c))
            try:
                yield
            finally:
                await cancel_and_wait(reader)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes | bytearray)
            payload = bytes(message.payload)
            batch = (batch_v2.decode(payload, max_bytes=10**7, max_events=10**4)[1]
                     if batch_v2.is_v2(payload) else json.loads(payload))
            if batch[0]["seq"] not in self.seen:
                self.seen.add(batch[0]["seq"])
                self.pending.append(batch)

    def take(self) -> tuple[int, int, list[list[dict[str, Any]]]]:
        """The batches received since the last take: (alarm batches, others, batches)."""
        batches, self.pending = self.pending, []
        alarms = sum(1 for b in batches if b[0]["type"] == "smoke.alarm")
        return alarms, len(batches) - alarms, batches

    async def ack(self, batches: list[list[dict[str, Any]]]) -> None:
        assert self.client is not None
        seqs = [e["seq"] for b in batches for e in b]
        self.acked.update(seqs)
        if seqs:
            await self.client.publish(
                TOPICS.ack, Ack(batches[0][0]["epoch"], committed=to_ranges(seqs)).encode(),
                qos=1)


async def test_a_backlog_leaves_in_slow_start_after_each_connect_and_alarms_pass_the_window(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = GatewayConfig.model_validate(gateway_yaml(H.gateway, mosquitto.url, tmp_path / "o.db"))
    assert cfg.uplink.max_inflight_batches == 8 and cfg.uplink.batch_max_events == 200
    outbox = await OutboxThread.open(tmp_path / "o.db", max_bytes=10**8, hierarchy=H,
                                     loss_report_interval_s=0)
    await outbox.append([new_event(H, f"smoke-{i % 3}", "smoke.reading", READING)
                         for i in range(BACKLOG)])
    uplink = Uplink(cfg.uplink, cfg.uplink.endpoint(), TOPICS, outbox, client_id=H.gateway)
    pipeline = Pipeline(H, outbox, commit_linger_s=0.01, on_rows=uplink.offer)
    stub = StubCollector()
    tasks: list[asyncio.Task[None]] = []
    try:
        async with stub.connected(mosquitto):
            tasks = [asyncio.create_task(pipeline.run()), asyncio.create_task(uplink.run())]
            # 1. a new uplink: 2 batches, then 4, then 8 per round of acks in time
            rounds: list[int] = []
            while sum(rounds) < 14:
                await wait_until(lambda: stub.pending, 10, "a round of batches")
                await asyncio.sleep(ROUND_S)
                alarms, others, batches = stub.take()
                rounds.append(others)
                await stub.ack(batches)
            assert rounds == [SLOW_START_BATCHES, 4, 8], rounds
            await wait_until(lambda: len(stub.pending) == 6, 10, "the backlog's last 6 batches")
            await asyncio.sleep(ROUND_S)
            assert stub.take()[1] == 6  # not acked: they are sent again after the reconnect
        # 2. a reconnect (the broker restarts): the unacked rows leave in slow start again
        mosquitto.stop()
        mosquitto.start()
        stub.seen.clear()
        async with stub.connected(mosquitto):
            await wait_until(lambda: stub.pending, 30, "the uplink back, resending")
            await asyncio.sleep(ROUND_S)
            alarms, others, held = stub.take()
            assert (alarms, others) == (0, SLOW_START_BATCHES)  # not the 8 of before
            # 3. the window is full (2 telemetry batches unacked): an alarm still goes out
            pipeline.emit("smoke-0", "smoke.alarm", {"state": "raised", "alarm_id": "a1"})
            await wait_until(lambda: stub.pending, 5, "the alarm, past the full window")
            await asyncio.sleep(ROUND_S)
            alarms, others, batches = stub.take()
            assert (alarms, others) == (1, 0)
            # the rest drains as the rounds are acked
            await stub.ack(held + batches)
            while len(stub.acked) < BACKLOG + 1:
                await asyncio.sleep(ROUND_S)
                await stub.ack(stub.take()[2])
                # before the first ack the reconnect's batches may be resent (fresh session)
                stub.seen -= stub.acked
    finally:
        await cancel_and_wait(*tasks)
        await outbox.close()
    assert len(stub.acked) == BACKLOG + 1
