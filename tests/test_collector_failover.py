"""Two collectors on one MQTT v5 shared subscription, one SIGKILLed at a time: fail-over.

Real processes (`edge-collector run` ×2, `edge-agent run` ×3 with simulated devices) on
a real Mosquitto. A member that dies must cost each gateway at most one ack timeout:
while it is dead, sampling every agent's outbox, no event waits unacknowledged longer
than 2 × `ack_timeout_s`; afterwards every event is stored exactly once, with no hole
in any (gateway, epoch) series, and every outbox empties (every batch acked).

The store is named by the `store_url` fixture (SQLite here) so the test can run
against another backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from collector.store import StoreError, StreamInfo, open_store
from edge_agent.contract.envelope import ALARM_TYPES, Hierarchy
from edge_agent.outbox.store import Outbox, OutboxStats
from tests.harness import (
    COMMUNITY,
    DISTRICT,
    STREET,
    Proc,
    agent,
    collector,
    collector_yaml,
    gateway_yaml,
    query,
    sim_devices,
    wait_for,
    write_yaml,
)
from tests.peers import Mosquitto

pytestmark = pytest.mark.slow

ACK_TIMEOUT_S = 2.0
#: How long each collector stays dead: 20 s in the suite; FAILOVER_DEAD_S=120 for the
#: full two minutes.
DEAD_S = float(os.environ.get("FAILOVER_DEAD_S", "20"))
GATEWAYS = ("gw-f1", "gw-f2", "gw-f3")


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'district.db'}"


@dataclass
class Ages:
    """Each agent's oldest unacknowledged event (`/api/status` outbox.oldest_age_s), sampled."""

    ports: dict[str, int]
    worst: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample_once(self) -> None:
        for gw, port in self.ports.items():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status",
                                            timeout=2) as resp:
                    age = json.load(resp)["outbox"]["oldest_age_s"]
            except OSError:
                continue  # not listening yet
            self.worst[gw] = max(self.worst.get(gw, 0.0), age or 0.0)
            self.samples += 1

    def run(self) -> None:
        while not self._stop.wait(0.25):
            self.sample_once()

    def stop(self) -> None:
        self._stop.set()


def store_latency(db: Path, *, alarms: bool) -> float:
    """Worst event time → first stored (received_at), over alarms or all events (read
    from the SQLite file)."""
    worst = 0.0
    for type_, t, received in query(db, "SELECT type, time, received_at FROM events"):
        if type_ in ALARM_TYPES or not alarms:
            worst = max(worst, parse_time(received) - parse_time(t))
    return worst


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def outbox_stats(path: Path, gateway: str) -> OutboxStats:
    hierarchy = Hierarchy(district=DISTRICT, street=STREET, community=COMMUNITY, gateway=gateway)
    box = Outbox.open(path, max_bytes=1 << 30, hierarchy=hierarchy)
    try:
        return box.stats()
    finally:
        box.close()


def test_a_sigkilled_collector_costs_at_most_one_ack_timeout(
        tmp_path: Path, mosquitto: Mosquitto, store_url: str) -> None:
    db = Path(store_url.removeprefix("sqlite:///"))
    collectors = [collector(write_yaml(tmp_path / f"{cid}.yaml",
                                       {**collector_yaml(mosquitto.url, db, cid=cid),
                                        "store": store_url}),
                            tmp_path / f"{cid}.log") for cid in ("c1", "c2")]
    outboxes = {gw: tmp_path / f"{gw}.outbox.db" for gw in GATEWAYS}
    agents: dict[str, Proc] = {}
    ports = {gw: listen_port() for gw in GATEWAYS}
    for gw, box in outboxes.items():
        cfg = gateway_yaml(gw, mosquitto.url, box, uplink={"ack_timeout_s": ACK_TIMEOUT_S},
                           devices=sim_devices(3, period_s=0.1, alarm_every_s=1.0))
        cfg["status_page"] = {"enabled": True, "listen": f"127.0.0.1:{ports[gw]}"}
        agents[gw] = agent(write_yaml(tmp_path / f"{gw}.yaml", cfg), tmp_path / f"{gw}.log")
    ages = Ages(ports)
    sampler = threading.Thread(target=ages.run, daemon=True)
    c1, c2 = collectors
    try:
        c1.start()
        wait_for(lambda: streams(store_url) is not None, 30, "the store")
        c2.start()
        time.sleep(2)  # both subscribed
        for proc in agents.values():
            proc.start()
        wait_for(lambda: {gw for gw, _ in streams(store_url) or {}} == set(GATEWAYS), 30,
                 "events of every gateway in the store")
        sampler.start()
        time.sleep(3)
        c1.kill()                        # SIGKILL mid-run, dead for DEAD_S
        time.sleep(DEAD_S)
        c1.start()
        time.sleep(5)
        c2.kill()                        # then the other one
        time.sleep(DEAD_S)
        c2.start()
        time.sleep(5)
        ages.stop()
        sampler.join()
        for proc in agents.values():
            assert proc.stop() == 0
        stats = {gw: outbox_stats(box, gw) for gw, box in outboxes.items()}
        drains = {gw: agent(write_yaml(tmp_path / f"{gw}-drain.yaml", gateway_yaml(
            gw, mosquitto.url, outboxes[gw])), tmp_path / f"{gw}-drain.log").start()
            for gw in GATEWAYS}
        try:
            for gw, st in stats.items():
                wait_for(lambda gw=gw, st=st: received(store_url, gw, st.epoch) >= st.next_seq - 1,
                         60, f"every event of {gw} in the store")
                wait_for(lambda gw=gw: drained(drains[gw]), 60, f"{gw}'s outbox empty")
        finally:
            for proc in drains.values():
                assert proc.stop() == 0
        for gw, box in outboxes.items():
            assert outbox_stats(box, gw).events == 0, f"{gw}: acknowledged events still kept"
    finally:
        ages.stop()
        for proc in [*agents.values(), *collectors]:
            proc.kill()
    alarm_latency = store_latency(db, alarms=True)  # SQLite: read from the file
    latency = store_latency(db, alarms=False)
    print(f"oldest unacked event age (s), worst per gateway: {ages.worst}; samples: "
          f"{ages.samples}; event time -> stored, worst: alarms {alarm_latency:.2f} s, "
          f"all {latency:.2f} s")
    # Exactly once, no hole: each stream holds seqs 1..last (distinct seqs = highest =
    # contiguous prefix), and the events table holds one row per seq (ids are unique).
    found = streams(store_url) or {}
    assert set(found) == {(gw, st.epoch) for gw, st in stats.items()}
    for gw, st in stats.items():
        last = st.next_seq - 1
        assert st.evicted_total == 0
        assert last > 100, "too few events to mean anything"
        info = found[(gw, st.epoch)]
        assert (info.high_seq, info.received, info.contiguous_through) == (last, last, last), gw
    store = open_store(store_url, create=False)
    try:
        assert store.stats().events == sum(st.next_seq - 1 for st in stats.values())
        assert store.gaps() == []
        assert store.stats().quarantined == 0
    finally:
        store.close()
    assert ages.samples > 100
    assert max(ages.worst.values()) <= 2 * ACK_TIMEOUT_S, ages.worst
    assert alarm_latency <= ACK_TIMEOUT_S  # alarms sooner


def listen_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999): one from inside it may be
    taken by a client's outgoing connection before the agent listens on it."""
    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port


def streams(url: str) -> dict[tuple[str, str], StreamInfo] | None:
    """The store's streams by (gateway, epoch), through the store API; None: no store yet."""
    try:
        store = open_store(url, create=False)
    except StoreError:
        return None
    try:
        return {(s.gateway, s.epoch): s for s in store.stats().streams}
    finally:
        store.close()


def received(url: str, gateway: str, epoch: str) -> int:
    info = (streams(url) or {}).get((gateway, epoch))
    return info.received if info is not None else 0


def drained(proc: Proc) -> bool:
    return any(e.get("event") == "backlog_drained" or (
        e.get("event") == "uplink_connected" and e.get("backlog") == 0)
        for e in proc.log_events())
