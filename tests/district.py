"""A district on one machine for the end-to-end fail-over tests: three `edge-agent run`
with simulated devices and status pages, `edge-collector run` members on one shared
subscription, a sampler of each agent's oldest unacknowledged event, and the final
check that every event is stored exactly once with no hole and every outbox emptied.

Used by tests/test_collector_failover.py and tests/test_collector_outages.py; the store
is any store URL (SQLite or PostgreSQL), read back through the store API, and for
latencies through the public `events` table (bench/_city_store.py).
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._city_store import query_events, stored_seconds
from collector.store import StoreError, StreamInfo, open_store
from edge_agent.contract.envelope import ALARM_TYPES
from edge_agent.outbox.store import OutboxStats
from tests.harness import (
    Proc,
    agent,
    collector,
    collector_yaml,
    gateway_yaml,
    outbox_stats,
    sim_devices,
    wait_for,
    write_yaml,
)

GATEWAYS = ("gw-f1", "gw-f2", "gw-f3")


@dataclass
class Ages:
    """Each agent's oldest unacknowledged event (`/api/status` outbox.oldest_age_s),
    sampled every 0.25 s on a thread between `start()` and `stop()`."""

    ports: dict[str, int]
    worst: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample_once(self) -> None:
        for gw, port in self.ports.items():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status",
                                            timeout=2) as resp:
                    age = json.load(resp)["outbox"]["oldest_age_s"] or 0.0
            except OSError:
                continue  # not listening yet
            self.last[gw] = age
            self.worst[gw] = max(self.worst.get(gw, 0.0), age)
            self.samples += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.sample_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class District:
    """Agents and collectors of one test; `close()` SIGKILLs whatever still runs."""

    tmp: Path
    broker_url: str
    store_url: str
    ack_timeout_s: float
    gateways: tuple[str, ...] = GATEWAYS
    agents: dict[str, Proc] = field(default_factory=dict)
    collectors: list[Proc] = field(default_factory=list)
    ports: dict[str, int] = field(init=False)
    outboxes: dict[str, Path] = field(init=False)

    def __post_init__(self) -> None:
        self.ports = {gw: listen_port() for gw in self.gateways}
        self.outboxes = {gw: self.tmp / f"{gw}.outbox.db" for gw in self.gateways}
        self.ages = Ages(self.ports)

    def collector(self, cid: str, *, broker_url: str | None = None,
                  **broker: Any) -> Proc:
        """An `edge-collector run` member (not started); `broker` adds to its broker section."""
        cfg = collector_yaml(broker_url or self.broker_url, self.tmp / "unused.db", cid=cid)
        cfg["store"] = self.store_url
        cfg["broker"].update(broker)
        proc = collector(write_yaml(self.tmp / f"{cid}.yaml", cfg), self.tmp / f"{cid}.log")
        self.collectors.append(proc)
        return proc

    def start_collectors(self, *, together: bool) -> None:
        """Every member; returns once each is subscribed (and its store open). `together`:
        all at once, as after a reboot; else one after the other."""
        for proc in self.collectors:
            proc.start()
            if not together:
                wait_for(lambda proc=proc: subscribed(proc), 30, f"{proc.log_path.stem} subscribed")
        for proc in self.collectors:
            wait_for(lambda proc=proc: subscribed(proc), 30, f"{proc.log_path.stem} subscribed")

    def start_agents(self) -> None:
        """Every agent, ~30 events/s each with an alarm a second; returns once the store
        holds events of every gateway."""
        for gw, box in self.outboxes.items():
            cfg = gateway_yaml(gw, self.broker_url, box,
                               uplink={"ack_timeout_s": self.ack_timeout_s},
                               devices=sim_devices(3, period_s=0.1, alarm_every_s=1.0))
            cfg["status_page"] = {"enabled": True, "listen": f"127.0.0.1:{self.ports[gw]}"}
            self.agents[gw] = agent(write_yaml(self.tmp / f"{gw}.yaml", cfg),
                                    self.tmp / f"{gw}.log").start()
        wait_for(lambda: {gw for gw, _ in streams(self.store_url) or {}} == set(self.gateways),
                 60, "events of every gateway in the store")

    def finish(self) -> dict[str, OutboxStats]:
        """Stop the agents, then drain each outbox (the agent again, without devices)
        through the collectors still running; returns each outbox's stats at the stop.
        Asserts every outbox emptied (every batch acked)."""
        self.ages.stop()
        for proc in self.agents.values():
            assert proc.stop() == 0
        stats = {gw: outbox_stats(box, gw) for gw, box in self.outboxes.items()}
        drains = {gw: agent(write_yaml(self.tmp / f"{gw}-drain.yaml", gateway_yaml(
            gw, self.broker_url, self.outboxes[gw])), self.tmp / f"{gw}-drain.log").start()
            for gw in self.gateways}
        try:
            for gw, st in stats.items():
                wait_for(lambda gw=gw, st=st: received(self.store_url, gw, st.epoch)
                         >= st.next_seq - 1, 60, f"every event of {gw} in the store")
                wait_for(lambda gw=gw: drained(drains[gw]), 60, f"{gw}'s outbox empty")
        finally:
            for proc in drains.values():
                assert proc.stop() == 0
        for gw, box in self.outboxes.items():
            assert outbox_stats(box, gw).events == 0, f"{gw}: acknowledged events still kept"
        return stats

    def close(self) -> None:
        self.ages.stop()
        for proc in [*self.agents.values(), *self.collectors]:
            proc.kill()


def assert_stored_exactly_once(url: str, stats: dict[str, OutboxStats]) -> None:
    """Each stream holds seqs 1..last (distinct seqs = highest = contiguous prefix), the
    events table one row per seq, nothing quarantined, no gap."""
    found = streams(url) or {}
    assert set(found) == {(gw, st.epoch) for gw, st in stats.items()}
    for gw, st in stats.items():
        last = st.next_seq - 1
        assert st.evicted_total == 0
        assert last > 100, "too few events to mean anything"
        info = found[(gw, st.epoch)]
        assert (info.high_seq, info.received, info.contiguous_through) == (last, last, last), gw
    store = open_store(url, create=False)
    try:
        assert store.stats().events == sum(st.next_seq - 1 for st in stats.values())
        assert store.gaps() == []
        assert store.stats().quarantined == 0
    finally:
        store.close()


def store_latency(url: str, *, alarms: bool) -> float:
    """Worst event time → first stored (received_at), over alarms or all events."""
    worst = 0.0
    for type_, t, stored in query_events(url, "SELECT type, time, received_at FROM events"):
        if type_ in ALARM_TYPES or not alarms:
            worst = max(worst, stored_seconds(stored) - stored_seconds(t))
    return worst


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


def subscribed(proc: Proc) -> bool:
    """The collector's session is up: subscribed, presence `online` published."""
    return any(e.get("event") == "broker_connected" for e in proc.log_events())


def drained(proc: Proc) -> bool:
    return any(e.get("event") == "backlog_drained" or (
        e.get("event") == "uplink_connected" and e.get("backlog") == 0)
        for e in proc.log_events())
