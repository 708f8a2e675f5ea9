"""The delivery contract end to end: real agent and collector processes, real Mosquitto.

What "every event the agent created" means: an event is created when the outbox
commits it and gives it a seq. So after recovery the store must hold seqs
1..next_seq-1 of the epoch, each once, and the outbox must be empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import pytest

from edge_agent.contract.envelope import ALARM_TYPES
from tests.harness import (
    agent,
    collector,
    collector_yaml,
    gateway_yaml,
    outbox_stats,
    query,
    sim_devices,
    wait_for,
    wait_until,
    write_yaml,
)
from tests.peers import FaultProxy, Mosquitto

pytestmark = pytest.mark.slow


def event_count(store: Path) -> int:
    rows = query(store, "SELECT COUNT(*) FROM events")
    return int(rows[0][0]) if rows else 0


def stored_seqs(store: Path, gateway: str, epoch: str) -> list[int]:
    rows = query(store, "SELECT seq FROM events WHERE gateway=? AND epoch=? ORDER BY seq",
                 gateway, epoch)
    return [r[0] for r in rows]


def drain(tmp: Path, gateway: str, broker_url: str, outbox: Path, store: Path,
          expected: int, epoch: str, timeout: float = 60) -> None:
    """Run the agent with no devices until the store holds `expected` events of `epoch`."""
    cfg = write_yaml(tmp / f"{gateway}-drain.yaml", gateway_yaml(gateway, broker_url, outbox))
    proc = agent(cfg, tmp / f"{gateway}-drain.log").start()

    def empty_outbox() -> bool:
        return any(e.get("event") == "backlog_drained" or (
            e.get("event") == "uplink_connected" and e.get("backlog") == 0)
            for e in proc.log_events())

    try:
        wait_for(lambda: len(stored_seqs(store, gateway, epoch)) >= expected, timeout,
                 f"{expected} events of epoch {epoch} in the store")
        wait_for(empty_outbox, timeout, "the agent's outbox to be acknowledged to empty")
    finally:
        assert proc.stop() == 0
    assert outbox_stats(outbox, gateway).events == 0, "the outbox still holds acknowledged events"


def assert_exactly_once(store: Path, gateway: str, epoch: str, last_seq: int) -> None:
    seqs = stored_seqs(store, gateway, epoch)
    assert seqs == list(range(1, last_seq + 1)), (
        f"holes or duplicates: {len(seqs)} rows for seqs 1..{last_seq}")
    (rows, ids), = query(store, "SELECT COUNT(*), COUNT(DISTINCT id) FROM events WHERE gateway=?",
                         gateway)
    assert rows == ids
    assert query(store, "SELECT COUNT(*) FROM quarantine") == [(0,)]


def test_chaos_broker_outage_and_kills_lose_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    seed = int(os.environ.get("CHAOS_SEED", time.time()))
    rng = random.Random(seed)
    print(f"chaos seed {seed}")
    store, outbox, gw = tmp_path / "district.db", tmp_path / "outbox.db", "gw-chaos"
    ccfg = write_yaml(tmp_path / "collector.yaml", collector_yaml(mosquitto.url, store))
    acfg = write_yaml(tmp_path / "gateway.yaml", gateway_yaml(
        gw, mosquitto.url, outbox, devices=sim_devices(6, period_s=0.02, alarm_every_s=1.0)))
    col = collector(ccfg, tmp_path / "collector.log").start()
    ag = agent(acfg, tmp_path / "agent.log").start()
    try:
        wait_for(lambda: event_count(store) > 50, 30,
                 "first events in the store")
        time.sleep(rng.uniform(0.5, 1.5))
        mosquitto.stop()                                   # broker outage begins
        time.sleep(rng.uniform(0.5, 2.0))
        ag.kill()                                          # SIGKILL 1, during the outage
        ag.start()
        time.sleep(rng.uniform(1.0, 2.0))
        mosquitto.start()                                  # outage over
        time.sleep(rng.uniform(0.2, 1.5))
        col.kill()                                         # the collector dies mid-stream
        col.start()
        time.sleep(rng.uniform(0.2, 1.5))
        ag.kill()                                          # SIGKILL 2
        ag.start()
        time.sleep(rng.uniform(1.0, 2.0))
        assert ag.stop() == 0
        stats = outbox_stats(outbox, gw)
        assert stats.evicted_total == 0
        last_seq = stats.next_seq - 1
        assert last_seq > 500, "too few events to mean anything"
        drain(tmp_path, gw, mosquitto.url, outbox, store, last_seq, stats.epoch)
    finally:
        ag.kill()
        col.stop()
    epochs = query(store, "SELECT DISTINCT epoch FROM events WHERE gateway=?", gw)
    assert epochs == [(stats.epoch,)]
    assert_exactly_once(store, gw, stats.epoch, last_seq)
    assert not list(tmp_path.glob("outbox.db.corrupt-*"))


async def test_publish_timeout_after_delivery_makes_no_duplicate(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """PUBACKs and acks are swallowed while publishes still reach the broker and the
    collector: the agent must treat its timed-out publishes as unknown, resend them
    with the same ids, and the store must end with each event once."""
    proxy = FaultProxy(mosquitto.port)
    await proxy.start()
    store, outbox, gw = tmp_path / "district.db", tmp_path / "outbox.db", "gw-dup"
    ccfg = write_yaml(tmp_path / "collector.yaml", collector_yaml(mosquitto.url, store))
    agent_url = f"mqtt://127.0.0.1:{proxy.port}"
    acfg = write_yaml(tmp_path / "gateway.yaml", gateway_yaml(
        gw, agent_url, outbox, devices=sim_devices(2, period_s=0.05),
        uplink={"publish_timeout_s": 1, "ack_timeout_s": 2}))
    col = collector(ccfg, tmp_path / "collector.log").start()
    ag = agent(acfg, tmp_path / "agent.log").start()
    try:
        def count() -> int:
            return event_count(store)

        await wait_until(lambda: count() > 20, 30, "first events in the store")
        before = count()
        proxy.blackhole_downstream = True            # the broker's answers vanish
        await wait_until(lambda: count() > before, 15,
                             "publishes reaching the collector while PUBACKs are lost")
        await asyncio.sleep(3)                       # publish timeouts, reconnect attempts
        proxy.blackhole_downstream = False
        proxy.cut()
        await asyncio.sleep(3)
        assert ag.stop() == 0
        stats = outbox_stats(outbox, gw)
        await asyncio.to_thread(drain, tmp_path, gw, agent_url, outbox, store,
                                stats.next_seq - 1, stats.epoch)
    finally:
        ag.kill()
        col.stop()
        await proxy.close()
    assert_exactly_once(store, gw, stats.epoch, stats.next_seq - 1)
    duplicates = sum(e.get("duplicates", 0) for e in col.log_events()
                     if e.get("event") == "batch_ingested")
    assert duplicates > 0, "no event was resent after delivery: the test proved nothing"


def test_outbox_full_keeps_alarms_and_reports_loss(tmp_path: Path, mosquitto: Mosquitto) -> None:
    store, outbox, gw = tmp_path / "district.db", tmp_path / "outbox.db", "gw-full"
    mosquitto.stop()                                  # no uplink while the outbox fills
    acfg = write_yaml(tmp_path / "gateway.yaml", gateway_yaml(
        gw, mosquitto.url, outbox, outbox_max_bytes="96KiB",
        devices=sim_devices(3, period_s=0.01, alarm_every_s=0.3, alarm_duration_s=0.1)))
    ag = agent(acfg, tmp_path / "agent.log").start()
    time.sleep(4)
    assert ag.stop() == 0
    stats = outbox_stats(outbox, gw)
    assert stats.evicted_total > 0, "the outbox never filled up"
    last_seq = stats.next_seq - 1
    mosquitto.start()
    col = collector(write_yaml(tmp_path / "collector.yaml", collector_yaml(mosquitto.url, store)),
                    tmp_path / "collector.log").start()
    try:
        drain(tmp_path, gw, mosquitto.url, outbox, store, last_seq - stats.evicted_total,
              stats.epoch)
    finally:
        col.stop()
    present = set(stored_seqs(store, gw, stats.epoch))
    missing = set(range(1, last_seq + 1)) - present
    assert len(missing) == stats.evicted_total
    reports = [json.loads(d) for (d,) in query(
        store, "SELECT data FROM events WHERE gateway=? AND type='gateway.data_loss'", gw)]
    assert reports, "no gateway.data_loss event reached the store"
    explained: set[int] = set()
    for rep in reports:
        assert rep["reason"] == "outbox_full"
        for first, last in rep["seq_ranges"]:
            explained |= set(range(first, last + 1))
        assert not set(rep["by_type"]) & ALARM_TYPES, f"alarms were evicted: {rep['by_type']}"
    assert explained == missing
    assert sum(r["evicted"] for r in reports) == len(missing)
    assert sum(c["count"] for r in reports for c in r["by_type"].values()) == len(missing)
    alarm_rows = query(store, "SELECT COUNT(*) FROM events WHERE gateway=? AND type IN "
                       "('smoke.alarm','water.leak','gate.forced_open')", gw)[0][0]
    assert alarm_rows > 0


def test_corrupt_outbox_is_moved_aside_and_a_new_epoch_starts(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    store, outbox, gw = tmp_path / "district.db", tmp_path / "outbox.db", "gw-corrupt"
    outbox.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    col = collector(write_yaml(tmp_path / "collector.yaml", collector_yaml(mosquitto.url, store)),
                    tmp_path / "collector.log").start()
    ag = agent(write_yaml(tmp_path / "gateway.yaml", gateway_yaml(
        gw, mosquitto.url, outbox, devices=sim_devices(1, period_s=0.1))),
        tmp_path / "agent.log").start()
    try:
        rows = wait_for(lambda: query(store, "SELECT epoch, data FROM events WHERE gateway=? AND "
                                      "type='gateway.data_loss'", gw), 30,
                        "a data_loss event about the corrupt outbox")
        assert ag.alive(), "the agent must keep running with a fresh outbox"
    finally:
        ag.stop()
        col.stop()
    data = json.loads(rows[0][1])
    assert data["reason"] == "outbox_corrupt"
    moved = list(tmp_path.glob("outbox.db.corrupt-*"))
    assert len(moved) == 1 and Path(data["quarantined_file"]).name == moved[0].name
    assert outbox_stats(outbox, gw).epoch == rows[0][0]
