"""Alarms open when the agent stops go on under their ids after it starts again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from drivers.modbus.device import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from edge_agent.contract.envelope import new_event
from edge_agent.outbox.store import Outbox
from edge_agent.outbox.thread import OutboxThread
from edge_agent.pipeline.core import Pipeline
from edge_agent.pipeline.open_alarms import OpenAlarm, OpenAlarms
from edge_agent.rules.engine import DeviceRules
from edge_agent.sdk.testing import TEST_HIERARCHY as H
from edge_agent.sdk.testing import RecordingSink, running
from tests.aio import cancel_and_wait
from tests.harness import wait_until
from tests.modbus_servers import SMOKE, ModbusServer, Unit


def alarm(device: str, type_: str, alarm_id: str, state: str) -> Any:
    return new_event(H, device, type_, {"state": state, "alarm_id": alarm_id})


def test_open_alarms_are_kept_in_a_file_until_cleared(tmp_path: Path) -> None:
    path = tmp_path / "open-alarms.json"
    ledger = OpenAlarms(path)
    ledger.record(new_event(H, "smoke-1", "smoke.alarm",
                            {"state": "raised", "alarm_id": "a1", "density_db_m": 0.2}))
    ledger.record(alarm("gate-1", "gate.forced_open", "f1", "raised"))
    ledger.record(alarm("gate-1", "gate.forced_open", "f1", "cleared"))
    ledger.record(new_event(H, "smoke-1", "smoke.reading", {"battery_pct": 80}))
    ledger.save()  # the pipeline's loop or its clean stop
    again = OpenAlarms(path)
    assert len(again) == 1
    assert again.claim("smoke-1") == [OpenAlarm("smoke.alarm", "a1", {"density_db_m": 0.2})]
    assert again.claim("gate-1") == []


def test_an_unreadable_file_is_logged_and_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "open-alarms.json"
    path.write_text("{not json", "utf-8")
    with structlog.testing.capture_logs() as logs:
        ledger = OpenAlarms(path)
    assert len(ledger) == 0 and logs[0]["event"] == "open_alarms_unreadable"
    ledger.record(alarm("smoke-1", "smoke.alarm", "a2", "raised"))
    ledger.save()
    assert json.loads(path.read_text("utf-8")) == {"open": [["smoke-1", "smoke.alarm", "a2", {}]]}


def test_a_storm_of_raises_is_written_at_most_once_per_interval(tmp_path: Path) -> None:
    """Changes mark the set dirty; `save_if_due` writes it when the last write is
    SAVE_INTERVAL_S old (not once per alarm: N raises were O(N^2) bytes on flash)."""
    path = tmp_path / "open-alarms.json"
    ledger = OpenAlarms(path, save_interval_s=1.0)
    ledger.record(alarm("panel", "smoke.alarm", "z0", "raised"))
    assert not path.exists(), "a change alone writes nothing"
    assert ledger.save_in(100.0) == 0.0
    ledger.save_if_due(100.0)
    assert len(json.loads(path.read_text("utf-8"))["open"]) == 1
    mtime = path.stat().st_mtime_ns
    for zone in range(1, 500):
        ledger.record(alarm("panel", "smoke.alarm", f"z{zone}", "raised"))
    now = time.monotonic()
    wait = ledger.save_in(now)
    assert wait is not None and 0 < wait <= 1.0, "the last write is too recent"
    ledger.save_if_due(now)
    assert path.stat().st_mtime_ns == mtime
    assert len(json.loads(path.read_text("utf-8"))["open"]) == 1, "not written yet"
    ledger.save_if_due(now + 1.0)
    assert len(json.loads(path.read_text("utf-8"))["open"]) == 500
    assert ledger.save_in(now + 5.0) is None, "nothing left to write"
    ledger.record(alarm("panel", "smoke.alarm", "z999", "cleared"))  # not open: no change
    assert not ledger.dirty


def test_the_cap_holds_two_full_fire_panels_and_pushing_out_is_logged(tmp_path: Path) -> None:
    from drivers.serial_line.alarms import MAX_ACTIVE
    from edge_agent.pipeline.open_alarms import MAX_OPEN

    assert MAX_OPEN >= 2 * MAX_ACTIVE
    path = tmp_path / "open-alarms.json"
    ledger = OpenAlarms(path, max_open=3)
    with structlog.testing.capture_logs() as logs:
        for n in range(5):
            ledger.record(alarm("panel", "smoke.alarm", f"z{n}", "raised"))
    pushed = [entry for entry in logs if entry["event"] == "open_alarms_pushed_out"]
    assert [(e["alarm_id"], e["pushed_out_total"], e["log_level"]) for e in pushed] == [
        ("z0", 1, "warning"), ("z1", 2, "warning")]
    assert ledger.pushed_out == 2
    assert [a.alarm_id for a in ledger.claim("panel")] == ["z2", "z3", "z4"]


async def test_the_pipeline_writes_changes_from_its_loop_and_at_a_clean_stop(
        tmp_path: Path) -> None:
    path = tmp_path / "open-alarms.json"
    outbox = await OutboxThread.open(tmp_path / "outbox.db", max_bytes=10**8, hierarchy=H)
    pipeline = Pipeline(H, outbox, commit_linger_s=0.01)
    pipeline.open_alarms = OpenAlarms(path, save_interval_s=0.2)
    task = asyncio.create_task(pipeline.run())
    try:
        pipeline.emit("panel", "smoke.alarm", {"state": "raised", "alarm_id": "z1"})
        await wait_until(path.exists, 5, "written by the pipeline's loop")
        for n in range(2, 50):
            pipeline.emit("panel", "smoke.alarm", {"state": "raised", "alarm_id": f"z{n}"})
        # idle, the loop comes back for the pending write
        await wait_until(lambda: len(json.loads(path.read_text("utf-8"))["open"]) == 49, 5)
        pipeline.open_alarms.save_interval_s = 3600.0  # from now on only the stop writes
        pipeline.emit("panel", "smoke.alarm", {"state": "cleared", "alarm_id": "z1"})
        await asyncio.sleep(0.3)
        assert len(json.loads(path.read_text("utf-8"))["open"]) == 49
    finally:
        await cancel_and_wait(task)
        await outbox.close()
    assert len(json.loads(path.read_text("utf-8"))["open"]) == 48


class RestoringSink(RecordingSink):
    def restored_alarms(self, device: str) -> list[OpenAlarm]:
        return ([OpenAlarm("smoke.alarm", "before-restart", {})] if device == "smoke-1"
                else [])


def test_rules_go_on_with_a_restored_alarm_and_clear_it_under_its_id() -> None:
    from drivers.modbus.profile import load_profile

    now = [0.0]
    sink = RestoringSink()
    rules = DeviceRules("smoke-1", load_profile("smoke-detector").events, sink,
                        clock=lambda: now[0])
    values = {"alarm": True, "fault": False, "density": 0.1, "temperature": 20.0,
              "battery": 90, "fault_code": 0}
    for t in (0.0, 5.0):  # well past the 2 s debounce
        now[0] = t
        rules.update(values)
    assert sink.of("smoke.alarm") == [], "still in alarm: no second raise"
    for t in (6.0, 9.0):
        now[0] = t
        rules.update({**values, "alarm": False})
    (cleared,) = sink.of("smoke.alarm")
    assert cleared.data["state"] == "cleared" and cleared.data["alarm_id"] == "before-restart"
    assert not sink.invalid


@contextlib.asynccontextmanager
async def agent_run(tmp_path: Path, port: int) -> AsyncIterator[Pipeline]:
    """The agent's own pieces (outbox, pipeline with its open-alarm file, Modbus driver)."""
    outbox = await OutboxThread.open(tmp_path / "outbox.db", max_bytes=10**8, hierarchy=H)
    pipeline = Pipeline(H, outbox, commit_linger_s=0.01)
    pipeline.open_alarms = OpenAlarms(tmp_path / "open-alarms.json")
    device = ModbusDevice.model_validate({
        "id": "smoke-1", "driver": "modbus", "profile": "smoke-detector", "unit_id": 1,
        "tcp": {"host": "127.0.0.1", "port": port}, "period_s": 0.1})
    pipe_task = asyncio.create_task(pipeline.run())
    try:
        async with running(ModbusDriver([device], pipeline)):
            yield pipeline
    finally:
        await cancel_and_wait(pipe_task)
        await outbox.close()


def smoke_alarms(tmp_path: Path) -> list[dict[str, Any]]:
    with Outbox.open(tmp_path / "outbox.db", max_bytes=10**8, hierarchy=H) as box:
        rows = box.fetch(lane=1, after_seq=0, limit=1000, max_bytes=10**8)
    return [json.loads(r.body)["data"] for r in rows if r.type == "smoke.alarm"]


async def test_an_alarm_open_across_a_restart_keeps_its_id(tmp_path: Path) -> None:
    async with ModbusServer([Unit.of(1, "smoke-detector", SMOKE)]) as server:
        async with agent_run(tmp_path, server.port) as pipeline:
            seen: list[Any] = []
            pipeline.on_event = seen.append
            await wait_until(lambda: [e for e in seen if e.type == "smoke.alarm"], 10)
            await asyncio.sleep(0.1)  # committed
        (raised,) = smoke_alarms(tmp_path)
        assert raised["state"] == "raised"
        async with agent_run(tmp_path, server.port) as pipeline:  # restarted, still in alarm
            seen = []
            pipeline.on_event = seen.append
            await asyncio.sleep(3.0)  # past the 2 s debounce: a new raise would be here
            assert [e for e in seen if e.type == "smoke.alarm"] == []
            await server.set(1, alarm=False)
            await wait_until(lambda: [e for e in seen if e.type == "smoke.alarm"], 10)
            await asyncio.sleep(0.1)
    alarms = smoke_alarms(tmp_path)
    assert [a["state"] for a in alarms] == ["raised", "cleared"]
    assert alarms[1]["alarm_id"] == raised["alarm_id"]
    assert json.loads((tmp_path / "open-alarms.json").read_text("utf-8")) == {"open": []}


def test_a_fire_panel_zone_left_in_alarm_is_taken_back_and_cleared_under_its_id() -> None:
    from drivers.serial_line.alarms import AlarmTracker
    from drivers.serial_line.options import AlarmSpec

    spec = AlarmSpec.model_validate({"type": "smoke.alarm", "per": "zone", "state": "status",
                                     "raise": ["ALARM"], "clear": ["NORMAL"]})
    sink = RecordingSink()
    tracker = AlarmTracker("panel", sink)
    tracker.restore([spec], [OpenAlarm("smoke.alarm", "zone-12-old", {"zone": "12"}),
                             OpenAlarm("water.leak", "not-mine", {"zone": "1"})])
    tracker.apply(spec, {"zone": "12", "status": "ALARM"}, 1.0)  # the panel repeats it
    assert sink.events == []
    tracker.apply(spec, {"zone": "12", "status": "NORMAL"}, 2.0)
    (cleared,) = sink.of("smoke.alarm")
    assert cleared.data == {"zone": "12", "state": "cleared", "alarm_id": "zone-12-old"}
    assert tracker.raised() == {} and not sink.invalid
