"""`./run demo`: the whole system on the embedded default, until Ctrl-C.

Starts `edge-collector run` (embedded MQTT broker on 127.0.0.1:18830, SQLite store
under var/demo/) and `edge-agent run` with simulated devices, both logging JSON to
the terminal. Demo credentials are generated into var/demo/secrets/ on first run.
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
USERS = ("collector", "gw-demo-01")
BROKER_PORT = 18830


def ensure_secrets() -> None:
    SECRETS.mkdir(parents=True, exist_ok=True, mode=0o700)
    for user in USERS:
        path = SECRETS / f"{user}.password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24) + "\n")
            path.chmod(0o600)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the collector exited with {proc.returncode}; see its log")
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

    def stop(*_: object) -> None:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        raise SystemExit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    procs.append(subprocess.Popen(
        [py, "-m", "collector", "run", "--config", "configs/collector.demo.yaml"],
        start_new_session=True))
    wait_for_port(BROKER_PORT, procs[0])
    procs.append(subprocess.Popen(
        [py, "-m", "edge_agent", "run", "--config", "configs/gateway.demo.yaml"],
        start_new_session=True))
    print("demo: collector and agent running; store: var/demo/district.db; Ctrl-C stops both",
          file=sys.stderr)
    while all(p.poll() is None for p in procs):
        time.sleep(0.5)
    stop()


if __name__ == "__main__":
    main()
