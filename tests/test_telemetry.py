"""Any device a compound has: `sensor.reading`, profile-declared alarms (`device.alarm`),
the `profiles:` search path, forwarding every reading, and `edge-agent validate` on the
mistakes a profile author makes (each at its FILE:LINE)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from collector.fleet.model import Fleet, Thresholds
from collector.store import Store
from collector.stream.filter import Filter
from collector.stream.params import ParamError, parse_query
from collector.stream.position import Position
from collector.stream.reader import Reader
from collector.validate import check_payload, full_problem
from drivers.modbus.device import ModbusDevice
from drivers.modbus.profile import SHIPPED_PROFILES, load_profile
from edge_agent.config.models import ChatterConfig
from edge_agent.contract.envelope import CATALOG, Event, Retention, new_event, schema
from edge_agent.contract.topics import GatewayTopics
from edge_agent.contract.units import ALARM_TYPE_PATTERN, UNITS
from edge_agent.pipeline.open_alarms import OpenAlarms
from edge_agent.rules import parse_rules
from edge_agent.rules.engine import DeviceRules
from edge_agent.sdk.config import ConfigError, load_gateway_config
from edge_agent.sdk.testing import TEST_HIERARCHY as H
from edge_agent.sdk.testing import RecordingSink
from tests.fleet_support import Gw
from tests.openapi_check import check
from tests.stream_support import ingest
from tests.test_collector_support import batch, hierarchy, new_epoch, topics
from tests.test_collector_support import reading as support_reading

EDGE_AGENT = str(Path(sys.executable).parent / "edge-agent")
HEADER = """\
gateway: {id: gw-1, district: "371312", street: "371312001", community: "371312001001"}
uplink: {broker: "mqtt://127.0.0.1:1883"}
"""
PUMP_OK = {"hand_mode": False, "off_mode": False, "auto_mode": True, "running": True,
           "pump_alarm": False, "run_feedback_alarm": False, "drive_fault": False,
           "speed": 80.0, "drive_current": 12.5, "drive_voltage": 400.0, "drive_power": 5.5,
           "speed_feedback": 79.5, "head": 42.0}



class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rules(profile: str, sink: RecordingSink, clock: Clock, **kw: Any) -> DeviceRules:
    p = load_profile(profile)
    return DeviceRules("dev-1", p.events, sink, clock=clock, kind=p.device_kind,
                       units=p.units(), **kw)


# --------------------------------------------------------------------------- contract


def test_the_unit_list_and_the_alarm_type_rule_are_the_schemas() -> None:
    branches = {b["if"]["properties"]["type"]["const"]: b["then"]["properties"]["data"]
                for b in schema()["allOf"]}
    quantity = branches["sensor.reading"]["properties"]["quantities"]["additionalProperties"]
    assert tuple(quantity["properties"]["unit"]["enum"]) == UNITS
    assert len(set(UNITS)) == len(UNITS)
    assert branches["device.alarm"]["properties"]["alarm_type"]["pattern"] == ALARM_TYPE_PATTERN
    assert CATALOG["sensor.reading"].retention is Retention.TELEMETRY
    assert CATALOG["device.alarm"].retention is Retention.ALARM


def test_the_collector_accepts_what_the_engine_sends_and_refuses_a_bad_unit() -> None:
    sink, clock = RecordingSink(), Clock()
    meter = rules("energy-meter-sdm120", sink, clock)
    meter.update({"voltage": 260.0, "current": 1.0, "active_power": 230.0,
                  "apparent_power": 231.0, "reactive_power": 5.0, "power_factor": 0.99,
                  "frequency": 50.0, "import_energy": 1.5, "export_energy": 0.0,
                  "import_reactive": 0.1, "export_reactive": 0.0, "total_energy": 1.5})
    clock.now += 5
    meter.update({"voltage": 260.0})
    assert sink.types() == ["sensor.reading", "device.alarm"]
    topic = GatewayTopics(H.district, H.community, H.gateway)
    for event in sink.events:
        assert full_problem(json.loads(event.to_json()), topic, None) is None
    body = json.loads(sink.events[0].to_json())
    body["data"]["quantities"]["voltage"]["unit"] = "volt"
    problem = full_problem(body, topic, None)
    assert problem is not None and "unit" in problem


# --------------------------------------------------------------------------- engine


def test_sensor_reading_carries_kind_quantities_and_units() -> None:
    sink, clock = RecordingSink(), Clock()
    pump = rules("booster-pump-de4300", sink, clock)
    pump.update(PUMP_OK)
    (reading,) = sink.of("sensor.reading")
    assert reading.data["kind"] == "pump"
    assert reading.data["quantities"]["drive_voltage"] == {"value": 400.0, "unit": "V"}
    assert reading.data["quantities"]["running"] == {"value": 1, "unit": "1"}  # a flag: 0/1
    assert reading.data["quantities"]["head"] == {"value": 42.0, "unit": "m"}
    pump.update({**PUMP_OK, "speed": 80.5})  # inside the deadband: nothing
    assert len(sink.of("sensor.reading")) == 1
    pump.update({**PUMP_OK, "speed": 85.0})
    assert len(sink.of("sensor.reading")) == 2
    assert not sink.invalid


def test_forward_every_reading_sends_every_poll_and_the_heartbeat_trick_still_works() -> None:
    sink, clock = RecordingSink(), Clock()
    every = rules("booster-pump-de4300", sink, clock, every_poll=True)
    for _ in range(5):
        every.update(PUMP_OK)
        clock.now += 1
    assert len(sink.of("sensor.reading")) == 5
    bench, bench_sink = load_profile("peer-holding-20"), RecordingSink()
    peer = DeviceRules("peer-1", bench.events, bench_sink, clock=clock,
                       kind=bench.device_kind, units=bench.units())  # report: every_poll
    values = {p.name: 7 for p in bench.points}
    for _ in range(3):
        peer.update(values)
    (first, *_rest) = bench_sink.of("sensor.reading")
    assert len(bench_sink.of("sensor.reading")) == 3
    assert len(first.data["quantities"]) == 20 and first.data["kind"] == "bench"
    # the old trick: a smoke detector's heartbeat shorter than the poll period
    smoke = load_profile("smoke-detector")
    tricked = smoke.events[0].model_copy(update={"heartbeat_s": 0.5})
    old_sink = RecordingSink()
    old = DeviceRules("smoke-1", [tricked], old_sink, clock=clock)
    for _ in range(3):
        old.update({"density": 0.01, "temperature": 20.0, "battery": 90})
        clock.now += 1
    assert len(old_sink.of("smoke.reading")) == 3
    assert not sink.invalid and not bench_sink.invalid and not old_sink.invalid


def test_declared_alarm_raises_and_clears_with_one_alarm_id() -> None:
    sink, clock = RecordingSink(), Clock()
    pump = rules("booster-pump-de4300", sink, clock)
    pump.update({**PUMP_OK, "pump_alarm": True})
    clock.now += 1
    pump.update({**PUMP_OK, "pump_alarm": True})  # debounce_s 2: not yet
    assert not sink.of("device.alarm")
    clock.now += 1.5
    pump.update({**PUMP_OK, "pump_alarm": True})
    (raised,) = sink.of("device.alarm")
    assert raised.severity == "critical"  # the profile's `severity:`
    assert raised.data["state"] == "raised" and raised.data["alarm_type"] == "pump.failure"
    assert raised.data["kind"] == "pump" and raised.data["head_m"] == 42.0
    assert raised.data["alarm_id"].startswith("dev-1:pump.failure:")
    assert pump.active_alarms == {"pump.failure": [raised.data["alarm_id"]]}
    for _ in range(3):  # the clear is debounced too
        clock.now += 1.5
        pump.update(PUMP_OK)
    cleared = sink.of("device.alarm")[-1]
    assert cleared.data["state"] == "cleared" and cleared.severity == "info"
    assert cleared.data["alarm_id"] == raised.data["alarm_id"]
    assert cleared.data["alarm_type"] == "pump.failure"
    assert not sink.invalid


def test_a_declared_alarm_that_chatters_is_reported_once_by_its_declared_type() -> None:
    sink = RecordingSink(alarm_chatter=ChatterConfig(max_toggles_per_min=4, calm_s=10))
    clock = Clock()
    pump = rules("booster-pump-de4300", sink, clock)
    for index in range(12):  # each state held for two polls, past the 2 s debounce
        for _ in range(2):
            clock.now += 2.5
            pump.update({**PUMP_OK, "drive_fault": index % 2 == 0})
    (chatter,) = sink.of("device.chattering")
    assert chatter.data["state"] == "raised" and chatter.data["alarm_type"] == "pump.drive_fault"
    assert sink.toggles_suppressed["dev-1"] > 0
    for _ in range(3):  # calm for calm_s: the state as it is, then the chatter's clear
        clock.now += 6
        pump.update(PUMP_OK)
    assert [e.data["state"] for e in sink.of("device.chattering")] == ["raised", "cleared"]
    assert sink.of("device.alarm")[-1].data["state"] == "cleared"
    assert not sink.invalid


def test_open_declared_alarms_are_restored_by_alarm_type_after_a_restart(
        tmp_path: Path) -> None:
    ledger_file = tmp_path / "open-alarms.json"
    ledger = OpenAlarms(ledger_file)
    sink, clock = RecordingSink(), Clock()
    pump = rules("booster-pump-de4300", sink, clock)
    faulty = {**PUMP_OK, "pump_alarm": True, "drive_fault": True}
    for _ in range(3):
        pump.update(faulty)
        clock.now += 1.5
    for event in sink.events:
        ledger.record(event)
    ledger.save()  # the agent's clean stop (Pipeline.flush)
    ids = {e.data["alarm_type"]: e.data["alarm_id"] for e in sink.of("device.alarm")}
    assert set(ids) == {"pump.failure", "pump.drive_fault"}
    # the agent restarts: the drive fault is over, the pump alarm holds
    claimed = OpenAlarms(ledger_file).claim("dev-1")
    assert {a.data["alarm_type"] for a in claimed} == set(ids)
    after = RecordingSink(restored={"dev-1": list(reversed(claimed))})
    again = rules("booster-pump-de4300", after, clock)
    assert again.active_alarms == {name: [alarm_id] for name, alarm_id in ids.items()}
    for _ in range(3):
        again.update({**PUMP_OK, "pump_alarm": True})
        clock.now += 1.5
    (cleared,) = after.of("device.alarm")  # no second raise of pump.failure
    assert cleared.data == {"state": "cleared", "alarm_id": ids["pump.drive_fault"],
                            "alarm_type": "pump.drive_fault", "kind": "pump"}
    assert again.active_alarms == {"pump.failure": [ids["pump.failure"]]}


# --------------------------------------------------------------------------- profiles: path

SITE_PROFILE = """\
# A lift controller of the test site (test profile).
name: lift-x1
description: Test lift controller
kind: elevator
points:
  - {name: fault, table: discrete_input, address: 0, type: bool}
  - {name: load, table: input_register, address: 0, type: uint16, unit: kg}
events:
  - type: sensor.reading
    fields: {load: load}
  - type: device.alarm
    alarm_type: elevator.fault
    when: {point: fault}
"""


def test_profiles_search_path_is_relative_to_the_yaml_and_searched_first(
        tmp_path: Path) -> None:
    site = tmp_path / "site-profiles"
    site.mkdir()
    (site / "lift-x1.yaml").write_text(SITE_PROFILE, "utf-8")
    shadow = (SHIPPED_PROFILES / "water-sensor.yaml").read_text("utf-8").replace(
        "description: Water leak, level and pressure sensor with battery",
        "description: The site's own water sensor")
    (site / "water-sensor.yaml").write_text(shadow, "utf-8")
    path = tmp_path / "conf" / "gateway.yaml"
    path.parent.mkdir()
    path.write_text(HEADER + """\
profiles: [../site-profiles]
devices:
  - {id: lift-1, driver: modbus, profile: lift-x1, tcp: {host: 127.0.0.1}}
  - {id: water-1, driver: modbus, profile: water-sensor, tcp: {host: 127.0.0.1}, unit_id: 2,
     forward_every_reading: true}
""", "utf-8")
    cfg = load_gateway_config(path)
    assert cfg.profiles == [str(path.parent.absolute() / "../site-profiles")]
    lift, water = cfg.devices
    assert isinstance(lift, ModbusDevice) and isinstance(water, ModbusDevice)
    assert lift.profile_path() == path.parent.absolute() / "../site-profiles/lift-x1.yaml"
    assert load_profile(water.profile_path()).description == "The site's own water sensor"
    assert water.forward_every_reading and not lift.forward_every_reading
    # outside the loading, the default path knows neither
    with pytest.raises(ConfigError, match="unknown profile `lift-x1`"):
        load_profile("lift-x1")


def test_a_missing_profiles_dir_is_reported_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(HEADER + """\
profiles:
  - ./nowhere
devices: []
""", "utf-8")
    with pytest.raises(ConfigError) as err:
        load_gateway_config(path)
    (issue,) = err.value.issues
    assert str(issue).startswith(f"{path}:4:5: profiles.0: `{tmp_path}/nowhere` is not a "
                                 "directory")


# --------------------------------------------------------------------------- validate

#: Mistakes inside single rules (reported first: the profile's cross-checks need valid rules).
BAD_RULES = """\
name: lift-bad
description: A lift controller with a mistake in each rule
kind: elevator
points:
  - {name: fault, table: discrete_input, address: 0, type: bool}
  - {name: floor, table: input_register, address: 0, type: uint16, unit: count}
events:
  - type: sensor.reading
    fields:
      floor: {point: floor, unit: storey}
  - type: device.alarm
    alarm_type: Elevator-Fault
    when: {point: fault}
  - type: device.alarm
    alarm_type: smoke.alarm
    when: {point: fault}
  - type: device.alarm
    when: {point: fault}
  - type: smoke.alarm
    alarm_type: elevator.stuck
    when: {point: fault}
"""

#: Mistakes across the profile: point units, quantities, the alarm types' namespace.
BAD_PROFILE = """\
name: lift-worse
description: A lift controller with a mistake across rules and points
kind: elevator
points:
  - {name: fault, table: discrete_input, address: 0, type: bool}
  - {name: load, table: input_register, address: 0, type: uint16, unit: KG}
  - {name: speed, table: input_register, address: 1, type: uint16}
  - {name: floor, table: input_register, address: 2, type: uint16, unit: count}
events:
  - type: sensor.reading
    fields:
      load: load
      speed: speed
      floor: floor
  - type: sensor.reading
    fields: {floor: floor}
  - type: device.alarm
    alarm_type: pump.fault
    when: {point: fault}
  - type: device.alarm
    alarm_type: elevator.fault
    when: {point: fault}
  - type: device.alarm
    alarm_type: elevator.fault
    when: {point: fault}
"""


def test_validate_names_each_profile_mistake_at_its_file_line(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    rules_file, profile_file = profiles / "lift-bad.yaml", profiles / "lift-worse.yaml"
    rules_file.write_text(BAD_RULES, "utf-8")
    profile_file.write_text(BAD_PROFILE, "utf-8")
    path = tmp_path / "gateway.yaml"
    path.write_text(HEADER + """\
profiles: [profiles]
devices:
  - {id: lift-1, driver: modbus, profile: lift-bad, tcp: {host: 127.0.0.1}}
  - {id: lift-2, driver: modbus, profile: lift-worse, tcp: {host: 127.0.0.1}, unit_id: 2}
""", "utf-8")
    done = subprocess.run([EDGE_AGENT, "validate", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stdout
    rows = done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    assert rows[0].startswith(f"{path}:5:43: devices.0.profile: device `lift-1`: profile "
                              "`lift-bad` has 5 problem(s):")
    expected = [
        (rules_file, 10, "events.0.fields.floor.unit", "unknown unit `storey`; valid units: V,"),
        (rules_file, 12, "events.1.alarm_type", "`Elevator-Fault` is not an alarm type name"),
        (rules_file, 15, "events.2.alarm_type", "`smoke.alarm` is in the catalog's own "
                                                "`smoke.` family"),
        (rules_file, 17, "events.3", "needs `alarm_type: <kind>.<name>`"),
        (rules_file, 20, "events.4.alarm_type", "`alarm_type` is for `device.alarm` rules"),
        (profile_file, 6, "points.1.unit", "unknown unit `KG` (point `load` is sent as "
                                           "quantity `load`); did you mean `kg`"),
        (profile_file, 13, "events.0.fields.speed.point", "quantity `speed` has no unit"),
        (profile_file, 16, "events.1.fields.floor", "quantity `floor` is already sent by "
                                                    "events[0]"),
        (profile_file, 18, "events.2.alarm_type", "`pump.fault` is not in this profile's "
                                                  "namespace: write `elevator.fault`"),
        (profile_file, 24, "events.4.alarm_type", "alarm type `elevator.fault` is declared "
                                                  "twice"),
    ]
    for file, line, key, needle in expected:
        found = [row.strip() for row in rows if row.strip().startswith(f"{file}:{line}:")]
        assert len(found) == 1, (file, line, done.stderr)
        assert f": {key}: " in found[0] and needle in found[0], found[0]
    assert len([r for r in rows if r.startswith("    ")]) == len(expected)


def test_a_good_site_profile_validates(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "lift-x1.yaml").write_text(SITE_PROFILE, "utf-8")
    path = tmp_path / "gateway.yaml"
    path.write_text(HEADER + """\
profiles: [profiles]
devices:
  - {id: lift-1, driver: modbus, profile: lift-x1, tcp: {host: 127.0.0.1}}
  - {id: meter-1, driver: modbus, profile: energy-meter-sdm120, tcp: {host: 127.0.0.1},
     unit_id: 2}
  - {id: pump-1, driver: modbus, profile: booster-pump-de4300, tcp: {host: 127.0.0.1},
     unit_id: 3, forward_every_reading: true}
""", "utf-8")
    done = subprocess.run([EDGE_AGENT, "validate", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "3 device(s)" in done.stdout


def test_rules_of_a_driver_without_point_units_need_a_unit_per_quantity() -> None:
    ok = parse_rules([{"type": "sensor.reading",
                       "fields": {"co2": {"point": "co2", "unit": "ppm"}}}], {"co2", "pm25"})
    assert ok[0].type == "sensor.reading"
    with pytest.raises(ValidationError) as err:
        parse_rules([{"type": "sensor.reading", "fields": {"co2": "co2"}},
                     {"type": "sensor.reading", "fields": {"pm25": {"point": "pm25",
                                                                    "unit": "ug/m3"}}}],
                    {"co2", "pm25"})
    problems = {".".join(map(str, e["loc"])): e["msg"] for e in err.value.errors()}
    assert "quantity `co2` needs a unit" in problems["events.0.fields.co2"]
    assert "unknown unit `ug/m3`" in problems["events.1.fields.pm25.unit"]
    assert "did you mean `µg/m3`" in problems["events.1.fields.pm25.unit"]


# --------------------------------------------------------------------------- stream API


def _declared(epoch: str, seq: int, device: str, alarm_type: str) -> Event:
    return new_event(hierarchy(), device, "device.alarm", {
        "state": "raised", "alarm_id": f"{device}-{seq}", "alarm_type": alarm_type,
        "kind": alarm_type.split(".")[0]}).stamped(epoch, seq)


def test_departments_read_declared_alarms_by_alarm_type(store: Store, reader: Reader) -> None:
    epoch = new_epoch()
    events = [_declared(epoch, 1, "pump-1", "pump.failure"),
              _declared(epoch, 2, "lift-1", "elevator.fault"),
              _declared(epoch, 3, "pump-2", "pump.drive_fault"),
              support_reading("gw-a", epoch, 4)]
    verdict = check_payload(batch(events), topics("gw-a"))
    assert not verdict.rejected
    ingest(store, verdict.accepted)
    start = Position.start(reader.kind)

    def read(**kw: Any) -> list[str]:
        page = reader.read(start, Filter(**kw), 100)
        return sorted(json.loads(body)["data"].get("alarm_type", "-") for _, body in page.events)

    assert read(alarm_types=("pump.*",)) == ["pump.drive_fault", "pump.failure"]
    assert read(alarm_types=("elevator.fault", "pump.failure")) == ["elevator.fault",
                                                                    "pump.failure"]
    assert read(alarm_types=("pump_failure",)) == []  # `_` is no wildcard
    assert read(alarm_types=("*",)) == ["elevator.fault", "pump.drive_fault", "pump.failure"]
    assert read(type_groups=(("device.alarm",),), alarm_types=("lift.*",)) == []
    assert read() == ["-", "elevator.fault", "pump.drive_fault", "pump.failure"]
    query = parse_query([("type", "device.alarm"), ("alarm_type", "pump.*,elevator.fault")])
    assert query.filter.alarm_types == ("pump.*", "elevator.fault")
    with pytest.raises(ParamError, match="alarm_type"):
        parse_query([("alarm_type", "pump failure")])


def test_the_fleet_view_names_a_declared_alarm_by_its_type() -> None:
    gw, fleet, now = Gw("gw-a"), Fleet(), time.time()
    raised = {"state": "raised", "alarm_id": "pump-1:pump.failure:1", "alarm_type": "pump.failure",
              "kind": "pump"}
    for event in gw.cloud_events(("pump-1", "device.alarm", raised),
                                 ("smoke-1", "smoke.alarm", {"state": "raised", "alarm_id": "s"})):
        fleet.apply(event, now)
    alarms = fleet.view(now, Thresholds(heartbeat_s=60), {}, lambda _: True,
                        lambda _: True)["alarms"]
    by_id = {a["alarm_id"]: a for a in alarms}
    assert by_id["pump-1:pump.failure:1"]["type"] == "device.alarm"
    assert by_id["pump-1:pump.failure:1"]["alarm_type"] == "pump.failure"
    assert "alarm_type" not in by_id["s"]
    check("/v1/fleet", 200, fleet.view(now, Thresholds(heartbeat_s=60), {}, lambda _: True,
                                       lambda _: True))
