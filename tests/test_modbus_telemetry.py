"""The two public-register-map profiles against real pymodbus servers, through the real
Modbus driver: `sensor.reading` with units, and their declared alarms raised and cleared."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from drivers.modbus.device import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.profile import clear_profile_cache
from edge_agent.sdk.testing import running
from tests.harness import wait_until
from tests.modbus_servers import METER, PUMP, ModbusServer, RecordingSink, Unit


@pytest.fixture(autouse=True)
def _fresh_profiles() -> Iterator[None]:
    clear_profile_cache()
    yield
    clear_profile_cache()


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
