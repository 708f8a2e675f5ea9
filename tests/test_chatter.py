"""Chatter control: a flapping alarm is reported once as `<kind>.chattering`, not toggle by
toggle, and the alarm's state at the end of the chatter is right.

The guard is checked on its own (data-driven), then against real peers: a pymodbus
server whose `forced_open` bit flaps faster than the gate controller is polled, and a
socat pty panel printing ALARM/NORMAL for one zone in a loop, each through the real
pipeline into a real outbox capped at 1 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.device import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from drivers.serial_line import SerialLineDevice
from drivers.serial_line.alarms import AlarmTracker
from drivers.serial_line.driver import SerialLineDriver
from drivers.serial_line.options import AlarmSpec
from edge_agent.config.models import ChatterConfig, DeviceConfig
from edge_agent.contract.envelope import schema
from edge_agent.outbox.store import Outbox
from edge_agent.outbox.thread import OutboxThread
from edge_agent.pipeline.core import Pipeline
from edge_agent.pipeline.open_alarms import OpenAlarm, OpenAlarms
from edge_agent.rules.chatter import ChatterGuard
from edge_agent.rules.engine import DeviceRules, parse_rules
from edge_agent.sdk.api import Driver
from edge_agent.sdk.testing import TEST_HIERARCHY as H
from edge_agent.sdk.testing import RecordingSink, running
from tests.aio import cancel_and_wait
from tests.harness import wait_until
from tests.modbus_servers import GATE, ModbusServer, Unit, pty_pair

POLICY = ChatterConfig(max_toggles_per_min=10, calm_s=1.5)
OUTBOX_CAP = 1024 * 1024  # the outbox of the report: 1 MiB


# --------------------------------------------------------------------------- the guard


def run_guard(toggles: Sequence[tuple[float, bool]], policy: ChatterConfig = POLICY,
              settle_at: float | None = None) -> list[str]:
    """Feed (time, active) toggles; what the caller would emit, in order."""
    guard, reported, active, out = ChatterGuard(policy), False, False, []
    for now, active in toggles:
        verdict = guard.toggle(active, reported, now)
        if verdict.start:
            out.append(f"chatter:raised:{verdict.toggles}")
        if verdict.send:
            reported = active
            out.append("raised" if active else "cleared")
    if settle_at is not None:
        calm = guard.settle(active, reported, settle_at)
        if calm is not None:
            if calm.send:
                out.append("raised" if active else "cleared")
            out.append(f"chatter:cleared:{calm.toggles}")
    return out


def flaps(n: int, every_s: float = 0.5, start: bool = True) -> list[tuple[float, bool]]:
    return [(i * every_s, (i % 2 == 0) == start) for i in range(n)]


@pytest.mark.parametrize(("toggles", "settle_at", "expected"), [
    # ten toggles a minute are ten events: no chatter
    (flaps(10), 60.0, ["raised", "cleared"] * 5),
    # the same spread over more than a minute never counts as chatter
    (flaps(30, every_s=7.0), 300.0, ["raised", "cleared"] * 15),
    # the eleventh starts it (a raise while reported cleared is still sent), the rest
    # is counted; it ends in alarm: the alarm stays raised
    (flaps(25), 20.0, ["raised", "cleared"] * 5 + ["chatter:raised:11", "raised",
                                                  "chatter:cleared:15"]),
    # it ends normal: the raise sent during the chatter is cleared at the end
    (flaps(26), 20.0, ["raised", "cleared"] * 5 + ["chatter:raised:11", "raised", "cleared",
                                                  "chatter:cleared:16"]),
    # not calm yet: nothing more
    (flaps(26), 13.0, ["raised", "cleared"] * 5 + ["chatter:raised:11", "raised"]),
])
def test_the_guard_counts_toggles_and_puts_the_state_right(
        toggles: list[tuple[float, bool]], settle_at: float, expected: list[str]) -> None:
    assert run_guard(toggles, settle_at=settle_at) == expected


def test_a_guard_switched_off_sends_every_toggle() -> None:
    off = ChatterConfig(enabled=False)
    assert run_guard(flaps(40), off, settle_at=100.0) == ["raised", "cleared"] * 20


def test_a_rule_overrides_the_gateway_setting() -> None:
    rules = parse_rules([{"type": "gate.forced_open", "when": {"point": "forced"},
                          "chatter": {"max_toggles_per_min": 4}}], ["forced"])
    sink = RecordingSink()
    now = [0.0]
    device = DeviceRules("gate-1", rules, sink, clock=lambda: now[0], chatter=POLICY)
    for i in range(8):
        now[0] = float(i)
        device.update({"forced": i % 2 == 0}, observed_at=1000.0 + i)
    (chatter,) = sink.of("gate.chattering")
    assert chatter.data["toggles"] == 5 and chatter.data["alarm_type"] == "gate.forced_open"
    assert [e.data["state"] for e in sink.of("gate.forced_open")] == ["raised", "cleared"] * 2 \
        + ["raised"]
    assert not sink.invalid


# --------------------------------------------------------------------------- real peers


@contextlib.asynccontextmanager
async def agent_pieces(tmp_path: Path, driver: type[Any], devices: list[DeviceConfig]
                       ) -> AsyncIterator[Pipeline]:
    """Outbox (1 MiB cap), pipeline with the chatter policy, the driver."""
    outbox = await OutboxThread.open(tmp_path / "outbox.db", max_bytes=OUTBOX_CAP, hierarchy=H)
    pipeline = Pipeline(H, outbox, commit_linger_s=0.01)
    pipeline.open_alarms = OpenAlarms(tmp_path / "open-alarms.json")
    pipeline.alarm_chatter = POLICY
    built: Driver = driver(devices, pipeline)
    pipe_task = asyncio.create_task(pipeline.run())
    try:
        async with running(built):
            yield pipeline
    finally:
        await cancel_and_wait(pipe_task)
        await outbox.close()


def stored(tmp_path: Path) -> tuple[list[dict[str, Any]], int]:
    """The outbox's alarm rows (bodies) and the bytes it holds."""
    with Outbox.open(tmp_path / "outbox.db", max_bytes=OUTBOX_CAP, hierarchy=H) as box:
        rows = box.fetch(lane=1, after_seq=0, limit=100_000, max_bytes=10**9)
        size = box.stats().bytes
    return [json.loads(r.body) for r in rows], size


def of(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == type_]


def open_alarm_types(tmp_path: Path) -> list[str]:
    ledger = json.loads((tmp_path / "open-alarms.json").read_text("utf-8"))
    return sorted(entry[1] for entry in ledger["open"])


def assert_valid(events: list[dict[str, Any]]) -> None:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema())
    for body in events:
        assert not list(validator.iter_errors(body)), body


@pytest.mark.parametrize("ends_in_alarm", [True, False])
async def test_a_flapping_modbus_alarm_is_reported_once_and_ends_right(
        tmp_path: Path, ends_in_alarm: bool) -> None:
    async with ModbusServer([Unit.of(1, "gate-controller", {**GATE, "forced_open": False})]
                            ) as server:
        device = ModbusDevice.model_validate({
            "id": "gate-1", "driver": "modbus", "profile": "gate-controller", "unit_id": 1,
            "tcp": {"host": "127.0.0.1", "port": server.port}, "period_s": 0.02})
        async with agent_pieces(tmp_path, ModbusDriver, [device]) as pipeline:
            seen: list[Any] = []
            pipeline.on_event = seen.append
            await wait_until(lambda: any(e.type == "gate.state" for e in seen), 10, "first poll")
            flips = 0
            while flips < 80:  # a loose contact: ~80 toggles in ~5 s
                await server.set(1, forced_open=flips % 2 == 0)
                flips += 1
                await asyncio.sleep(0.06)
            await server.set(1, forced_open=ends_in_alarm)
            await wait_until(lambda: any(e.type == "gate.chattering"
                                         and e.data["state"] == "cleared" for e in seen),
                             15, "the chatter calmed down")
            suppressed = pipeline.counters.alarm_toggles_suppressed
            await asyncio.sleep(0.1)  # committed
    events, size = stored(tmp_path)
    assert_valid(events)
    forced = of(events, "gate.forced_open")
    chatter = of(events, "gate.chattering")
    assert [c["state"] for c in chatter] == ["raised", "cleared"]
    assert chatter[1]["final_state"] == ("raised" if ends_in_alarm else "cleared")
    toggles = chatter[1]["toggles"]
    assert toggles > 20 and toggles - 1 <= suppressed <= toggles
    assert len(forced) <= POLICY.max_toggles_per_min + 3, "toggles counted, not stored"
    assert forced[-1]["state"] == ("raised" if ends_in_alarm else "cleared")
    assert size < 64 * 1024
    open_types = open_alarm_types(tmp_path)
    assert open_types == (["gate.forced_open", "gate.held_open"] if ends_in_alarm
                          else ["gate.held_open"])


PANEL = {
    "id": "fire-panel", "driver": "serial_line", "baudrate": 9600, "delimiter": "\r\n",
    "idle_timeout_s": 0,
    "frames": [{"name": "zone",
                "match": r"FIRE ZONE (?P<zone>\d{2,3}) (?P<status>ALARM|NORMAL)",
                "alarms": [{"type": "smoke.alarm", "per": "zone", "state": "status",
                            "raise": ["ALARM"], "clear": ["NORMAL"]}]}],
}


@pytest.mark.parametrize("ends_in_alarm", [True, False])
async def test_a_flapping_panel_zone_is_reported_once_and_ends_right(
        tmp_path: Path, ends_in_alarm: bool) -> None:
    async with pty_pair(tmp_path) as (panel_end, agent_end):
        device = SerialLineDevice.model_validate({**PANEL, "port": agent_end})
        fd = os.open(panel_end, os.O_WRONLY | os.O_NOCTTY)
        try:
            async with agent_pieces(tmp_path, SerialLineDriver, [device]) as pipeline:
                seen: list[Any] = []
                pipeline.on_event = seen.append
                await wait_until(lambda: "fire-panel" in pipeline.devices
                                 and pipeline.devices["fire-panel"].state == "online", 5,
                                 "the port is open")
                os.write(fd, b"FIRE ZONE 07 ALARM\r\n")  # a real fire elsewhere
                for i in range(400):  # zone 03 flaps: 400 lines in ~2 s
                    os.write(fd, b"FIRE ZONE 03 %s\r\n" % (b"ALARM" if i % 2 == 0 else b"NORMAL"))
                    await asyncio.sleep(0.005)
                os.write(fd, b"FIRE ZONE 03 %s\r\n" % (b"ALARM" if ends_in_alarm else b"NORMAL"))
                await wait_until(lambda: any(e.type == "smoke.chattering"
                                             and e.data["state"] == "cleared" for e in seen),
                                 15, "the chatter calmed down")
                suppressed = pipeline.counters.alarm_toggles_suppressed
                await asyncio.sleep(0.1)
        finally:
            os.close(fd)
    events, size = stored(tmp_path)
    assert_valid(events)
    zone3 = [d for d in of(events, "smoke.alarm") if d["zone"] == "03"]
    zone7 = [d for d in of(events, "smoke.alarm") if d["zone"] == "07"]
    chatter = of(events, "smoke.chattering")
    assert [c["state"] for c in chatter] == ["raised", "cleared"]
    assert all(c["zone"] == "03" and c["alarm_type"] == "smoke.alarm" for c in chatter)
    assert chatter[1]["final_state"] == ("raised" if ends_in_alarm else "cleared")
    toggles = chatter[1]["toggles"]
    assert toggles > 300 and toggles - 1 <= suppressed <= toggles
    assert len(zone3) <= POLICY.max_toggles_per_min + 3, "toggles counted, not stored"
    assert zone3[-1]["state"] == ("raised" if ends_in_alarm else "cleared")
    assert [d["state"] for d in zone7] == ["raised"], "the other zone's fire is kept"
    assert size < 64 * 1024
    assert open_alarm_types(tmp_path) == ["smoke.alarm"] * (2 if ends_in_alarm else 1)


class RestoringSink(RecordingSink):
    """Gives back a chattering alarm (and its alarm) left open by the last run."""

    def restored_alarms(self, device: str) -> list[OpenAlarm]:
        return [OpenAlarm("gate.forced_open", "forced-before", {}),
                OpenAlarm("gate.chattering", "chatter-before",
                          {"alarm_type": "gate.forced_open", "toggles": 11})]


def test_a_chattering_alarm_left_open_by_the_last_run_is_cleared_once_calm() -> None:
    rules = parse_rules([{"type": "gate.forced_open", "when": {"point": "forced"}}],
                        ["forced"])
    sink = RestoringSink()
    now = [100.0]
    device = DeviceRules("gate-1", rules, sink, clock=lambda: now[0], chatter=POLICY)
    device.update({"forced": False}, observed_at=1000.0)  # it calmed down while we were off
    assert sink.events == []
    now[0] += POLICY.calm_s
    device.update({"forced": False}, observed_at=1001.0)
    assert [(e.type, e.data["state"], e.data["alarm_id"]) for e in sink.events] == [
        ("gate.forced_open", "cleared", "forced-before"),
        ("gate.chattering", "cleared", "chatter-before")]
    assert sink.events[1].data["final_state"] == "cleared" and not sink.invalid


def test_a_chattering_zone_left_open_by_the_last_run_is_cleared_once_calm() -> None:
    spec = AlarmSpec.model_validate({"type": "smoke.alarm", "per": "zone", "state": "status",
                                     "raise": ["ALARM"], "clear": ["NORMAL"]})
    sink = RecordingSink()
    tracker = AlarmTracker("panel", sink, chatter=POLICY)
    tracker.restore([spec], [OpenAlarm("smoke.alarm", "zone-3-before", {"zone": "03"}),
                             OpenAlarm("smoke.chattering", "chatter-before",
                                       {"zone": "03", "alarm_type": "smoke.alarm"})])
    started = time.time()
    tracker.apply(spec, {"zone": "03", "status": "ALARM"}, started)  # still in alarm
    tracker.settle(started + POLICY.calm_s + 1)
    assert [(e.type, e.data["state"], e.data["alarm_id"]) for e in sink.events] == [
        ("smoke.chattering", "cleared", "chatter-before")]
    assert sink.events[0].data["final_state"] == "raised"
    assert tracker.raised() == {"smoke.alarm": ["zone-3-before"]} and not sink.invalid


def test_a_panel_reset_during_chatter_clears_the_zone_once_calm() -> None:
    spec = AlarmSpec.model_validate({"type": "smoke.alarm", "per": "zone", "state": "status",
                                     "raise": ["ALARM"], "clear": ["NORMAL"]})
    sink = RecordingSink()
    tracker = AlarmTracker("panel", sink, chatter=POLICY)
    for i in range(13):  # the 11th toggle starts the chatter; the zone ends in alarm
        tracker.apply(spec, {"zone": "03", "status": "ALARM" if i % 2 == 0 else "NORMAL"},
                      1000.0 + i * 0.1)
    tracker.clear_all(["smoke.alarm"], 1002.0)  # SYSTEM RESET
    tracker.clear_all(["smoke.alarm"], 1002.1)  # repeated: nothing more
    tracker.settle(1002.1 + POLICY.calm_s)
    states = [(e.type, e.data["state"]) for e in sink.events]
    assert states[-4:] == [("smoke.chattering", "raised"), ("smoke.alarm", "raised"),
                           ("smoke.alarm", "cleared"), ("smoke.chattering", "cleared")]
    assert sink.events[-1].data["toggles"] == 4  # the 11th, 12th, 13th and the reset
    assert tracker.raised() == {} and not sink.invalid
