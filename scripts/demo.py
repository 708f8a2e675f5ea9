"""`./run demo`: the whole system on the one-machine default, until Ctrl-C.

Starts, in this order, each waiting for the one before to listen:
1. `edge-agent simulate --gateway configs/gateway.demo.yaml --scenario ...`: Modbus TCP
   simulators on 127.0.0.1:15020-15022 serving the demo's gate, smoke detectors and
   water sensor, playing the fire, leak, forced-gate, access and silent-device
   scenarios in a loop (alarms within a minute), and `edge-agent simulate-camera`:
   one ONVIF camera on 127.0.0.1:18090 (motion every 20 s, tamper every 60 s);
2. `edge-collector run` (`broker: managed`: the collector runs a Mosquitto on
   127.0.0.1:18830 with files in var/demo/broker/; SQLite store under var/demo/);
   the same process serves the district side on 127.0.0.1:18470: the event stream API and
   the fleet view (`/fleet`), read with the token of a demo consumer "演示-全区" (every area,
   every type) made on first run;
3. `edge-agent run --config configs/gateway.demo.yaml`, polling the simulators with the
   `modbus` and `onvif` drivers.
All of them log JSON to the terminal; Ctrl-C stops all three. Demo credentials are
generated into var/demo/secrets/ on first run.

A script of the checkout, not a module of the wheel: it needs the repository's
`configs/` and `var/`. It starts the installed commands (`python -m edge_agent`, ...) and
imports nothing of the project.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRETS = ROOT / "var" / "demo" / "secrets"
USERS = ("gw-demo-01",)
#: The demo's simulated ONVIF camera (configs/gateway.demo.yaml's cam-gate-north).
CAMERA, CAMERA_PORT = "cam-gate-north", 18090
BROKER_PORT = 18830
#: configs/collector.demo.yaml's api.listen and store, and the demo consumer of the district
API_PORT = 18470
STORE = "sqlite:///var/demo/district.db"
CONSUMER = "演示-全区"
TOKEN_FILE = SECRETS / "district.token"
#: configs/gateway.demo.yaml's status_page.listen
STATUS_PAGE_URL = "http://127.0.0.1:18080/"
GATEWAY_CONFIG = "configs/gateway.demo.yaml"
#: The Modbus TCP ports of configs/gateway.demo.yaml's devices.
SIMULATOR_PORTS = (15020, 15021, 15022)
#: scenario@device: what the simulators play, looping (shipped scenarios, by name).
SCENARIOS = ("forced-gate@gate-north", "access@gate-north", "fire@smoke-b1-01",
             "silent-device@smoke-b3-01", "leak@water-pump-01")


def ensure_secrets() -> None:
    SECRETS.mkdir(parents=True, exist_ok=True, mode=0o700)
    for user in (*USERS, CAMERA):
        path = SECRETS / f"{user}.password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24) + "\n")
            path.chmod(0o600)
    key = SECRETS / "cursor.key"
    if not key.exists():
        key.write_text(secrets.token_hex(32) + "\n")
        key.chmod(0o600)


def ensure_consumer(py: str) -> None:
    """The demo's district consumer and its token (first run; a lost token file gets a new
    token for the same consumer)."""
    if TOKEN_FILE.exists():
        return
    made = subprocess.run([py, "-m", "collector", "consumers", "add", CONSUMER, "--store", STORE,
                           "--area", "all", "--type", "*"], capture_output=True, text=True)
    if made.returncode != 0 and "exists" in made.stderr:
        made = subprocess.run([py, "-m", "collector", "consumers", "token", CONSUMER,
                               "--store", STORE], capture_output=True, text=True)
    if made.returncode != 0:
        raise SystemExit(f"demo: could not make the demo consumer: {made.stderr.strip()}")
    TOKEN_FILE.write_text(made.stdout.strip() + "\n")
    TOKEN_FILE.chmod(0o600)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20,
                  name: str = "the collector") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: {name} exited with {proc.returncode}; see its log")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: nothing listens on 127.0.0.1:{port} after {timeout}s")


def main() -> None:
    os.chdir(ROOT)
    ensure_secrets()
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []

    def stop(*_: object, code: int = 0) -> None:
        # agent first (it flushes to its outbox), then collector and broker, then devices
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        raise SystemExit(code)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    scenarios = [arg for s in SCENARIOS for arg in ("--scenario", s)]
    try:
        procs.append(subprocess.Popen(
            [py, "-m", "edge_agent", "simulate", "--gateway", GATEWAY_CONFIG, *scenarios,
             "--loop"], start_new_session=True))
        for port in SIMULATOR_PORTS:
            wait_for_port(port, procs[0], name="the Modbus simulator")
        procs.append(subprocess.Popen(
            [py, "-m", "edge_agent", "simulate-camera", "--port", str(CAMERA_PORT), "--scenario",
             "--password-file", str(SECRETS / f"{CAMERA}.password")], start_new_session=True))
        wait_for_port(CAMERA_PORT, procs[-1], name="the camera simulator")
        procs.append(subprocess.Popen(
            [py, "-m", "collector", "run", "--config", "configs/collector.demo.yaml"],
            start_new_session=True))
        wait_for_port(BROKER_PORT, procs[-1])
        wait_for_port(API_PORT, procs[-1], name="the collector's API")
        ensure_consumer(py)
        procs.append(subprocess.Popen(
            [py, "-m", "edge_agent", "run", "--config", GATEWAY_CONFIG],
            start_new_session=True))
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        stop(code=1)
    print("demo: Modbus and camera simulators, collector and agent running; store: "
          "var/demo/district.db; Ctrl-C stops them all", file=sys.stderr)
    print(f"demo: gateway status page: {STATUS_PAGE_URL}", file=sys.stderr)
    print(f"demo: district fleet view: http://127.0.0.1:{API_PORT}/fleet and event stream "
          f"http://127.0.0.1:{API_PORT}/v1/events (token: {TOKEN_FILE.relative_to(ROOT)})",
          file=sys.stderr)
    while all(p.poll() is None for p in procs):
        time.sleep(0.5)
    stop()


if __name__ == "__main__":
    main()
