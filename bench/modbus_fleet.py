"""A Modbus TCP fleet end to end: agent CPU, memory, poll-to-store latency, lost polls.

    .venv/bin/python bench/modbus_fleet.py [--devices 100] [--seconds 60]
                                          [--outage-s 30] [--outage-devices 20]

Processes, as in production (sharing this machine's cores): one `edge-agent simulate`
serving one Modbus TCP port per device (127.0.0.1), a real Mosquitto
(tests.peers.Mosquitto), `edge-collector run` with a SQLite store, and `edge-agent run`
polling every device at 1 s with the `modbus` driver.

The map is the planner's reference map (tests/data/modbus/scattered-20.yaml: 20 points
in five runs over holding registers 0-54, one request per poll) plus a reading rule
whose heartbeat (0.5 s) is shorter than the poll period, so every poll forwards one
`smoke.reading` through the durable outbox: the event count per device is the poll
count. The profile is written to a temp dir as `bench-scattered-20`: profile.py has no
search-path setting, so the agent is started through a two-line launcher that appends
that dir to `drivers.modbus.profile.DEFAULT_SEARCH_PATH` and then runs the real CLI
(`edge-agent run`), and the simulator is given the profile's path.

1. fleet (`--devices`, `--seconds`): agent CPU as a share of one core (psutil
   cpu_times over the steady window, after a warm-up), peak RSS (sampled every 0.2 s
   from the start), latency = the store's `received_at` minus the event's `time`
   (observed at the poll), an upper bound for poll-to-broker: p50/p90/p99/max, and
   polls: per device, every 1 s slot from its first poll to the end must hold one
   reading (lost = empty slots), plus how late each device's first poll came after
   the agent started (`agent_started` in its log).
2. outage (`--outage-s`, `--outage-devices`): the same with 20 devices, Mosquitto
   stopped for 30 s then started on the same port. Readings lost = holes in the
   stored (epoch, seq) series plus empty poll slots; drain = the last `received_at`
   of the events observed before the broker came back, minus the time it came back.
   The agent and the collector run with the production defaults (reconnect back-off
   0.2 s doubling to 1 s, ack timeout 5 s), so back-off shows if it dominates recovery.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench._common import emit, summary  # noqa: E402
from edge_agent.config.models import BackoffConfig  # noqa: E402
from tests.harness import (  # noqa: E402
    Proc,
    collector,
    collector_yaml,
    gateway_yaml,
    query,
    wait_for,
    write_yaml,
)
from tests.peers import Mosquitto, free_ports  # noqa: E402

PROFILE = "bench-scattered-20"
SCATTERED = ROOT / "tests" / "data" / "modbus" / "scattered-20.yaml"
PERIOD_S = 1.0
READING = "smoke.reading"
#: The uplink as shipped (UplinkConfig defaults), not the tests' fast reconnects.
PRODUCTION_UPLINK = {"ack_timeout_s": 5.0, "publish_timeout_s": 5.0, "keepalive_s": 30,
                     "reconnect": BackoffConfig().model_dump()}
#: `edge-agent run` with the bench's profile dir on the profile search path.
LAUNCHER = ("import sys; from pathlib import Path; import drivers.modbus.profile as p; "
            "p.DEFAULT_SEARCH_PATH = (*p.DEFAULT_SEARCH_PATH, Path(sys.argv.pop(1))); "
            "from edge_agent.cli import main; main(prog_name='edge-agent')")


def write_profile(folder: Path, heartbeat_s: float = 0.5) -> Path:
    text = SCATTERED.read_text("utf-8")
    text = text.replace("name: scattered-20", f"name: {PROFILE}")
    text += f"""
events:
  - type: {READING}            # heartbeat < poll period: every poll forwards one reading
    fields: {{density_db_m: b1, temperature_c: a1, battery_pct: d2}}
    heartbeat_s: {heartbeat_s:g}
"""
    path = folder / f"{PROFILE}.yaml"
    path.write_text(text, "utf-8")
    return path


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"n": len(values)}
    q = statistics.quantiles(values, n=100)
    return {"n": len(values), "p50_ms": round(q[49], 1), "p90_ms": round(q[89], 1),
            "p99_ms": round(q[98], 1), "max_ms": round(max(values), 1)}


@dataclass
class Rig:
    """Broker, collector, simulator and agent for one phase, in a temp dir."""

    tmp: Path
    name: str
    devices: int
    profile_dir: Path
    broker: Mosquitto

    commit_linger_ms: int | None = None
    reconnect_max_s: float | None = None  # agent's and collector's back-off cap
    status_page: bool = False  # the agent's LAN page on (127.0.0.1, a free port)

    def __post_init__(self) -> None:
        self.gateway = f"gw-{self.name}"
        self.store = self.tmp / f"{self.name}-district.db"
        self.base = free_ports(self.devices)
        self.sim: Proc | None = None
        self.col: Proc | None = None
        self.agent: Proc | None = None
        self.agent_started = 0.0

    def start(self) -> None:
        col = collector_yaml(self.broker.url, self.store)
        uplink: dict[str, Any] = dict(PRODUCTION_UPLINK)
        if self.reconnect_max_s is not None:
            backoff = {"initial_s": min(0.2, self.reconnect_max_s),
                       "max_s": self.reconnect_max_s}
            col["reconnect"] = backoff
            uplink["reconnect"] = backoff
        col_cfg = write_yaml(self.tmp / f"{self.name}-collector.yaml", col)
        self.col = collector(col_cfg, self.tmp / f"{self.name}-collector.log").start()
        last = self.base + self.devices - 1
        sim_log = self.tmp / f"{self.name}-simulator.log"
        self.sim = Proc([sys.executable, "-m", "edge_agent", "simulate", "--profile",
                         str(self.profile_dir / f"{PROFILE}.yaml"), "--tcp",
                         f"127.0.0.1:{self.base}-{last}", "--units", "1"], sim_log).start()
        wait_for(lambda: b'"simulator_ready"' in sim_log.read_bytes(), 60, "the simulator")
        wait_for(lambda: b"broker_connected" in (self.tmp / f"{self.name}-collector.log")
                 .read_bytes(), 30, "the collector")
        devices = [{"id": f"dev-{i:03d}", "driver": "modbus", "profile": PROFILE,
                    "tcp": {"host": "127.0.0.1", "port": self.base + i}, "unit_id": 1,
                    "period_s": PERIOD_S} for i in range(self.devices)]
        cfg = gateway_yaml(self.gateway, self.broker.url, self.tmp / f"{self.name}-outbox.db",
                           devices=devices, uplink=uplink)
        if self.commit_linger_ms is not None:
            cfg["outbox"]["commit_linger_ms"] = self.commit_linger_ms
        if self.status_page:
            cfg["status_page"] = {"enabled": True, "listen": f"127.0.0.1:{free_ports(1)}"}
        cfg_path = write_yaml(self.tmp / f"{self.name}-gw.yaml", cfg)
        self.agent = Proc([sys.executable, "-c", LAUNCHER, str(self.profile_dir), "run",
                           "--config", str(cfg_path)], self.tmp / f"{self.name}-agent.log")
        self.agent_started = time.time()
        self.agent.start()

    def agent_process(self) -> psutil.Process:
        assert self.agent is not None and self.agent.proc is not None
        return psutil.Process(self.agent.proc.pid)

    def stop(self) -> dict[str, float]:
        """SIGTERM agent, collector, simulator (in that order); seconds each took to exit.

        A process that ignores SIGTERM for 15 s is killed and reported (-1), never left
        running."""
        took: dict[str, float] = {}
        for name, proc in (("agent", self.agent), ("collector", self.col),
                           ("simulator", self.sim)):
            if proc is None:
                continue
            started = time.monotonic()
            try:
                proc.stop()
                took[name] = round(time.monotonic() - started, 2)
            except AssertionError as exc:  # ignored SIGTERM: Proc.stop killed it
                emit({"bench": "modbus_fleet", "error": str(exc)})
                took[name] = -1.0
        self.agent = self.col = self.sim = None
        return took

    def logged(self, who: str, event: str) -> list[dict[str, Any]]:
        out = []
        path = self.tmp / f"{self.name}-{who}.log"
        for line in path.read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def readings(self) -> list[tuple[str, float, float]]:
        rows = query(self.store, "SELECT device, time, received_at FROM events "
                                 "WHERE gateway=? AND type=?", self.gateway, READING)
        return [(d, ts(t), ts(r)) for d, t, r in rows]

    def stored(self) -> int:
        rows = query(self.store, "SELECT COUNT(*) FROM events WHERE gateway=?", self.gateway)
        return int(rows[0][0]) if rows else 0


def poll_slots(readings: list[tuple[str, float, float]], devices: int, started: float,
               until: float) -> dict[str, Any]:
    """Lost polls: empty 1 s slots between each device's first poll and `until`."""
    by_device: dict[str, list[float]] = defaultdict(list)
    for device, observed, _ in readings:
        if observed <= until:
            by_device[device].append(observed)
    lost = 0
    first_delay = []
    for times in by_device.values():
        times.sort()
        first_delay.append(times[0] - started)
        expected = int((until - times[0]) / PERIOD_S) + 1
        lost += max(0, expected - len(times))
    silent = devices - len(by_device)
    return {"devices_polled": len(by_device), "devices_never_polled": silent,
            "polls_stored": sum(len(t) for t in by_device.values()), "polls_lost": lost,
            "first_poll_after_start_s": {
                "min": round(min(first_delay), 2) if first_delay else None,
                "max": round(max(first_delay), 2) if first_delay else None}}


def fleet(tmp: Path, broker: Mosquitto, profile_dir: Path, devices: int, seconds: float,
          warmup: float, linger_ms: int | None = None, status_page: bool = False
          ) -> dict[str, Any]:
    rig = Rig(tmp, f"fleet{devices}", devices, profile_dir, broker, linger_ms,
              status_page=status_page)
    try:
        return _fleet(rig, devices, seconds, warmup, linger_ms)
    finally:
        rig.stop()


def _fleet(rig: Rig, devices: int, seconds: float, warmup: float, linger_ms: int | None
           ) -> dict[str, Any]:
    tmp = rig.tmp
    rig.start()
    proc = rig.agent_process()
    peak_rss = 0
    t_cpu0 = rig.agent_started + warmup
    cpu0 = None
    window_start = window_end = 0.0
    end = t_cpu0 + seconds
    sim_proc = psutil.Process(rig.sim.proc.pid) if rig.sim and rig.sim.proc else None
    sim_cpu0 = None
    while time.time() < end:
        peak_rss = max(peak_rss, proc.memory_info().rss)
        if cpu0 is None and time.time() >= t_cpu0:
            cpu0, window_start = proc.cpu_times(), time.time()
            sim_cpu0 = sim_proc.cpu_times() if sim_proc else None
        time.sleep(0.2)
    cpu1, window_end = proc.cpu_times(), time.time()
    sim_cpu1 = sim_proc.cpu_times() if sim_proc else None
    assert cpu0 is not None
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (window_end - window_start)
    sim_cpu = None
    if sim_cpu0 is not None and sim_cpu1 is not None:
        sim_cpu = round((sim_cpu1.user + sim_cpu1.system - sim_cpu0.user - sim_cpu0.system)
                        / (window_end - window_start), 3)
    time.sleep(3)  # let the last polls of the window reach the store
    stop_s = rig.stop()
    started = [ts(e["timestamp"]) for e in rig.logged("agent", "agent_started")]
    agent_up = started[0] if started else rig.agent_started
    readings = rig.readings()
    steady = [(r - t) * 1000 for _, t, r in readings if window_start <= t <= window_end]
    everything = [(r - t) * 1000 for _, t, r in readings if t <= window_end]
    result = {
        "devices": devices, "period_s": PERIOD_S, "window_s": round(window_end - window_start, 1),
        "commit_linger_ms": linger_ms if linger_ms is not None else "default",
        "status_page": rig.status_page,
        "agent_cpu_share_of_one_core": round(cpu, 4),
        "agent_peak_rss_mib": round(peak_rss / 2**20, 1),
        "simulator_cpu_share_of_one_core": sim_cpu,
        "latency_steady": quantiles(steady),
        "latency_from_start": quantiles(everything),
        "polls": poll_slots(readings, devices, agent_up, window_end),
        "agent_start_to_agent_started_s": round(agent_up - rig.agent_started, 2),
        "stop_s": stop_s,
        "device_offline_events": rig.logged("agent", "modbus_device_offline").__len__(),
        "agent_log_warnings": sum(1 for line in (tmp / f"{rig.name}-agent.log").read_text(
            errors="replace").splitlines() if '"level": "warning"' in line
            or '"level": "error"' in line),
    }
    emit({"bench": "modbus_fleet", "phase": "fleet", **result})
    return result


def outage(tmp: Path, broker: Mosquitto, profile_dir: Path, devices: int, outage_s: float,
           warmup: float, reconnect_max_s: float | None = None) -> dict[str, Any]:
    rig = Rig(tmp, f"outage{devices}", devices, profile_dir, broker,
              reconnect_max_s=reconnect_max_s)
    try:
        return _outage(rig, broker, devices, outage_s, warmup, reconnect_max_s)
    finally:
        rig.stop()


def _outage(rig: Rig, broker: Mosquitto, devices: int, outage_s: float, warmup: float,
            reconnect_max_s: float | None) -> dict[str, Any]:
    rig.start()
    time.sleep(warmup)
    down = time.time()
    broker.stop()
    emit({"bench": "modbus_fleet", "phase": "outage", "broker": "stopped",
          "stored_so_far": rig.stored()})
    time.sleep(outage_s)
    back = time.time()
    broker.start()
    emit({"bench": "modbus_fleet", "phase": "outage", "broker": "started"})

    def drained() -> bool:
        """No hole in the stored seqs, and the newest was observed after the return."""
        rows = query(rig.store, "SELECT COUNT(*), MAX(seq), MAX(time) FROM events "
                                "WHERE gateway=?", rig.gateway)
        if not rows or not rows[0][0]:
            return False
        stored, top, newest = rows[0]
        return bool(stored == top and ts(newest) >= back)

    try:
        wait_for(drained, 120, "the backlog to drain", every=0.1)
    except AssertionError as exc:
        emit({"bench": "modbus_fleet", "phase": "outage", "error": str(exc)})
    time.sleep(5)  # a few live polls after the drain
    until = time.time()
    time.sleep(2)
    stop_s = rig.stop()
    readings = rig.readings()
    before_back = [(t, r) for _, t, r in readings if t < back]
    drain_s = max(r for _, r in before_back) - back if before_back else None
    seqs = query(rig.store, "SELECT epoch, seq FROM events WHERE gateway=?", rig.gateway)
    by_epoch: dict[str, set[int]] = defaultdict(set)
    for epoch, seq in seqs:
        by_epoch[epoch].add(int(seq))
    holes = sum(max(s) - len(s) for s in by_epoch.values())
    reconnects = [ts(e["timestamp"]) - back for e in rig.logged("agent", "uplink_connected")
                  if ts(e["timestamp"]) > back]
    col_reconnects = [ts(e["timestamp"]) - back
                      for e in rig.logged("collector", "broker_connected")
                      if ts(e["timestamp"]) > back]
    started = [ts(e["timestamp"]) for e in rig.logged("agent", "agent_started")]
    slots = poll_slots(readings, devices, started[0] if started else rig.agent_started, until)
    result = {
        "devices": devices, "outage_s": round(back - down, 1),
        "reconnect_max_s": reconnect_max_s if reconnect_max_s is not None
        else f"default ({BackoffConfig().max_s:g})",
        "readings_created_during_outage": sum(1 for t, _ in before_back if t >= down),
        "seq_holes": holes, "epochs": len(by_epoch), "polls_lost": slots["polls_lost"],
        "readings_lost": holes + slots["polls_lost"],
        "drain_s_after_broker_back": round(drain_s, 2) if drain_s is not None else None,
        "agent_reconnect_s_after_broker_back": round(reconnects[0], 2) if reconnects else None,
        "collector_reconnect_s_after_broker_back":
            round(col_reconnects[0], 2) if col_reconnects else None,
        "agent_reconnect_attempts_logged": len(rig.logged("agent", "uplink_reconnecting")),
        "stop_s": stop_s,
    }
    emit({"bench": "modbus_fleet", "phase": "outage", **result})
    return result


@click.command(help=__doc__.splitlines()[0])
@click.option("--devices", type=int, default=100)
@click.option("--seconds", type=float, default=60, help="steady window")
@click.option("--warmup", type=float, default=10, help="seconds before the window")
@click.option("--outage-s", type=float, default=30, help="0: no outage phase")
@click.option("--outage-devices", type=int, default=20)
@click.option("--skip-fleet", is_flag=True)
@click.option("--reconnect-max-s", type=float, default=None,
              help="outage: cap the agent's and collector's reconnect back-off "
                   "(default: as shipped, 1 s)")
@click.option("--keep-logs", type=click.Path(path_type=Path), default=None,
              help="copy every process's log into this folder")
@click.option("--commit-linger-ms", type=int, default=None,
              help="the agent's outbox.commit_linger_ms (default: as shipped)")
@click.option("--status-page", is_flag=True,
              help="fleet: the agent's status page on (no browser open)")
@click.option("--heartbeat-s", type=float, default=0.5,
              help="the reading rule's heartbeat; 300 makes a polling-only round "
                   "(one reading per device, then none: what polling alone costs)")
def main(**options: Any) -> None:
    args = SimpleNamespace(**options)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        profile_dir = tmp / "profiles"
        profile_dir.mkdir()
        write_profile(profile_dir, args.heartbeat_s)
        broker = Mosquitto(tmp / "mosquitto")
        broker.start()
        try:
            if not args.skip_fleet:
                results["fleet"] = fleet(tmp, broker, profile_dir, args.devices, args.seconds,
                                         args.warmup, args.commit_linger_ms, args.status_page)
            if args.outage_s > 0:
                results["outage"] = outage(tmp, broker, profile_dir, args.outage_devices,
                                           args.outage_s, 5.0, args.reconnect_max_s)
        finally:
            broker.stop()
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for log in [*tmp.glob("*.log"), tmp / "mosquitto" / "mosquitto.log"]:
                    if log.exists():
                        shutil.copy(log, args.keep_logs / log.name)
    out: dict[str, Any] = {"bench": "modbus_fleet"}
    if "fleet" in results:
        f = results["fleet"]
        big = f["devices"] >= 500
        cpu_target, rss_target = (0.15, 80) if big else (0.03, 60)
        out["fleet"] = {
            "devices": f["devices"], "cpu_share": f["agent_cpu_share_of_one_core"],
            "cpu_target": cpu_target, "peak_rss_mib": f["agent_peak_rss_mib"],
            "rss_target_mib": rss_target, "p99_ms": f["latency_steady"].get("p99_ms"),
            "p99_target_ms": 100, "polls_lost": f["polls"]["polls_lost"],
            "devices_never_polled": f["polls"]["devices_never_polled"],
            "met": {"cpu": f["agent_cpu_share_of_one_core"] <= cpu_target,
                    "rss": f["agent_peak_rss_mib"] <= rss_target,
                    "p99": (f["latency_steady"].get("p99_ms") or 1e9) <= 100,
                    "no_poll_lost": f["polls"]["polls_lost"] == 0
                    and f["polls"]["devices_never_polled"] == 0}}
    if "outage" in results:
        o = results["outage"]
        out["outage"] = {**o, "met": {"none_lost": o["readings_lost"] == 0,
                                      "drain_within_2s": (o["drain_s_after_broker_back"]
                                                          or 1e9) <= 2}}
    summary(out)


if __name__ == "__main__":
    main()
