"""Uplink bytes per datapoint on the peer workload, wire v1 against v2.

    .venv/bin/python bench/uplink_bytes.py [--devices 100 500] [--seconds 60] [--warmup 10]
                                           [--wire v1 v2] [--event sensor|smoke]

The peer workload (issue 14): N Modbus TCP devices (`edge-agent simulate`, one port per
device on 127.0.0.1) × 20 holding registers, polled at 1 Hz, every reading forwarded.
`--event sensor` (default): the shipped `peer-holding-20` profile, one `sensor.reading`
with 20 quantities per poll (`report: every_poll`). `--event smoke`: the way this
workload ran before sensor.reading existed, the planner's reference map
(tests/data/modbus/scattered-20.yaml) with a `smoke.reading` rule whose `fields` name
all 20 points (17 of them undocumented, which the schema admits) and a heartbeat (0.5 s)
shorter than the poll period. Either way every poll is one event carrying its 20 values;
datapoints = stored events × 20. Every point drifts each second (a simulator scenario
adding a random step to each, from per-device starting values): constant registers would
flatter any compressor.

The agent reaches Mosquitto through a counting TCP proxy in this process (127.0.0.1):
`up_bytes` is every byte the agent sent to the broker in the steady window (MQTT PUBLISH
of the batches, and also the PUBACKs of the collector's acks, pings: the whole uplink,
TCP/IP headers aside), `down_bytes` what it received. Agent CPU: psutil cpu_times of its
process tree over the same window, per 1,000 datapoints; RSS of the tree at its end.
Lost: polls missing from the store (empty 1 s slots per device, as bench/modbus_fleet.py
counts them, up to the window's end).
`outbox_left`: rows still in the outbox after the agent stopped (the batches in flight at
SIGTERM: kept, sent at the next start; not lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench._common import emit, summary  # noqa: E402
from bench.modbus_fleet import (  # noqa: E402
    LAUNCHER,
    PERIOD_S,
    PRODUCTION_UPLINK,
    PROFILE,
    READING,
    SCATTERED,
    Rig,
    poll_slots,
    ts,
)
from tests.harness import (  # noqa: E402
    Proc,
    collector,
    collector_yaml,
    gateway_yaml,
    outbox_stats,
    query,
    wait_for,
    write_yaml,
)
from tests.peers import Mosquitto, free_ports  # noqa: E402

POINTS = 20
#: Reference figures (measured by the reviewer): ThingsBoard IoT Gateway, today's agent.
THINGSBOARD_B_PER_DATAPOINT = 14.1
TARGET_B_PER_DATAPOINT = 7.0


SENSOR_PROFILE = "peer-holding-20"
#: point -> (initial low, high, step) in scaled units; strings and the bit stay as served.
SMOKE_DRIFT: dict[str, tuple[float, float, float]] = {
    "a0": (100, 60000, 1), "a1": (15, 30, 0.1), "a2": (1e6, 4e9, 7), "a3": (0, 1e4, 0.01),
    "b0": (-1e6, 1e6, 3), "b1": (0, 0.05, 0.001), "b3": (-3000, 3000, 1),
    "c1": (100, 60000, 1), "c2": (0, 500, 0.01), "c3": (100, 4e6, 0.001),
    "d0": (0, 10, 0.001), "d1": (-1e6, 1e6, 5), "d2": (20, 80, 1),
    "e0": (100, 60000, 1), "e1": (-1e6, 1e6, 2), "e2": (0, 100, 0.01), "e3": (1e5, 4e9, 11),
}


def _decimals(step: float) -> int:
    return len(f"{step:g}".partition(".")[2])


SENSOR_DRIFT: dict[str, tuple[float, float, float]] = {
    f"{run}{i}": (100, 60000, 1) for run in "abcde" for i in range(4)}


def write_simulator(folder: Path, base_port: int, devices: int, profile: str,
                    drift: dict[str, tuple[float, float, float]], seed: int = 14) -> Path:
    """A simulate.yaml: one server per device, each starting at its own values, and a
    scenario adding a random step to each drifting point every second (a 60 s loop), so
    that every poll reads new values, and no two devices read the same ones."""
    import random

    rng = random.Random(seed)

    def start(point: str) -> float:
        low, high, step = drift[point]
        value = rng.uniform(low, high)
        return round(value) if step >= 1 else round(value, _decimals(step))

    steps = []
    for second in range(1, 60):
        for point, (_, _, step) in drift.items():
            delta = rng.choice((-3, -2, -1, 1, 2, 3)) * step
            steps.append({"at_s": second, "point": point,
                          "add": int(delta) if step >= 1 else round(delta, _decimals(step))})
    scenario = {"description": "every point drifts each second", "profile": profile,
                "loop": True, "period_s": 60, "steps": steps}
    scenario_file = write_yaml(folder / "drift.yaml", scenario)
    servers = [{"tcp": {"host": "127.0.0.1", "port": base_port + i},
                "units": [{"unit": 1, "profile": profile, "device": f"dev-{i:03d}",
                           "values": {p: start(p) for p in drift}}]}
               for i in range(devices)]
    return write_yaml(folder / "simulate.yaml", {"servers": servers,
                                                 "scenarios": [{"scenario": str(scenario_file)}],
                                                 "log_level": "warning"})


def write_profile(folder: Path) -> Path:
    """The reference map with a reading that carries all 20 points."""
    text = SCATTERED.read_text("utf-8").replace("name: scattered-20", f"name: {PROFILE}")
    names = [line.split("name: ", 1)[1].split(",", 1)[0] for line in text.splitlines()
             if line.strip().startswith("- {name: ")]
    renamed = {"b1": "density_db_m", "a1": "temperature_c", "d2": "battery_pct"}
    fields = ", ".join(f"{renamed.get(n, n)}: {n}" for n in names)
    assert len(names) == POINTS, names
    text += f"""
events:
  - type: {READING}            # heartbeat < poll period: every poll forwards one reading
    fields: {{{fields}}}
    heartbeat_s: 0.5
"""
    path = folder / f"{PROFILE}.yaml"
    path.write_text(text, "utf-8")
    return path


def tree_cpu_rss(proc: psutil.Process) -> tuple[float, int]:
    """User+system CPU seconds and RSS bytes of `proc` and all its descendants."""
    total, rss = 0.0, 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
            rss += p.memory_info().rss
        except psutil.Error:
            continue
    return total, rss


class CountingProxy:
    """127.0.0.1:port → the broker; counts the bytes each way (own thread and loop)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_ports(1)
        self.up = 0
        self.down = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CountingProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._main = self._loop.create_task(self._serve())
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._main)

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await server.serve_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            b_reader, b_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    if up:
                        self.up += len(chunk)
                    else:
                        self.down += len(chunk)
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, b_writer, True), pipe(b_reader, writer, False))

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._main.cancel)
        self._thread.join(5)


class ProxiedRig(Rig):
    """bench.modbus_fleet's rig, the agent connected through `agent_url` with `uplink`."""

    agent_url = ""
    uplink: dict[str, Any] = {}  # noqa: RUF012
    event = "sensor"

    def readings(self) -> list[tuple[str, float, float]]:
        type_ = "sensor.reading" if self.event == "sensor" else READING
        rows = query(self.store, "SELECT device, time, received_at FROM events "
                                 "WHERE gateway=? AND type=?", self.gateway, type_)
        return [(d, ts(t), ts(r)) for d, t, r in rows]

    def start(self) -> None:
        col_cfg = write_yaml(self.tmp / f"{self.name}-collector.yaml",
                             collector_yaml(self.broker.url, self.store))
        self.col = collector(col_cfg, self.tmp / f"{self.name}-collector.log").start()
        (self.tmp / self.name).mkdir(exist_ok=True)
        sim_log = self.tmp / f"{self.name}-simulator.log"
        sensor = self.event == "sensor"
        profile = SENSOR_PROFILE if sensor else PROFILE
        sim_cfg = write_simulator(self.tmp / self.name, self.base, self.devices, profile,
                                  SENSOR_DRIFT if sensor else SMOKE_DRIFT)
        self.sim = Proc([sys.executable, "-c", LAUNCHER, str(self.profile_dir), "simulate",
                         "--config", str(sim_cfg)], sim_log).start()
        wait_for(lambda: b"Ctrl-C stops" in sim_log.read_bytes(), 90, "the simulator")
        wait_for(lambda: b"broker_connected" in (self.tmp / f"{self.name}-collector.log")
                 .read_bytes(), 30, "the collector")
        devices = [{"id": f"dev-{i:03d}", "driver": "modbus", "profile": profile,
                    "tcp": {"host": "127.0.0.1", "port": self.base + i}, "unit_id": 1,
                    "period_s": PERIOD_S} for i in range(self.devices)]
        cfg = gateway_yaml(self.gateway, self.agent_url, self.tmp / f"{self.name}-outbox.db",
                           devices=devices, uplink={**PRODUCTION_UPLINK, **self.uplink})
        cfg_path = write_yaml(self.tmp / f"{self.name}-gw.yaml", cfg)
        self.agent = Proc([sys.executable, "-c", LAUNCHER, str(self.profile_dir), "run",
                           "--config", str(cfg_path)], self.tmp / f"{self.name}-agent.log")
        self.agent_started = time.time()
        self.agent.start()


def run_one(tmp: Path, broker: Mosquitto, profile_dir: Path, devices: int, wire: str,
            seconds: float, warmup: float, event: str) -> dict[str, Any]:
    proxy = CountingProxy(broker.port).start()
    rig = ProxiedRig(tmp, f"{event}-{wire}-{devices}", devices, profile_dir, broker)
    rig.event = event
    rig.agent_url = f"mqtt://127.0.0.1:{proxy.port}"
    rig.uplink = {"wire": wire}
    try:
        rig.start()
        proc = rig.agent_process()
        time.sleep(warmup)
        (cpu0, _), up0, down0, t0 = tree_cpu_rss(proc), proxy.up, proxy.down, time.time()
        time.sleep(seconds)
        (cpu1, rss), up1, down1, t1 = tree_cpu_rss(proc), proxy.up, proxy.down, time.time()
        time.sleep(3)  # the window's last polls reach the store
        rig.stop()
        readings = rig.readings()
        in_window = sum(1 for _, t, _r in readings if t0 <= t < t1)
        started = [ts(e["timestamp"]) for e in rig.logged("agent", "agent_started")]
        polls = poll_slots(readings, devices, started[0] if started else rig.agent_started,
                           t1)
        datapoints = in_window * POINTS
        cpu_s = cpu1 - cpu0
        row = {"bench": "uplink_bytes", "event": event, "wire": wire, "devices": devices,
               "window_s": round(t1 - t0, 1),
               "events_in_window": in_window, "datapoints": datapoints,
               "up_bytes": up1 - up0, "down_bytes": down1 - down0,
               "up_bytes_per_datapoint": round((up1 - up0) / max(1, datapoints), 2),
               "up_bytes_per_poll": round((up1 - up0) / max(1, in_window), 1),
               "agent_cpu_s_per_1000_datapoints": round(cpu_s / max(1, datapoints) * 1000, 4),
               "agent_cpu_share_of_one_core": round(cpu_s / (t1 - t0), 4),
               "agent_rss_mb": round(rss / 2**20, 1),
               "polls_lost": polls["polls_lost"],
               "devices_never_polled": polls["devices_never_polled"],
               "outbox_left": outbox_stats(rig.tmp / f"{rig.name}-outbox.db",
                                           rig.gateway).events}
        emit(row)
        return row
    finally:
        rig.stop()
        proxy.stop()


@click.command()
@click.option("--devices", type=int, multiple=True, default=(100, 500), show_default=True)
@click.option("--wire", type=click.Choice(["v1", "v2"]), multiple=True, default=("v1", "v2"),
              show_default=True)
@click.option("--event", type=click.Choice(["sensor", "smoke"]), default="sensor",
              show_default=True, help="sensor.reading (peer-holding-20) or the smoke trick")
@click.option("--seconds", type=float, default=60, show_default=True)
@click.option("--warmup", type=float, default=10, show_default=True)
def main(**options: Any) -> None:
    args = SimpleNamespace(**options)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        profile_dir = tmp / "profiles"
        profile_dir.mkdir()
        write_profile(profile_dir)
        broker = Mosquitto(tmp / "mosquitto")
        broker.start()
        try:
            for devices in args.devices:
                for wire in args.wire:
                    rows.append(run_one(tmp, broker, profile_dir, devices, wire,
                                        args.seconds, args.warmup, args.event))
        finally:
            broker.stop()
    summary({"bench": "uplink_bytes", "thingsboard_b_per_datapoint": THINGSBOARD_B_PER_DATAPOINT,
             "target_b_per_datapoint": TARGET_B_PER_DATAPOINT,
             "rounds": [{k: r[k] for k in ("event", "wire", "devices",
                                           "up_bytes_per_datapoint", "up_bytes_per_poll",
                                           "agent_cpu_s_per_1000_datapoints", "polls_lost",
                                           "outbox_left")} for r in rows]})


if __name__ == "__main__":
    main()
