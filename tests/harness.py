"""Run the real agent and collector as processes, the way systemd would, for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_agent.contract.envelope import Hierarchy
from edge_agent.outbox.store import Outbox, OutboxStats

DISTRICT, STREET, COMMUNITY = "371312", "371312001", "371312001001"


def gateway_yaml(
    gateway: str,
    broker_url: str,
    outbox: Path,
    *,
    devices: list[dict[str, Any]] | None = None,
    uplink: dict[str, Any] | None = None,
    outbox_max_bytes: int | str = "64MiB",
    heartbeat_s: float = 3600,
) -> dict[str, Any]:
    return {
        "gateway": {"id": gateway, "district": DISTRICT, "street": STREET, "community": COMMUNITY},
        "uplink": {"broker": broker_url, "ack_timeout_s": 3, "publish_timeout_s": 2,
                   "keepalive_s": 5, "reconnect": {"initial_s": 0.1, "max_s": 1.0},
                   **(uplink or {})},
        "outbox": {"path": str(outbox), "max_bytes": outbox_max_bytes},
        "status_page": {"enabled": False},
        "heartbeat_s": heartbeat_s,
        "log_level": "info",
        "devices": devices or [],
    }


def sim_devices(n: int, *, period_s: float = 0.05, burst: int = 1, alarm_every_s: float = 2.0,
                alarm_duration_s: float = 0.5) -> list[dict[str, Any]]:
    kinds = ["smoke", "water", "gate"]
    return [{"id": f"sim-{i:02d}", "driver": "simulated", "kind": kinds[i % 3],
             "period_s": period_s, "burst": burst, "alarm_every_s": alarm_every_s,
             "alarm_duration_s": alarm_duration_s} for i in range(n)]


def collector_yaml(broker_url: str, store: Path, *, cid: str = "c1") -> dict[str, Any]:
    return {"collector": {"id": cid}, "store": f"sqlite:///{store}",
            "broker": {"url": broker_url, "client_id": f"collector-{cid}"}, "log_level": "info"}


def write_yaml(path: Path, obj: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(obj, allow_unicode=True, sort_keys=False))
    return path


@dataclass
class Proc:
    """A CLI process (`edge-agent run` / `edge-collector run`) with its log in a file."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log,
                                     env={**os.environ, **self.env})
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                msg = f"{self.argv[2]} ignored SIGTERM; log: {self.log_path}"
                raise AssertionError(msg) from None
        return self.proc.returncode if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def agent(config: Path, log: Path) -> Proc:
    return Proc([sys.executable, "-m", "edge_agent", "run", "--config", str(config)], log)


def collector(config: Path, log: Path) -> Proc:
    return Proc([sys.executable, "-m", "collector", "run", "--config", str(config)], log)


def outbox_stats(path: Path, gateway: str) -> OutboxStats:
    """Open the outbox of a stopped agent and read its figures."""
    hierarchy = Hierarchy(district=DISTRICT, street=STREET, community=COMMUNITY, gateway=gateway)
    box = Outbox.open(path, max_bytes=1 << 30, hierarchy=hierarchy)
    try:
        return box.stats()
    finally:
        box.close()


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def peak_rss(pid: int) -> int:
    """A running process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def wait_until(cond: Callable[[], Any], within: float = 10.0, what: str = "") -> None:
    """`wait_for` for async tests: wait for `cond()` to hold (checked every 10 ms);
    AssertionError after `within` s."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what or cond}")
        await asyncio.sleep(0.01)
