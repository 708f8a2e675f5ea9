"""Side by side with ThingsBoard IoT Gateway on the peer workload (issue 14).

    .venv/bin/python bench/thingsboard_peer.py [--devices 100 500] [--seconds 60]
                                               [--warmup 15] [--wire v2 v1]

The workload of bench/uplink_bytes.py: N Modbus TCP devices (`edge-agent simulate`, the
`peer-holding-20` profile, every point drifting each second) × 20 holding registers,
polled at 1 Hz, every reading forwarded, through a counting TCP proxy (127.0.0.1) to a
bench Mosquitto. Run back to back on the same machine, per N: ThingsBoard IoT Gateway,
then our agent (wire v2, then v1, with `uplink_bytes.run_one`).

ThingsBoard IoT Gateway (`thingsboard-gateway` from PyPI) lives in its OWN venv under
`$EDGE_BENCH_CACHE` (default ~/.cache/edge-bench/tb-gateway), created on first run, never
in the project venv; with the pymodbus version its Modbus connector pins (it would
otherwise pip-install it at start). If that install fails, the ThingsBoard rounds are
skipped with the reason (`{"skipped": ...}`) and ours still run. Its configuration:
tb_gateway.json (MQTT to the proxy, access-token user name, QoS 1, memory storage,
`reportStrategy: ON_RECEIVED`, remote configuration/shell and statistics off) and one
Modbus connector with one slave per device, 20 `timeseries` of type 16uint, function 3,
pollPeriod 1000 ms, `sendDataOnlyOnChange: false`. Its update check (an HTTPS POST to
updates.thingsboard.io) is patched out at launch: the bench stays on 127.0.0.1.

Datapoints for ThingsBoard: a subscriber on the broker (not through the proxy) counts the
values of every `v1/gateway/telemetry` message whose `ts` is in the window; expected =
N × 20 × window seconds. CPU: psutil user+system of the whole process tree over the
window, per 1,000 datapoints received; RSS of the tree at the window's end.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
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
from bench.modbus_fleet import write_profile  # noqa: E402
from bench.uplink_bytes import (  # noqa: E402
    POINTS,
    SENSOR_DRIFT,
    SENSOR_PROFILE,
    CountingProxy,
    run_one,
    tree_cpu_rss,
    write_simulator,
)
from tests.harness import Proc, wait_for  # noqa: E402
from tests.peers import Mosquitto, free_ports  # noqa: E402

TB_VERSION = "3.8.5"
#: what thingsboard_gateway.connectors.modbus pins (it pip-installs it otherwise)
TB_PYMODBUS = "3.9.2"
TB_PACKAGES = (f"thingsboard-gateway=={TB_VERSION}", f"pymodbus=={TB_PYMODBUS}", "pyserial",
               "pyserial-asyncio")
TARGET_BYTES_RATIO = 0.5
TARGET_CPU_RATIO = 0.15
#: the point name -> holding register address of peer-holding-20
REGISTERS = {f"{run}{i}": base + i for run, base in zip("abcde", (0, 11, 22, 33, 51), strict=True)
             for i in range(4)}
TB_LAUNCHER = (
    "import sys\n"
    "import thingsboard_gateway.tb_utility.tb_updater as u\n"
    "u.TBUpdater.check_for_new_version = lambda self: None  # no HTTPS to updates.thingsboard.io\n"
    "from thingsboard_gateway.gateway.tb_gateway_service import TBGatewayService\n"
    "TBGatewayService(sys.argv[1])\n")


def cache_dir() -> Path:
    return Path(os.environ.get("EDGE_BENCH_CACHE", Path.home() / ".cache" / "edge-bench"))


def tb_python() -> tuple[Path | None, str]:
    """The ThingsBoard venv's python (created on first use), or None and the reason."""
    venv = cache_dir() / "tb-gateway"
    python = venv / "bin" / "python"
    stamp = venv / f".installed-{TB_VERSION}-{TB_PYMODBUS}"
    if stamp.exists():
        return python, ""
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           capture_output=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TB_PACKAGES], check=True,
                       capture_output=True, timeout=1200)
    except (OSError, subprocess.SubprocessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else [str(exc)]
        return None, f"pip install {' '.join(TB_PACKAGES)} into {venv} failed: {tail}"
    stamp.touch()
    return python, ""


def tb_config(folder: Path, mqtt_port: int, sim_base: int, devices: int) -> Path:
    """tb_gateway.json, modbus.json and logs.json in `folder`; the path of tb_gateway.json."""
    gateway = {
        "thingsboard": {
            "host": "127.0.0.1", "port": mqtt_port, "remoteShell": False,
            "remoteConfiguration": False, "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600,
                           "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False},
            "maxPayloadSizeBytes": 8196, "minPackSendDelayMS": 50, "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 60, "handleDeviceRenaming": True,
            "security": {"type": "accessToken", "accessToken": "bench-token"},
            "qos": 1, "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 1000000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }
    timeseries = [{"tag": name, "type": "16uint", "functionCode": 3, "objectsCount": 1,
                   "address": address} for name, address in REGISTERS.items()]
    slaves = [{"host": "127.0.0.1", "port": sim_base + i, "type": "tcp", "method": "socket",
               "unitId": 1, "deviceName": f"dev-{i:03d}", "deviceType": "default",
               "timeout": 35, "byteOrder": "BIG", "wordOrder": "BIG", "retries": 3,
               "retryOnEmpty": True, "retryOnInvalid": True, "pollPeriod": 1000,
               "connectAttemptTimeMs": 5000, "connectAttemptCount": 5,
               "waitAfterFailedAttemptsMs": 300000, "sendDataOnlyOnChange": False,
               "reportStrategy": {"type": "ON_RECEIVED"},
               "attributes": [], "timeseries": timeseries, "attributeUpdates": [], "rpc": []}
              for i in range(devices)]
    logs = {"version": 1, "disable_existing_loggers": False,
            "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "f",
                                  "filename": str(folder / "tb.log")}},
            "root": {"level": os.environ.get("TB_LOG_LEVEL", "WARNING"), "handlers": ["file"]},
            # a deprecation warning per decoded register otherwise: not the gateway's cost
            "loggers": {"pymodbus": {"level": "ERROR"}}}
    (folder / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}), "utf-8")
    (folder / "logs.json").write_text(json.dumps(logs), "utf-8")
    path = folder / "tb_gateway.json"
    path.write_text(json.dumps(gateway, indent=1), "utf-8")
    return path


#: what the bench answers to the gateway's `getSessionLimits` RPC: no rate limit. Without
#: an answer carrying `rateLimits` the gateway never sends (is_connected() stays False).
SESSION_LIMITS = {"maxPayloadSize": 65536, "maxInflightMessages": 100,
                  "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,",
                                 "telemetryDataPoints": "0:0,"},
                  "gatewayRateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,",
                                        "telemetryDataPoints": "0:0,"}}


class TelemetryCounter:
    """Counts the values of `v1/gateway/telemetry` by their `ts` (paho, own thread), and
    plays the ThingsBoard server's part of the one RPC the gateway waits for at connect."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.stamps: list[tuple[float, int]] = []
        self.messages = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tb-counter")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("v1/gateway/telemetry", qos=0)
        self.client.subscribe("v1/devices/me/rpc/request/+", qos=1)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        body = json.loads(message.payload)
        if message.topic.startswith("v1/devices/me/rpc/request/"):
            if body.get("method") == "getSessionLimits":
                request_id = message.topic.rsplit("/", 1)[1]
                self.client.publish(f"v1/devices/me/rpc/response/{request_id}",
                                    json.dumps(SESSION_LIMITS), qos=1)
            return
        rows = []
        for entries in body.values():
            for entry in entries if isinstance(entries, list) else [entries]:
                values = entry.get("values", entry)
                rows.append((entry.get("ts", time.time() * 1000) / 1000, len(values)))
        with self._lock:
            self.messages += 1
            self.stamps.extend(rows)

    def datapoints(self, t0: float, t1: float) -> tuple[int, int]:
        with self._lock:
            inside = [n for t, n in self.stamps if t0 <= t < t1]
        return sum(inside), len(inside)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_thingsboard(tmp: Path, python: Path, broker: Mosquitto, profile_dir: Path,
                    devices: int, seconds: float, warmup: float) -> dict[str, Any]:
    folder = tmp / f"tb-{devices}"
    folder.mkdir()
    base = free_ports(devices)
    proxy = CountingProxy(broker.port).start()
    counter = TelemetryCounter(broker.port)
    sim_log = folder / "simulator.log"
    sim_cfg = write_simulator(folder, base, devices, SENSOR_PROFILE, SENSOR_DRIFT)
    from bench.modbus_fleet import LAUNCHER

    sim = Proc([sys.executable, "-c", LAUNCHER, str(profile_dir), "simulate", "--config",
                str(sim_cfg)], sim_log).start()
    tb: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: b"Ctrl-C stops" in sim_log.read_bytes(), 90, "the simulator")
        cfg = tb_config(folder, proxy.port, base, devices)
        env = {**os.environ, "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}
        with open(folder / "tb.stdout", "wb") as out:
            tb = subprocess.Popen([str(python), "-c", TB_LAUNCHER, str(cfg)], cwd=folder,
                                  stdout=out, stderr=subprocess.STDOUT, env=env)
        proc = psutil.Process(tb.pid)
        simp = psutil.Process(sim.proc.pid) if sim.proc is not None else None
        time.sleep(warmup)
        (cpu0, _), up0, t0 = tree_cpu_rss(proc), proxy.up, time.time()
        sim0 = tree_cpu_rss(simp)[0] if simp else 0.0
        time.sleep(seconds)
        (cpu1, rss), up1, t1 = tree_cpu_rss(proc), proxy.up, time.time()
        sim1 = tree_cpu_rss(simp)[0] if simp else 0.0
        time.sleep(5)  # the window's last readings reach the subscriber
        datapoints, readings = counter.datapoints(t0, t1)
        expected = devices * POINTS * (t1 - t0)
        cpu_s = cpu1 - cpu0
        row = {"bench": "thingsboard_peer", "tool": f"thingsboard-gateway {TB_VERSION}",
               "devices": devices, "window_s": round(t1 - t0, 1), "datapoints": datapoints,
               "readings_in_window": readings, "up_bytes": up1 - up0,
               "up_bytes_per_datapoint": round((up1 - up0) / max(1, datapoints), 2),
               "cpu_s_per_1000_datapoints": round(cpu_s / max(1, datapoints) * 1000, 4),
               "cpu_share_of_one_core": round(cpu_s / (t1 - t0), 4),
               "rss_mb": round(rss / 2**20, 1),
               "lost_pct": round(max(0.0, 1 - datapoints / expected) * 100, 2),
               "simulator_cpu_share_of_one_core": round((sim1 - sim0) / (t1 - t0), 4),
               "alive": tb.poll() is None,
               "simulator_alive": sim.proc is not None and sim.proc.poll() is None}
        if datapoints == 0:  # never a silent zero: say where to look
            row["error"] = (f"no telemetry received; see {folder} (--keep keeps it): "
                            "tb.log, tb.stdout, simulator.log")
        emit(row)
        return row
    finally:
        if tb is not None:
            tb.terminate()
            try:
                tb.wait(15)
            except subprocess.TimeoutExpired:
                tb.kill()
                tb.wait()
        sim.stop()
        counter.stop()
        proxy.stop()


def ours(tmp: Path, broker: Mosquitto, profile_dir: Path, devices: int, wire: str,
         seconds: float, warmup: float) -> dict[str, Any]:
    row = run_one(tmp, broker, profile_dir, devices, wire, seconds, warmup, "sensor")
    expected = devices * (row["window_s"]) * POINTS
    return {"tool": f"edge-agent wire {wire}", "devices": devices,
            "up_bytes_per_datapoint": row["up_bytes_per_datapoint"],
            "cpu_s_per_1000_datapoints": row["agent_cpu_s_per_1000_datapoints"],
            "cpu_share_of_one_core": row["agent_cpu_share_of_one_core"],
            "rss_mb": row.get("agent_rss_mb"), "datapoints": row["datapoints"],
            "lost_pct": round(max(0.0, 1 - row["datapoints"] / expected) * 100, 2)}


@click.command()
@click.option("--devices", type=int, multiple=True, default=(100, 500), show_default=True)
@click.option("--wire", type=click.Choice(["v1", "v2"]), multiple=True, default=("v2", "v1"),
              show_default=True)
@click.option("--seconds", type=float, default=60, show_default=True)
@click.option("--warmup", type=float, default=15, show_default=True)
@click.option("--skip-ours", is_flag=True, help="ThingsBoard rounds only")
@click.option("--keep", is_flag=True, help="keep the temp dir (logs, configs)")
def main(**options: Any) -> None:
    args = SimpleNamespace(**options)
    python, reason = tb_python()
    if python is None:
        emit({"bench": "thingsboard_peer", "skipped": reason})
    rounds: list[dict[str, Any]] = []
    keep = contextlib.nullcontext(tempfile.mkdtemp(prefix="tb-peer-")) if args.keep else None
    with keep or tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        profile_dir = tmp / "profiles"
        profile_dir.mkdir()
        write_profile(profile_dir)
        broker = Mosquitto(tmp / "mosquitto")
        broker.start()
        try:
            for devices in args.devices:
                tb_row = None
                if python is not None:
                    tb_row = run_thingsboard(tmp, python, broker, profile_dir, devices,
                                             args.seconds, args.warmup)
                    rounds.append({k: tb_row[k] for k in (
                        "tool", "devices", "up_bytes_per_datapoint",
                        "cpu_s_per_1000_datapoints", "cpu_share_of_one_core", "rss_mb",
                        "datapoints", "lost_pct")})
                if args.skip_ours:
                    continue
                for wire in args.wire:
                    row = ours(tmp, broker, profile_dir, devices, wire, args.seconds,
                               args.warmup)
                    if tb_row is not None and tb_row["datapoints"] > 0:
                        row["bytes_ratio_vs_tb"] = round(
                            row["up_bytes_per_datapoint"] / tb_row["up_bytes_per_datapoint"], 3)
                        row["cpu_ratio_vs_tb"] = round(
                            row["cpu_s_per_1000_datapoints"]
                            / max(1e-9, tb_row["cpu_s_per_1000_datapoints"]), 3)
                    emit({"bench": "thingsboard_peer", **row})
                    rounds.append(row)
        finally:
            broker.stop()
    summary({"bench": "thingsboard_peer", "thingsboard": TB_VERSION if python else reason,
             "target_bytes_ratio": TARGET_BYTES_RATIO, "target_cpu_ratio": TARGET_CPU_RATIO,
             "rounds": rounds})


if __name__ == "__main__":
    main()
