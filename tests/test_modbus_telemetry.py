"""The two public-register-map profiles against real pymodbus servers, through the real
Modbus driver: `sensor.reading` with units, and their declared alarms raised and cleared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from drivers.modbus.device import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.profile import Profile, load_profile
from edge_agent.sdk.testing import running
from tests.harness import (
    agent,
    collector,
    collector_yaml,
    gateway_yaml,
    query,
    wait_until,
    write_yaml,
)
from tests.modbus_servers import METER, PUMP, ModbusServer, RecordingSink, Unit
from tests.peers import Mosquitto


def tcp_device(dev_id: str, profile: str, port: int, unit: int, **kw: Any) -> ModbusDevice:
    return ModbusDevice.model_validate({
        "id": dev_id, "driver": "modbus", "profile": profile, "unit_id": unit,
        "tcp": {"host": "127.0.0.1", "port": port}, "period_s": 0.1, "timeout_s": 0.5, **kw})


def states(sink: RecordingSink, device: str, alarm_type: str) -> list[str]:
    return [e.data["state"] for e in sink.of("device.alarm", device)
            if e.data["alarm_type"] == alarm_type]


async def test_meter_and_pump_readings_and_declared_alarms_raise_then_clear() -> None:
    units = [Unit.of(1, "energy-meter-sdm120", METER), Unit.of(2, "booster-pump-de4300", PUMP)]
    async with ModbusServer(units) as server:
        sink = RecordingSink()
        driver = ModbusDriver([
            tcp_device("meter-1", "energy-meter-sdm120", server.port, 1),
            tcp_device("pump-1", "booster-pump-de4300", server.port, 2,
                       forward_every_reading=True),
        ], sink)
        async with running(driver):
            await wait_until(lambda: len(sink.of("sensor.reading", "pump-1")) >= 3
                             and sink.of("sensor.reading", "meter-1"), 5, "first readings")
            meter_readings = len(sink.of("sensor.reading", "meter-1"))
            # a swell on the meter's line, a failure of the pump
            await server.set(1, voltage=262.25)
            await server.set(2, pump_alarm=True, running=False)
            await wait_until(lambda: states(sink, "meter-1", "meter.overvoltage") == ["raised"]
                             and states(sink, "pump-1", "pump.failure") == ["raised"], 6,
                             "both raised (debounce 2 s)")
            await server.set(1, voltage=246.0)  # below clear_below 248
            await server.set(2, pump_alarm=False, running=True)
            await wait_until(
                lambda: states(sink, "meter-1", "meter.overvoltage") == ["raised", "cleared"]
                and states(sink, "pump-1", "pump.failure") == ["raised", "cleared"], 6,
                "both cleared (debounce 2 s)")
    first = sink.of("sensor.reading", "meter-1")[0].data
    assert first["kind"] == "meter"
    assert first["quantities"]["voltage"] == {"value": 230.5, "unit": "V"}
    assert first["quantities"]["import_energy"] == {"value": 1234.5, "unit": "kWh"}
    assert first["quantities"]["reactive_power"] == {"value": 120.0, "unit": "var"}
    assert first["quantities"]["power_factor"]["unit"] == "1"
    assert len(first["quantities"]) == 12
    # on change beyond the deadband (the swell), not every poll
    assert len(sink.of("sensor.reading", "meter-1")) <= meter_readings + 3
    pump_reading = sink.of("sensor.reading", "pump-1")[0].data
    assert pump_reading["kind"] == "pump"
    assert pump_reading["quantities"]["head"] == {"value": 42.0, "unit": "m"}
    assert pump_reading["quantities"]["drive_power"] == {"value": 5.5, "unit": "kW"}
    raised, cleared = [e for e in sink.of("device.alarm", "meter-1")]
    assert raised.data["voltage_v"] == 262.25 and raised.severity == "warning"
    assert cleared.data["alarm_id"] == raised.data["alarm_id"]
    pump_raised, pump_cleared = sink.of("device.alarm", "pump-1")
    assert pump_raised.severity == "critical" and pump_cleared.severity == "info"
    assert pump_cleared.data["alarm_id"] == pump_raised.data["alarm_id"]
    assert {e.data["alarm_type"] for e in sink.of("device.alarm")} == {
        "meter.overvoltage", "pump.failure"}
    assert not sink.invalid


async def test_a_site_profile_on_the_profiles_path_end_to_end_into_the_store(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """`edge-agent run` with `profiles:` relative to its YAML, a lift the agent has no
    code for, a real collector: the store holds its sensor.reading and its declared
    alarm raised and cleared (so the collector's schema accepts them)."""
    site = tmp_path / "conf" / "site-profiles"
    site.mkdir(parents=True)
    (site / "lift-x1.yaml").write_text(LIFT_PROFILE, "utf-8")
    store = tmp_path / "district.db"
    collector_proc = collector(write_yaml(tmp_path / "collector.yaml",
                                          collector_yaml(mosquitto.url, store)),
                               tmp_path / "collector.log").start()
    async with ModbusServer([Unit(1, load_lift(site), dict(LIFT))]) as server:
        cfg = gateway_yaml("gw-lift", mosquitto.url, tmp_path / "outbox.db", devices=[
            {"id": "lift-n1", "driver": "modbus", "profile": "lift-x1", "unit_id": 1,
             "tcp": {"host": "127.0.0.1", "port": server.port}, "period_s": 0.1,
             "forward_every_reading": True}])
        cfg["profiles"] = ["site-profiles"]
        config = write_yaml(tmp_path / "conf" / "gateway.yaml", cfg)
        agent_proc = agent(config, tmp_path / "agent.log").start()
        try:
            await wait_until(lambda: stored(store, "sensor.reading") >= 3, 30, "readings")
            await server.set(1, fault=True)
            await wait_until(lambda: alarm_states(store) == ["raised"], 15, "raised")
            await server.set(1, fault=False)
            await wait_until(lambda: alarm_states(store) == ["raised", "cleared"], 15,
                             "cleared")
        finally:
            agent_proc.stop()
            collector_proc.stop()
    (data,) = [json.loads(r[0]) for r in query(
        store, "SELECT data FROM events WHERE type='sensor.reading' LIMIT 1")]
    assert data == {"kind": "elevator", "quantities": {
        "load": {"value": 320, "unit": "kg"}, "floor": {"value": 7, "unit": "1"}}}
    raised, cleared = [json.loads(r[0]) for r in query(
        store, "SELECT data FROM events WHERE type='device.alarm' ORDER BY seq")]
    assert raised["alarm_type"] == cleared["alarm_type"] == "elevator.fault"
    assert raised["alarm_id"] == cleared["alarm_id"] and raised["floor"] == 7


LIFT_PROFILE = """\
# A lift controller no code knows about (test profile).
name: lift-x1
description: Lift controller of the north towers (test profile)
kind: elevator
points:
  - {name: fault, table: discrete_input, address: 0, type: bool}
  - {name: load, table: input_register, address: 0, type: uint16, unit: kg}
  - {name: floor, table: input_register, address: 1, type: int16}
events:
  - type: sensor.reading
    fields: {load: load, floor: {point: floor, unit: "1"}}
  - type: device.alarm
    alarm_type: elevator.fault
    severity: critical
    when: {point: fault}
    data: {floor: floor}
"""
LIFT = {"fault": False, "load": 320, "floor": 7}


def load_lift(site: Path) -> Profile:
    return load_profile(site / "lift-x1.yaml")


def stored(store: Path, type_: str) -> int:
    rows = query(store, "SELECT COUNT(*) FROM events WHERE type=?", type_)
    return int(rows[0][0]) if rows else 0


def alarm_states(store: Path) -> list[str]:
    return [json.loads(r[0])["state"] for r in query(
        store, "SELECT data FROM events WHERE type='device.alarm' ORDER BY seq")]
