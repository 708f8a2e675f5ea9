"""A full disk under the outbox: the real agent process, a real Mosquitto, a real collector,
and a 2 MiB tmpfs mounted under the outbox's directory (root only; CI runs as root)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.contract.envelope import ALARM_TYPES, format_time
from tests.harness import (
    agent,
    collector,
    collector_yaml,
    gateway_yaml,
    query,
    sim_devices,
    wait_for,
    write_yaml,
)
from tests.peers import Mosquitto, free_port

pytestmark = pytest.mark.slow

#: systemd's TimeoutStopSec for the agent (systemd/edge-agent.service)
TIMEOUT_STOP_S = 30


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (f"cannot mount a 2 MiB tmpfs at {disk} (needs root): "
                  f"{done.stderr.strip() or done.returncode}")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """What another program does: write a file until the disk is full."""
    filler = disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\1" * 4096)
            f.flush()
    return filler


def alarms_after(store: Path, since: str) -> int:
    marks = ",".join("?" * len(ALARM_TYPES))
    rows = query(store, f"SELECT COUNT(*) FROM events WHERE type IN ({marks}) AND time > ?",
                 *sorted(ALARM_TYPES), since)
    return int(rows[0][0]) if rows else 0


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_full_disk_keeps_alarms_flowing_stops_in_time_and_restarts_degraded(
        tmp_path: Path, small_disk: Path, mosquitto: Mosquitto) -> None:
    store, gw, port = tmp_path / "district.db", "gw-disk", free_port()
    cfg = gateway_yaml(gw, mosquitto.url, small_disk / "outbox.db",
                       devices=sim_devices(3, period_s=0.02, alarm_every_s=0.5,
                                           alarm_duration_s=0.2))
    cfg["status_page"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
    col = collector(write_yaml(tmp_path / "c.yaml", collector_yaml(mosquitto.url, store)),
                    tmp_path / "c.log").start()
    ag = agent(write_yaml(tmp_path / "g.yaml", cfg), tmp_path / "a.log")
    ag.start()
    try:
        wait_for(lambda: alarms_after(store, "") > 3, 40, "first alarms in the store")
        filler = fill(small_disk)
        wait_for(lambda: any(e.get("event") in ("outbox_disk_full", "outbox_append_failed")
                             for e in ag.log_events()), 30, "the agent to meet the full disk")
        full_at = format_time(time.time())

        # 1. Alarms raised while the disk is full still reach the store.
        wait_for(lambda: alarms_after(store, full_at) >= 4, 40,
                 "alarms raised on the full disk to reach the store")

        # 2. The page and /healthz say so.
        code, health = get_json(f"http://127.0.0.1:{port}/healthz")
        assert code == 503 and health["disk_full"] is True
        assert any("disk full" in p for p in health["problems"])
        _, status = get_json(f"http://127.0.0.1:{port}/api/status")
        assert status["outbox"]["disk_full"] is True
        assert status["outbox"]["disk_full_since"] is not None

        # 3. SIGTERM ends it within the stop timeout, saying what it could not keep.
        began = time.monotonic()
        assert ag.stop(timeout=TIMEOUT_STOP_S) == 0
        took = time.monotonic() - began
        last = ag.log_events()[-1]
        print(f"stopped on a full disk in {took:.1f} s; last line: {last}")
        assert last["event"] == "agent_stopped"
        assert isinstance(last["not_kept"], dict)
        assert last["not_kept_total"] == sum(last["not_kept"].values())

        # 4. A restart on the full disk runs (degraded) instead of crashing.
        ag.start()
        wait_for(lambda: any(e.get("event") == "status_page_listening"
                             or e.get("event") == "uplink_connected"
                             for e in ag.log_events()[-50:]), 30, "the restarted agent up")
        time.sleep(3)
        assert ag.alive(), "the agent exited on a full disk (crash loop under systemd)"
        code, health = get_json(f"http://127.0.0.1:{port}/healthz")
        assert code == 503 and health["disk_full"] is True

        # 5. Space comes back: everything goes on.
        filler.unlink()
        back_at = format_time(time.time())
        wait_for(lambda: alarms_after(store, back_at) >= 4, 60, "alarms after space came back")
        # (the gauge of free bytes may still warn: this disk is only 2 MiB)
        wait_for(lambda: not get_json(f"http://127.0.0.1:{port}/healthz")[1]["disk_full"], 90,
                 "the full disk no longer reported")
        assert get_json(f"http://127.0.0.1:{port}/api/status")[1]["outbox"]["disk_full"] is False
    finally:
        ag.kill()
        col.stop()
    events = ag.log_events()
    # One error per second on the full disk, printed once per minute (RepeatLimiter).
    storms = [e for e in events if e.get("event") in ("outbox_disk_full", "outbox_append_failed")]
    assert 1 <= len(storms) <= 4, [e.get("event") for e in storms]
    (rows, ids), = query(store, "SELECT COUNT(*), COUNT(DISTINCT id) FROM events WHERE gateway=?",
                         gw)
    assert rows == ids, "duplicates in the store"


def test_a_full_disk_without_a_link_stops_in_time_saying_what_it_could_not_keep(
        tmp_path: Path, small_disk: Path, mosquitto: Mosquitto) -> None:
    """No collector: nothing is acked, so nothing frees room; commits keep failing."""
    port = free_port()
    cfg = gateway_yaml("gw-stuck", mosquitto.url, small_disk / "outbox.db",
                       devices=sim_devices(3, period_s=0.01, alarm_every_s=0.5,
                                           alarm_duration_s=0.2))
    cfg["status_page"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
    ag = agent(write_yaml(tmp_path / "g.yaml", cfg), tmp_path / "a.log")
    ag.start()
    try:
        wait_for(lambda: any(e.get("event") == "uplink_connected" for e in ag.log_events()),
                 30, "the agent up")
        fill(small_disk)
        wait_for(lambda: get_json(f"http://127.0.0.1:{port}/healthz")[1].get("pending", 0)
                 > 500, 60, "events piling up in memory on the full disk")
        began = time.monotonic()
        assert ag.stop(timeout=TIMEOUT_STOP_S) == 0
        took = time.monotonic() - began
        last = ag.log_events()[-1]
        print(f"stopped with commits failing in {took:.1f} s; last line: {last}")
        assert last["event"] == "agent_stopped" and last["level"] == "error"
        assert set(last["not_kept"]) <= {"alarm", "record", "telemetry", "dropped_unreported"}
        assert last["not_kept"].get("telemetry", 0) > 0
        assert last["not_kept_total"] == sum(last["not_kept"].values())

        ag.start()  # on the full disk: degraded, not a crash loop
        wait_for(lambda: any(e.get("event") == "status_page_listening"
                             for e in ag.log_events()[-80:]), 30, "the restarted agent up")
        time.sleep(3)
        assert ag.alive(), "the agent exited on a full disk (crash loop under systemd)"
        code, health = get_json(f"http://127.0.0.1:{port}/healthz")
        assert code == 503 and health["disk_full"] is True
        assert ag.stop(timeout=TIMEOUT_STOP_S) == 0
    finally:
        ag.kill()
    storms = [e for e in ag.log_events() if e.get("event") == "outbox_disk_full"]
    assert 1 <= len(storms) <= 4, "one error per second on a full disk must be rate-limited"
