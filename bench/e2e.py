"""End-to-end figures over a real Mosquitto: backlog drain, steady-state latency, agent memory.

    .venv/bin/python bench/e2e.py [--backlog 100000] [--rate 500] [--seconds 30]

1. drain: an outbox pre-filled with `--backlog` events; an agent with no devices starts
   and we time until the collector's SQLite store holds them all (events/s).
2. latency: an agent with simulated devices producing `--rate` events/s for `--seconds`;
   latency = the collector's `received_at` (set in the committing transaction) minus the
   event's `time` (minted at creation), over every event: p50/p90/p99/max in ms.
3. memory: the agent's peak resident memory (psutil, sampled every 0.2 s) in phase 2.
Agent, collector and broker are separate processes on this machine, as in production
(except that they share its two cores).
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, rate, summary
from edge_agent.contract.envelope import Hierarchy, new_event
from edge_agent.contract.logs import configure
from edge_agent.outbox import Outbox
from tests.harness import (
    COMMUNITY,
    DISTRICT,
    STREET,
    agent,
    collector,
    collector_yaml,
    gateway_yaml,
    write_yaml,
)
from tests.peers import Mosquitto


def count(store: Path, gateway: str) -> int:
    if not store.exists():
        return 0
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE gateway=?",
                                (gateway,)).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def prefill(path: Path, gateway: str, n: int) -> None:
    h = Hierarchy(district=DISTRICT, street=STREET, community=COMMUNITY, gateway=gateway)
    rng = random.Random(1)
    box = Outbox.open(path, max_bytes=1 << 30, hierarchy=h)
    t0 = time.time() - n / 100
    try:
        for start in range(0, n, 1000):
            box.append([new_event(h, f"smoke-{i % 50:02d}", "smoke.reading",
                                  {"density_db_m": round(rng.uniform(0, 0.05), 3),
                                   "temperature_c": round(rng.gauss(24, 1), 1),
                                   "battery_pct": 90.0}, observed_at=t0 + i / 100)
                        for i in range(start, min(n, start + 1000))])
    finally:
        box.close()


def bench_drain(tmp: Path, broker: Mosquitto, n: int) -> dict[str, float]:
    gw, outbox, store = "gw-drain", tmp / "drain-outbox.db", tmp / "drain-district.db"
    prefill(outbox, gw, n)
    col = collector(write_yaml(tmp / "drain-collector.yaml", collector_yaml(broker.url, store)),
                    tmp / "drain-collector.log").start()
    time.sleep(1.0)
    ag = agent(write_yaml(tmp / "drain-gw.yaml", gateway_yaml(gw, broker.url, outbox)),
               tmp / "drain-agent.log")
    t0 = time.perf_counter()
    ag.start()
    last, deadline = 0, time.monotonic() + 600
    while last < n and time.monotonic() < deadline:
        time.sleep(0.25)
        now = count(store, gw)
        emit({"bench": "drain", "t_s": round(time.perf_counter() - t0, 2), "stored": now})
        last = now
    seconds = time.perf_counter() - t0
    ag.stop()
    col.stop()
    return {"drain_events": last, "drain_s": round(seconds, 2),
            "drain_events_per_s": rate(last, seconds)}


def bench_latency(tmp: Path, broker: Mosquitto, per_s: int, seconds: float) -> dict[str, float]:
    gw, outbox, store = "gw-lat", tmp / "lat-outbox.db", tmp / "lat-district.db"
    devices = 10
    period = devices / per_s  # each smoke device emits one reading per period
    col = collector(write_yaml(tmp / "lat-collector.yaml", collector_yaml(broker.url, store)),
                    tmp / "lat-collector.log").start()
    time.sleep(1.0)
    cfg = gateway_yaml(gw, broker.url, outbox, devices=[
        {"id": f"smoke-{i:02d}", "driver": "simulated", "kind": "smoke", "period_s": period,
         "alarm_every_s": 60.0, "alarm_duration_s": 5.0} for i in range(devices)])
    ag = agent(write_yaml(tmp / "lat-gw.yaml", cfg), tmp / "lat-agent.log").start()
    assert ag.proc is not None
    proc = psutil.Process(ag.proc.pid)
    peak_rss, cpu0 = 0, None
    t_end = time.monotonic() + seconds + 2
    time.sleep(2.0)  # warm-up (imports, first connection)
    cpu0 = proc.cpu_times()
    t0 = time.monotonic()
    while time.monotonic() < t_end:
        peak_rss = max(peak_rss, proc.memory_info().rss)
        time.sleep(0.2)
    cpu1 = proc.cpu_times()
    wall = time.monotonic() - t0
    time.sleep(2.0)
    ag.stop()
    col.stop()
    conn = sqlite3.connect(store)
    rows = conn.execute("SELECT time, received_at FROM events WHERE gateway=?", (gw,)).fetchall()
    conn.close()
    lat = sorted((datetime.fromisoformat(r.replace("Z", "+00:00"))
                  - datetime.fromisoformat(t.replace("Z", "+00:00"))).total_seconds() * 1000
                 for t, r in rows)
    q = statistics.quantiles(lat, n=100)
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
    return {"latency_events": len(lat), "latency_rate_per_s": rate(len(lat), seconds + 4),
            "latency_p50_ms": round(q[49], 1), "latency_p90_ms": round(q[89], 1),
            "latency_p99_ms": round(q[98], 1), "latency_max_ms": round(lat[-1], 1),
            "agent_peak_rss_mib": round(peak_rss / 2**20, 1),
            "agent_cpu_share_of_one_core": round(cpu, 3)}


@click.command(help=__doc__)
@click.option("--backlog", type=int, default=100_000)
@click.option("--rate", type=int, default=500)
@click.option("--seconds", type=float, default=30)
def main(**options: Any) -> None:
    args = SimpleNamespace(**options)
    configure("warning")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Mosquitto(tmp / "mosquitto")
        broker.start()
        try:
            result = bench_drain(tmp, broker, args.backlog)
            emit({"bench": "drain", **result})
            lat = bench_latency(tmp, broker, args.rate, args.seconds)
            emit({"bench": "latency", **lat})
        finally:
            broker.stop()
    summary({**result, **lat})


if __name__ == "__main__":
    main()
