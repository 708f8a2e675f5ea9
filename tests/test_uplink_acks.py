"""What an ack can make the agent do, and when the agent resends: the real agent process
or the real uplink, a real Mosquitto, a real collector."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import aiomqtt
import pytest

from edge_agent.config.models import UplinkConfig
from edge_agent.contract.topics import GatewayTopics
from edge_agent.contract.wire import Ack
from edge_agent.uplink.resend import ResendPolicy
from edge_agent.uplink.session import FRESH_SESSION_S
from tests.harness import (
    COMMUNITY,
    DISTRICT,
    agent,
    collector,
    collector_yaml,
    gateway_yaml,
    peak_rss,
    query,
    sim_devices,
    wait_for,
    write_yaml,
)
from tests.peers import Mosquitto, free_port

#: Generous bound on the agent's peak RSS after a hostile ack (it idles at ~60 MiB here;
#: expanding the ranges below took it past 800 MiB).
PEAK_RSS_MAX = 250 * 1024 * 1024
#: Long, so that a resend on the timer cannot pass for one on the collector's presence.
ACK_TIMEOUT_S = 120.0
#: tests.harness.collector_yaml's collector id


def stored_count(store: Path) -> int:
    rows = query(store, "SELECT COUNT(*) FROM events")
    return int(rows[0][0]) if rows else 0


async def test_a_hostile_ack_costs_no_more_than_what_is_in_flight(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    store, gw = tmp_path / "district.db", "gw-ack"
    col = collector(write_yaml(tmp_path / "c.yaml", collector_yaml(mosquitto.url, store)),
                    tmp_path / "c.log").start()
    ag = agent(write_yaml(tmp_path / "g.yaml", gateway_yaml(
        gw, mosquitto.url, tmp_path / "o.db", devices=sim_devices(2, period_s=0.05))),
        tmp_path / "a.log").start()
    try:
        wait_for(lambda: stored_count(store) > 20, 40, "first events in the store")
        started = next(e for e in ag.log_events() if e.get("event") == "agent_started")
        assert ag.proc is not None
        before = peak_rss(ag.proc.pid)
        # 8 ranges of a million seqs each: 8 million seqs named in ~200 bytes.
        hostile = Ack(started["epoch"], [[1 + i * 1_000_000, (i + 1) * 1_000_000 - 1]
                                         for i in range(8)])
        assert len(hostile.encode()) < 300
        topics = GatewayTopics(DISTRICT, COMMUNITY, gw)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="attacker") as c:
            for _ in range(3):
                await c.publish(topics.ack, hostile.encode(), qos=1)
        # acks arrive in order: once later events are acked, the hostile ones were handled
        stored = stored_count(store)
        wait_for(lambda: stored_count(store) > stored + 40, 60, "events still flowing")
        assert ag.alive()
        after = peak_rss(ag.proc.pid)
        print(f"agent peak RSS before the hostile acks {before / 2**20:.0f} MiB, "
              f"after {after / 2**20:.0f} MiB")
        assert after < PEAK_RSS_MAX, f"peak RSS {after / 2**20:.0f} MiB"
        warning = next(e for e in ag.log_events() if e.get("event") == "ack_seqs_not_in_flight")
        assert warning["ignored"] > 7_000_000 and warning["level"] == "warning"
        # rate-limited: three hostile acks, one line
        assert sum(e.get("event") == "ack_seqs_not_in_flight" for e in ag.log_events()) == 1
    finally:
        assert ag.stop() == 0
        col.stop()
    json.dumps(warning)  # the log line is plain JSON


def test_batches_missed_by_a_late_collector_are_resent_when_it_comes_online(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Batches published while no collector listens are lost by the broker; the agent
    resends them when the real collector's presence says `online` (published by the
    collector once subscribed), not `ack_timeout_s` later."""
    store, gw = tmp_path / "district.db", "gw-late"
    ag = agent(write_yaml(tmp_path / "g.yaml", gateway_yaml(
        gw, mosquitto.url, tmp_path / "o.db", uplink={"ack_timeout_s": ACK_TIMEOUT_S},
        devices=sim_devices(1, period_s=0.2, alarm_every_s=1.0))), tmp_path / "a.log").start()
    col = collector(write_yaml(tmp_path / "c.yaml", collector_yaml(mosquitto.url, store)),
                    tmp_path / "c.log")
    try:
        wait_for(lambda: any(e.get("event") == "uplink_connected" for e in ag.log_events()),
                 30, "the agent connected")
        time.sleep(FRESH_SESSION_S + 1)  # past the short timeout of a fresh session
        wait_for(lambda: sum(e.get("event") == "device_state" for e in ag.log_events()), 10,
                 "events made while no collector listens")
        assert stored_count(store) == 0
        said = time.monotonic()
        col.start()  # it publishes its retained `online` once subscribed
        # The whole backlog, seq 1 first, well before the ack timeout would resend it.
        wait_for(lambda: query(store, "SELECT COUNT(*) FROM events WHERE seq = 1") == [(1,)],
                 ACK_TIMEOUT_S / 4, "the missed batches resent on the collector's online",
                 every=0.05)
        print(f"missed batches stored {time.monotonic() - said:.2f} s after the collector "
              f"started (ack_timeout_s {ACK_TIMEOUT_S})")
        assert any(e.get("event") == "collector_online" for e in ag.log_events())
    finally:
        assert ag.stop() == 0
        col.stop()


def test_batches_held_by_a_collector_that_died_are_resent_when_it_goes_offline(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Two collectors share the events; one hangs (SIGSTOP) holding its share of the
    batches, then is SIGKILLed: its Last Will says `offline` and the agent resends what
    is in flight at once to the one still there, not `ack_timeout_s` later."""
    store, gw = tmp_path / "district.db", "gw-orphan"
    c1, c2 = (collector(write_yaml(tmp_path / f"{cid}.yaml",
                                   collector_yaml(mosquitto.url, store, cid=cid)),
                        tmp_path / f"{cid}.log") for cid in ("c1", "c2"))
    ag = agent(write_yaml(tmp_path / "g.yaml", gateway_yaml(
        gw, mosquitto.url, tmp_path / "o.db", uplink={"ack_timeout_s": ACK_TIMEOUT_S},
        devices=sim_devices(2, period_s=0.1, alarm_every_s=1.0))), tmp_path / "a.log")
    try:
        c1.start()
        wait_for(store.exists, 30, "the store")
        c2.start()
        wait_for(lambda: any(e.get("event") == "broker_connected" for e in c2.log_events()),
                 30, "the second collector subscribed")
        ag.start()
        wait_for(lambda: stored_count(store) > 20, 30, "events flowing")
        time.sleep(FRESH_SESSION_S + 1)  # past the short timeout of a fresh session
        assert c2.proc is not None
        c2.proc.send_signal(signal.SIGSTOP)  # hangs with the batches it is handed
        wait_for(lambda: hole(store, gw), 10, "a batch held by the hung collector")
        c2.kill()
        killed = time.monotonic()
        wait_for(lambda: not hole(store, gw), ACK_TIMEOUT_S / 4,
                 "the held batches resent on the collector's offline", every=0.05)
        print(f"held batches stored {time.monotonic() - killed:.2f} s after the SIGKILL "
              f"(ack_timeout_s {ACK_TIMEOUT_S})")
        assert any(e.get("event") == "collector_offline" for e in ag.log_events())
    finally:
        assert ag.stop() == 0
        c1.stop()
        c2.kill()


def hole(store: Path, gateway: str) -> bool:
    """The gateway's stream has a gap below its highest stored seq."""
    return bool(query(store, "SELECT 1 FROM streams WHERE gateway = ? "
                             "AND contiguous_through < high_seq", gateway))


#: The stall of the collector, and the agent's ack timeout in that test: short, so that the
#: stall spans many timeouts in a few seconds.
STALL_S = 6.0
STALL_ACK_TIMEOUT_S = 0.5


@pytest.mark.parametrize("cap_s", [STALL_ACK_TIMEOUT_S, 4.0], ids=["fixed", "back-off"])
def test_resends_back_off_while_the_collector_stalls_and_everything_is_stored_once(
        tmp_path: Path, mosquitto: Mosquitto, cap_s: float) -> None:
    """The real collector hangs (SIGSTOP) for STALL_S s: no ack comes. With the back-off
    every batch in flight is resent at most as often as its schedule allows
    (`ResendPolicy.max_timeouts`, at most `max_inflight_batches` batches); with a fixed
    timeout (`ack_timeout_max_s` = `ack_timeout_s`: the policy before) far more often.
    Once the collector runs again, every event is stored exactly once, with no hole."""
    store, gw = tmp_path / "district.db", "gw-stall"
    col = collector(write_yaml(tmp_path / "c.yaml", collector_yaml(mosquitto.url, store)),
                    tmp_path / "c.log").start()
    uplink = {"ack_timeout_s": STALL_ACK_TIMEOUT_S, "ack_timeout_max_s": cap_s}
    cfg = gateway_yaml(gw, mosquitto.url, tmp_path / "o.db", uplink=uplink,
                       devices=sim_devices(2, period_s=0.1, alarm_every_s=1.0))
    port = free_port()
    cfg["status_page"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
    ag = agent(write_yaml(tmp_path / "g.yaml", cfg), tmp_path / "a.log")
    # the most timeouts of one batch during the stall (and the reading of the logs)
    per_batch = ResendPolicy(STALL_ACK_TIMEOUT_S, 4.0).max_timeouts(STALL_S + 1)
    bound = UplinkConfig(broker=mosquitto.url).max_inflight_batches * per_batch
    try:
        wait_for(lambda: any(e.get("event") == "broker_connected" for e in col.log_events()),
                 30, "the collector subscribed")
        ag.start()
        wait_for(lambda: stored_count(store) > 20, 30, "events flowing")
        time.sleep(FRESH_SESSION_S)  # past the short timeout of a fresh session
        assert col.proc is not None
        before = resends(port)
        col.proc.send_signal(signal.SIGSTOP)
        time.sleep(STALL_S)
        during = resends(port) - before
        col.proc.send_signal(signal.SIGCONT)
        print(f"resends during a {STALL_S:g} s stall, ack_timeout_s {STALL_ACK_TIMEOUT_S}, "
              f"ack_timeout_max_s {cap_s}: {during} (back-off bound {bound})")
        if cap_s > STALL_ACK_TIMEOUT_S:
            assert 0 < during <= bound
        else:
            assert during > bound  # the fixed timeout: what the bound is there to stop
        stalled = stored_count(store)
        wait_for(lambda: stored_count(store) > stalled + 20 * STALL_S and not hole(store, gw),
                 30, "the events of the stall stored, no hole")
    finally:
        assert ag.stop() == 0
        col.stop()
    count, distinct, first, last = query(
        store, "SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM events "
               "WHERE gateway = ?", gw)[0]
    assert count == distinct == last and first == 1  # each seq once, none missing
    assert query(store, "SELECT COUNT(*) FROM quarantine") == [(0,)]


def resends(port: int) -> int:
    """The agent's count of batches sent again (`/api/status`: the log lines are
    rate-limited)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as resp:
        return int(json.load(resp)["uplink"]["resends"])
