"""systemd's notify protocol and watchdog, against a fake notify socket.

A real `edge-agent run` / `edge-collector run` process with a real broker says READY=1,
pings WATCHDOG=1 regularly and says STOPPING=1 on SIGTERM. In process, with the real
Agent, outbox and pipeline: a wedged uplink session or a wedged pipeline stops the pings
while the event loop still runs (systemd would then kill and restart the agent); a
store transaction that hangs does the same to the collector. And end to end, with the
test in systemd's part: a real agent process whose uplink wedges is SIGABRTed once the
pings stop, and the agent started again is READY and pings.

Not here: `systemd-run --user` (this container has no systemd as PID 1 and no user bus;
docs/deploy.md says how to check on a real box).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from collector.ingest import Collector
from collector.service import announce
from collector.store import open_store
from edge_agent.agent import Agent
from edge_agent.config.loader import load_gateway_config
from edge_agent.contract import sdnotify
from edge_agent.contract.mqtt import Endpoint
from edge_agent.contract.topics import GatewayTopics
from edge_agent.contract.watchdog import Beats, keep_alive, sleep_beating
from tests.harness import (
    COMMUNITY,
    DISTRICT,
    Proc,
    agent,
    collector,
    collector_yaml,
    gateway_yaml,
    sim_devices,
    wait_for,
    wait_until,
    write_yaml,
)
from tests.notify_socket import NotifySocket, notify_socket
from tests.peers import Mosquitto, free_port

#: short, so a test takes seconds (the units say 30s)
WATCHDOG_S = 1.0


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[NotifySocket]:
    with notify_socket(tmp_path, abstract=True) as sock:
        yield sock


# ---------------------------------------------------------------- the protocol


def test_without_notify_socket_nothing_is_sent_and_nothing_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    assert sdnotify.notify("READY=1") is False  # logged once, never raised
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize("abstract", [True, False])
def test_lines_arrive_as_one_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      abstract: bool) -> None:
    with notify_socket(tmp_path, abstract=abstract) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", sock.name)
        assert sdnotify.notify("READY=1", "STATUS=serving")
        assert sock.sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_watchdog_interval_honours_watchdog_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval_s() is None


async def test_pings_only_while_every_stage_beats(fake_systemd: NotifySocket,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", fake_systemd.name)
    beats = Beats("a", "b")
    beats.rest("b")  # resting: never stale
    beating = asyncio.create_task(sleep_beating(3600, beats.beater("a")))
    pings = asyncio.create_task(keep_alive(beats, 0.2, service="test"))
    try:
        await wait_until(lambda: fake_systemd.count("WATCHDOG=1") >= 3, 15, "pings while a beats")
        beating.cancel()  # a wedges
        await wait_until(lambda: _quiet_for(fake_systemd, 0.5), 15, "pings stop once a is stale")
        assert beats.stale(0.2).keys() == {"a"}
        beats.beat("a")
        n = fake_systemd.count("WATCHDOG=1")
        await wait_until(lambda: fake_systemd.count("WATCHDOG=1") > n, 15, "pings again")
    finally:
        beating.cancel()
        pings.cancel()


# ---------------------------------------------------------------- real processes


def test_agent_process_ready_pings_and_stopping(tmp_path: Path, mosquitto: Mosquitto,
                                                fake_systemd: NotifySocket) -> None:
    cfg = gateway_yaml("gw-notify", mosquitto.url, tmp_path / "outbox.db",
                       devices=sim_devices(2, period_s=0.2))
    proc = agent(write_yaml(tmp_path / "gw.yaml", cfg), tmp_path / "agent.log")
    proc.env = fake_systemd.env(WATCHDOG_S)
    proc.start()
    try:
        fake_systemd.wait_for("READY=1")
        fake_systemd.wait_for("WATCHDOG=1", n=5)  # every half interval: regular
        assert any(line.startswith("STATUS=uplink ") for _, line in fake_systemd.lines)
        assert proc.alive()
        assert proc.stop() == 0
        fake_systemd.wait_for("STOPPING=1", within=1)
    finally:
        proc.kill()
    events = [e.get("event") for e in proc.log_events()]
    assert "watchdog_stage_stale" not in events
    ready = next(i for i, (_, line) in enumerate(fake_systemd.lines) if line == "READY=1")
    assert all(line != "WATCHDOG=1" for _, line in fake_systemd.lines[:ready])


def test_a_broker_that_is_down_is_no_reason_to_restart(tmp_path: Path,
                                                       fake_systemd: NotifySocket) -> None:
    """Reconnect waits longer than the watchdog interval still beat: pings go on."""
    closed = f"mqtt://127.0.0.1:{free_port()}"
    cfg = gateway_yaml("gw-offline", closed, tmp_path / "outbox.db", devices=sim_devices(1),
                       uplink={"reconnect": {"initial_s": 3 * WATCHDOG_S,
                                             "max_s": 4 * WATCHDOG_S}})
    proc = agent(write_yaml(tmp_path / "gw.yaml", cfg), tmp_path / "agent.log")
    proc.env = fake_systemd.env(WATCHDOG_S)
    proc.start()
    try:
        fake_systemd.wait_for("READY=1")
        wait_for(lambda: "uplink_reconnecting" in _events(proc), 20, "a reconnect wait")
        # pings every half interval: 12 span 6 intervals, more than a reconnect wait
        fake_systemd.wait_for("WATCHDOG=1", n=fake_systemd.count("WATCHDOG=1") + 12)
        assert proc.stop() == 0
    finally:
        proc.kill()
    assert "watchdog_stage_stale" not in _events(proc)
    assert any(line.startswith("STATUS=uplink down ") for _, line in fake_systemd.lines)


def test_collector_process_ready_pings_and_stopping(tmp_path: Path, mosquitto: Mosquitto,
                                                    fake_systemd: NotifySocket) -> None:
    cfg = collector_yaml(mosquitto.url, tmp_path / "district.db")
    proc = collector(write_yaml(tmp_path / "collector.yaml", cfg), tmp_path / "collector.log")
    proc.env = fake_systemd.env(WATCHDOG_S)
    proc.start()
    try:
        fake_systemd.wait_for("READY=1")
        fake_systemd.wait_for("WATCHDOG=1", n=5)
        assert any(line.startswith("STATUS=subscribed ") for _, line in fake_systemd.lines)
        assert proc.stop() == 0
        fake_systemd.wait_for("STOPPING=1", within=1)
    finally:
        proc.kill()
    assert "watchdog_stage_stale" not in [e.get("event") for e in proc.log_events()]


# ---------------------------------------------------------------- wedged stages, in process


@pytest.mark.parametrize("wedge", ["uplink", "pipeline"])
async def test_a_wedged_stage_stops_the_pings(tmp_path: Path, mosquitto: Mosquitto,
                                              fake_systemd: NotifySocket,
                                              monkeypatch: pytest.MonkeyPatch,
                                              wedge: str) -> None:
    for key, value in fake_systemd.env(WATCHDOG_S).items():
        monkeypatch.setenv(key, value)
    cfg = load_gateway_config(write_yaml(tmp_path / "gw.yaml", gateway_yaml(
        "gw-wedge", mosquitto.url, tmp_path / "outbox.db", devices=sim_devices(1, period_s=0.1))))
    gateway = await Agent.open(cfg)
    wedged = asyncio.Event()

    async def never(*_: Any) -> None:
        """Stuck for good: it never returns and never beats."""
        wedged.set()
        await asyncio.Event().wait()

    if wedge == "uplink":
        # the session connects to the broker for real, then its serve coroutine is stuck
        gateway.uplink._serve = never  # type: ignore[method-assign]
    else:
        gateway.pipeline.run = never  # type: ignore[method-assign]
    ticks = 0

    async def loop_probe() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.05)

    probe = asyncio.create_task(loop_probe())
    running = asyncio.create_task(gateway.run())
    try:
        await wait_until(lambda: fake_systemd.count("READY=1") == 1, 15, "READY=1")
        await wait_until(wedged.is_set, 15, f"the {wedge} is wedged")
        # the last beat was at most the interval ago; a ping at most half an interval later
        await wait_until(lambda: _quiet_for(fake_systemd, 2 * WATCHDOG_S),
                         4 * WATCHDOG_S + 5, "the pings stop")
        before, pings = ticks, fake_systemd.count("WATCHDOG=1")
        await asyncio.sleep(WATCHDOG_S)
        assert fake_systemd.count("WATCHDOG=1") == pings  # still no ping
        assert ticks > before  # while the event loop itself runs on
        assert not running.done()
        if wedge == "uplink":  # the other stages still make progress
            assert gateway.pipeline.counters.committed > 0
    finally:
        running.cancel()
        probe.cancel()
        await asyncio.gather(running, probe, return_exceptions=True)
    assert fake_systemd.count("STOPPING=1") == 1


def _quiet_for(sock: NotifySocket, seconds: float) -> bool:
    """No WATCHDOG=1 in the last `seconds` (and at least one READY before)."""
    last = sock.last_at("WATCHDOG=1")
    ready = sock.last_at("READY=1")
    since = last if last is not None else ready
    return since is not None and time.monotonic() - since > seconds


async def test_a_store_transaction_that_hangs_stops_the_collectors_pings(
        tmp_path: Path, mosquitto: Mosquitto, fake_systemd: NotifySocket,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in fake_systemd.env(WATCHDOG_S).items():
        monkeypatch.setenv(key, value)
    store = open_store(f"sqlite:///{tmp_path / 'district.db'}")
    ingest = Collector(store, Endpoint("127.0.0.1", mosquitto.port), client_id="collector-wd")
    release, entered = threading.Event(), threading.Event()

    def hanging_commit(checked: Any) -> Any:
        entered.set()
        release.wait(60)  # a stalled database: the store thread never comes back
        raise RuntimeError("released by the test")

    ingest.handler.commit = hanging_commit  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(ingest.run(stop))
    announcing = asyncio.create_task(announce(ingest, stop))
    try:
        await wait_until(lambda: fake_systemd.count("READY=1") == 1, 15, "READY=1")
        await wait_until(lambda: fake_systemd.count("WATCHDOG=1") >= 2, 15, "pings while idle")
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="gw-wd") as gw:
            await gw.publish(GatewayTopics(DISTRICT, COMMUNITY, "gw-wd").events, b"{}", qos=1)
        await wait_until(entered.is_set, 15, "the commit hangs")
        await wait_until(lambda: _quiet_for(fake_systemd, 2 * WATCHDOG_S),
                         4 * WATCHDOG_S + 5, "the pings stop")
        assert ingest.beats.stale(WATCHDOG_S).keys() == {"commit"}  # the others run on
    finally:
        release.set()
        stop.set()
        await asyncio.gather(running, announcing, return_exceptions=True)
        store.close()
    assert fake_systemd.count("STOPPING=1") == 1


#: A real `edge-agent run` whose uplink session is stuck once connected (only its serve
#: coroutine replaced), as a separate process.
WEDGED_AGENT = """
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGABRT below: no core file
from edge_agent.uplink.session import Uplink

async def _stuck(self, client):
    print('{"event": "test_uplink_wedged"}', flush=True)
    await asyncio.Event().wait()

Uplink._serve = _stuck
from edge_agent.cli import main
sys.argv = ["edge-agent", "run", "--config", sys.argv[1]]
main()
"""


def test_watchdog_restarts_an_agent_whose_uplink_is_wedged(
        tmp_path: Path, mosquitto: Mosquitto, fake_systemd: NotifySocket) -> None:
    """The test plays systemd's part: no WATCHDOG=1 within the interval -> SIGABRT, then
    Restart=always starts the agent again (this time healthy); what the first run committed
    is still in the outbox for the second."""
    config = write_yaml(tmp_path / "gw.yaml", gateway_yaml(
        "gw-restart", mosquitto.url, tmp_path / "outbox.db", devices=sim_devices(2)))
    wedged = agent(config, tmp_path / "wedged.log")
    wedged.argv = [sys.executable, "-c", WEDGED_AGENT, str(config)]
    wedged.env = fake_systemd.env(WATCHDOG_S)
    wedged.start()
    healthy = agent(config, tmp_path / "healthy.log")
    healthy.env = fake_systemd.env(WATCHDOG_S)
    try:
        fake_systemd.wait_for("READY=1")
        wait_for(lambda: "test_uplink_wedged" in _events(wedged), 20, "the uplink wedged")
        # systemd's rule: no ping for WatchdogSec -> WatchdogSignal (SIGABRT)
        wait_for(lambda: _quiet_for(fake_systemd, WATCHDOG_S), 4 * WATCHDOG_S + 5,
                 "the pings stop", every=0.05)
        assert wedged.alive()
        assert wedged.proc is not None
        wedged.proc.send_signal(signal.SIGABRT)
        assert wedged.proc.wait(10) == -signal.SIGABRT
        stale = [e for e in wedged.log_events() if e.get("event") == "watchdog_stage_stale"]
        assert [e["stages"] for e in stale] == [["uplink"]]
        healthy.start()  # Restart=always
        fake_systemd.wait_for("READY=1", n=2)
        pings = fake_systemd.count("WATCHDOG=1")
        fake_systemd.wait_for("WATCHDOG=1", n=pings + 3)
        assert healthy.stop() == 0
    finally:
        wedged.kill()
        healthy.kill()
    started = [e for e in healthy.log_events() if e.get("event") == "agent_started"]
    assert started[0]["backlog"] > 0  # the wedged run's commits survived its SIGABRT


def _events(proc: Proc) -> list[Any]:
    return [e.get("event") for e in proc.log_events()]
