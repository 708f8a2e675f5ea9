"""The collector's flow under many small payloads (real Mosquitto, both stores): group
commit, acks only after the commit, a bounded inbox that sheds a flood the edge then
resends, and a store failure that acks nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt import ProtocolVersion

from collector.inbox import Bounds
from collector.store import IngestResult, Payload, Store, open_store
from edge_agent.contract.wire import Ack
from tests.peers import Mosquitto
from tests.test_collector_mqtt import Broker, SlowStore, db_rows, make_collector, running
from tests.test_collector_store import query
from tests.test_collector_support import batch, new_epoch, reading, topics

GATEWAYS = [f"gw-{i:02d}" for i in range(20)]


class FailingStore:
    """A real store whose transactions fail (as on a full disk) while `failing` is set."""

    def __init__(self, inner: Store, until_failed: int) -> None:
        self.inner = inner
        self.failing = True
        self.failed = 0
        #: set once `until_failed` payloads have failed
        self.enough = threading.Event()
        self._until = until_failed

    def ingest_many(self, items: Sequence[Payload]) -> list[IngestResult]:
        if self.failing:
            self.failed += len(items)
            if self.failed >= self._until:
                self.enough.set()
            raise sqlite3.OperationalError("database or disk is full")
        return self.inner.ingest_many(items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def fleet(port: int, payloads: dict[tuple[str, int], bytes], url: str, *,
                resend_after_s: float, deadline_s: float = 40.0) -> dict[tuple[str, int], int]:
    """Gateways (one connection) publish every payload at once and resend the unacked ones
    every `resend_after_s`, as the edge does; returns how often each was sent. On each ack
    the acked rows must already be committed (read by another connection)."""
    unacked = dict(payloads)
    sends: dict[tuple[str, int], int] = dict.fromkeys(payloads, 0)
    async with aiomqtt.Client("127.0.0.1", port, identifier="fleet",
                              protocol=ProtocolVersion.V5) as client:
        client.pending_calls_threshold = 10_000
        await client.subscribe("cd/v1/+/+/+/ack", qos=1)

        async def send_unacked() -> None:
            for key, payload in list(unacked.items()):
                sends[key] += 1
                await client.publish(topics(key[0]).events, payload, qos=1)

        async def resend() -> None:
            while True:
                await asyncio.sleep(resend_after_s)
                await send_unacked()

        await send_unacked()
        resender = asyncio.create_task(resend())
        try:
            async with asyncio.timeout(deadline_s):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    gw = message.topic.value.split("/")[4]
                    ack = Ack.decode(message.payload)
                    stored = {s for (s,) in query(url, "SELECT seq FROM events WHERE gateway "
                                                  f"= '{gw}' AND epoch = '{ack.epoch}'")}
                    assert ack.seqs() <= stored, "acked before the commit"
                    for seq in ack.seqs():
                        unacked.pop((gw, seq), None)
                    if not unacked:
                        break
        finally:
            resender.cancel()
    return sends


def one_event_each(n: int) -> dict[tuple[str, int], bytes]:
    epochs = {gw: new_epoch() for gw in GATEWAYS}
    out = {}
    for i in range(n):
        gw, seq = GATEWAYS[i % len(GATEWAYS)], i // len(GATEWAYS) + 1
        out[(gw, seq)] = batch([reading(gw, epochs[gw], seq)])
    return out


async def test_many_small_payloads_are_committed_in_groups_and_all_acked(
        mosquitto: Mosquitto, store_url: str) -> None:
    url = store_url
    store = open_store(url)
    broker = Broker("mosquitto", mosquitto.port, ProtocolVersion.V5, {})
    collector = make_collector(broker, SlowStore(store, 0.05))
    payloads = one_event_each(400)
    async with running(collector):
        sends = await fleet(mosquitto.port, payloads, url, resend_after_s=60)
    store.close()
    assert set(sends.values()) == {1}  # no resend needed
    assert query(url, "SELECT COUNT(*), COUNT(DISTINCT id) FROM events") == [(400, 400)]
    c = collector.counters
    assert (c.messages, c.inserted, c.acks_sent, c.shed) == (400, 400, 400, 0)
    assert c.transactions < 100, c.transactions  # ~50 ms per commit: groups, not one by one


async def test_a_flood_beyond_the_inbox_is_shed_then_resent_and_stored_once(
        mosquitto: Mosquitto, store_url: str) -> None:
    url = store_url
    store = open_store(url)
    broker = Broker("mosquitto", mosquitto.port, ProtocolVersion.V5, {})
    bounds = Bounds(queued_payloads=8, group_payloads=4)
    collector = make_collector(broker, SlowStore(store, 0.02), bounds=bounds)
    payloads = one_event_each(80)
    async with running(collector):
        sends = await fleet(mosquitto.port, payloads, url, resend_after_s=0.3)
    store.close()
    c = collector.counters
    assert c.shed > 0 and max(sends.values()) > 1  # the flood did not fit: resent
    assert collector.inbox_high_water <= 8  # memory bounded by the inbox, whatever came
    assert query(url, "SELECT COUNT(*), COUNT(DISTINCT id) FROM events") == [(80, 80)]
    assert c.inserted == 80 and c.inserted + c.duplicates == c.messages


async def test_a_failed_transaction_acks_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'district.db'}"
    failing = FailingStore(open_store(url), until_failed=40)
    broker = Broker("mosquitto", mosquitto.port, ProtocolVersion.V5, {})
    collector = make_collector(broker, failing)
    payloads = one_event_each(40)
    acked = asyncio.Event()

    async def heal() -> None:
        assert await asyncio.to_thread(failing.enough.wait, 20)
        assert collector.counters.acks_sent == 0  # every payload failed: not one ack
        failing.failing = False
        acked.set()

    async with running(collector):
        healer = asyncio.create_task(heal())
        sends = await fleet(mosquitto.port, payloads, url, resend_after_s=1.0)
        await healer
    failing.inner.close()
    assert acked.is_set() and min(sends.values()) >= 2  # stored only once resent
    assert db_rows(url, "SELECT COUNT(*) FROM events") == [(40,)]
