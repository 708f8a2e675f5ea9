"""Modbus device profiles: the shipped ones, and every mistake reported at FILE:LINE:COL."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from drivers.modbus import profile as profile_module
from drivers.modbus.decode import DecodeError
from drivers.modbus.planner import DeviceLimits, PlanError, extract
from drivers.modbus.points import Point, PointType
from drivers.modbus.profile import (
    SHIPPED_PROFILES,
    Profile,
    ProfileName,
    ProfileNotFound,
    available_profiles,
    clear_profile_cache,
    find_profile,
    load_profile,
    package_folder,
)
from edge_agent.config.loader import ConfigError, load_model
from edge_agent.contract.envelope import ALARM_TYPES, CATALOG, schema
from edge_agent.contract.units import UNITS
from edge_agent.rules.engine import AlarmRule, DeviceRules, ReadingRule, RecordRule, parse_rules
from edge_agent.sdk.testing import NullSink

DATA = Path(__file__).parent / "data" / "modbus"
SHIPPED = ["booster-pump-de4300", "energy-meter-sdm120", "gate-controller", "peer-holding-20",
           "smoke-detector", "water-sensor"]


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_profile_cache()
    yield
    clear_profile_cache()


# --------------------------------------------------------------------------- shipped


def test_the_shipped_profiles_are_available() -> None:
    assert list(available_profiles()) == SHIPPED  # sorted, from drivers/modbus/profiles


REQUESTS = {"booster-pump-de4300": 4, "energy-meter-sdm120": 3, "peer-holding-20": 2}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_and_plans(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert find_profile(name) == SHIPPED_PROFILES / f"{name}.yaml"
    requests = profile.plan()
    # the old three: one FC2 read of the inputs, one FC4 read of the registers; the new ones
    # at 9,600 baud have register holes that cost more wire time than a request
    assert len(requests) == REQUESTS.get(name, 2)
    assert sum(len(r.points) for r in requests) == len(profile.points)
    text = (SHIPPED_PROFILES / f"{name}.yaml").read_text("utf-8")
    assert text.startswith("# "), "a data-sheet style comment header"
    for point in profile.points:
        assert point.name in text.split("\nname:")[0], f"`{point.name}` is in the header"


def _data_properties(type_: str) -> dict[str, Any]:
    for clause in schema()["allOf"]:
        if clause["if"]["properties"]["type"].get("const") == type_:
            props: dict[str, Any] = clause["then"]["properties"]["data"].get("properties", {})
            return props
    return {}


#: Documented units (docs/events.md) of the data fields the profiles fill from points.
FIELD_UNITS = {"density_db_m": "dB/m", "temperature_c": "°C", "battery_pct": "%",
               "level_m": "m", "pressure_kpa": "kPa", "held_s": "s"}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_events_use_the_catalog_and_documented_fields(name: str) -> None:
    profile = load_profile(name)
    names = {p.name for p in profile.points}
    used: set[str] = set()
    for rule in profile.events:
        kind = rule.type
        assert kind in CATALOG
        props = _data_properties(kind)
        if isinstance(rule, AlarmRule):
            assert kind in ALARM_TYPES, "`when` rules raise and clear alarms"
        for where, point_name in rule.point_refs():
            assert point_name in names, f"{kind}: {where} reads unknown point `{point_name}`"
            used.add(point_name)
        if kind == "device.alarm":
            assert isinstance(rule, AlarmRule) and rule.alarm_type is not None
            assert rule.alarm_type.startswith(f"{profile.kind}."), rule.alarm_type
        for field, spec in rule.data_fields().items():
            if kind == "sensor.reading":
                assert (spec.unit or profile.point(spec.point).unit) in UNITS, field
                continue
            if kind == "device.alarm":
                continue  # free extra data of a declared alarm
            assert field in props, f"{kind}: `{field}` is not a documented data field"
            assert field not in ("credential", "card_number")
            if "enum" in props[field]:
                assert spec.map is not None, field
                assert set(spec.map.values()) <= set(props[field]["enum"]), field
            if field in FIELD_UNITS:
                assert profile.point(spec.point).unit == FIELD_UNITS[field], field
        if isinstance(rule, ReadingRule):
            for field in rule.deadband:
                assert field in rule.fields, f"deadband for `{field}`, which is not a field"
    assert used == names, f"points no rule uses (polled for nothing): {names - used}"


def test_gate_credential_is_hashed_never_emitted_raw() -> None:
    (access,) = [r for r in load_profile("gate-controller").events if r.type == "gate.access"]
    assert isinstance(access, RecordRule)
    assert access.on_change == "access_counter"
    credential = access.fields["credential_hash"]
    assert (credential.point, credential.hash) == ("card_number", True)
    raw_refs = [f for f, spec in access.fields.items()
                if spec.point == "card_number" and not spec.hash]
    assert not raw_refs, "the card number may only be used hashed"


def _registers(request_points: tuple[Point, ...], start: int, count: int,
               words: dict[int, int]) -> list[int]:
    return [words.get(start + i, 0) for i in range(count)]


@pytest.mark.parametrize(("name", "bits", "words", "expected"), [
    ("smoke-detector", [True, False],
     {0: 150, 1: 0xFFCE, 2: 87, 3: 0},
     {"alarm": True, "fault": False, "density": 0.15, "temperature": -5.0, "battery": 87,
      "fault_code": 0}),
    ("water-sensor", [False],
     {0: 0x0000, 1: 0x3FC0, 2: 0x0001, 3: 0x8BCD, 4: 100},  # level 1.5 m, word order little
     {"leak": False, "level": 1.5, "pressure": 101.325, "battery": 100}),
    ("gate-controller", [True, False],
     {0: 0b10, 1: 95, 2: 41, 3: 1, 4: 1, 5: 1, 6: 0x00BC, 7: 0x614E},
     {"door_open": True, "locked": False, "forced_open": False, "held_open": True,
      "open_time": 95, "access_counter": 41, "access_result": 1, "access_method": 1,
      "access_direction": 1, "card_number": 12345678}),
])
def test_shipped_profile_decodes_a_device_answer(name: str, bits: list[bool],
                                                 words: dict[int, int],
                                                 expected: dict[str, Any]) -> None:
    values: dict[str, Any] = {}
    for request in load_profile(name).plan():
        if request.table.is_bits:
            answer: list[int] | list[bool] = bits[: request.count]
        else:
            answer = _registers(request.points, request.start, request.count, words)
        values.update(extract(request, answer))
    assert values == expected


def test_water_level_nan_is_a_decode_error() -> None:
    registers = [r for r in load_profile("water-sensor").plan() if not r.table.is_bits]
    out = extract(registers[0], [0x0000, 0x7FC0, 0, 0, 50])
    assert isinstance(out["level"], DecodeError)
    assert out["battery"] == 50


def test_device_limits_apply_to_a_profile() -> None:
    gate = load_profile("gate-controller")
    assert gate.limits.max_registers == 64
    one_each = gate.plan(DeviceLimits(single_point_requests=True))
    assert len(one_each) == 2 + 7  # inputs 0, 1; the status word (both bits); 7 registers
    with pytest.raises(ValueError, match="more than the profile's 64"):
        gate.plan(DeviceLimits(max_registers=125))
    with pytest.raises(PlanError, match="point `card_number` \\(uint32, 2 registers\\)"):
        gate.plan(DeviceLimits(max_registers=1))


# --------------------------------------------------------------------------- mistakes


def _issues(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    return [str(issue) for issue in err.value.issues]


def test_overlapping_registers_name_both_points() -> None:
    path = DATA / "bad-overlap.yaml"
    assert _issues(path) == [
        f"{path}:6:51: points.2.address: point `total` (input_register 12..13) overlaps "
        "`flow` (input_register 11..12); only `bit` points may share a register, "
        "on distinct bits",
        f"{path}:9:57: points.5.address: point `alarm_again` (input_register 20 bit 0) "
        "overlaps `alarm` (input_register 20 bit 0): the same bit of the same register",
        f"{path}:11:38: points.7.address: point `c2` (coil 3) overlaps `c1` (coil 3)",
        f"{path}:15:14: points.9.address: point `word` (input_register 20) overlaps "
        "`alarm` (input_register 20 bit 0), `fault` (input_register 20 bit 1), "
        "`alarm_again` (input_register 20 bit 0); only `bit` points may share a register, "
        "on distinct bits",
    ]


def test_out_of_range_addresses() -> None:
    path = DATA / "bad-address.yaml"
    assert _issues(path) == [
        f"{path}:6:14: points.0.address: float64 at 65534 needs registers 65534..65537, "
        "beyond the last address 65535",
        f"{path}:8:51: points.1.address: must be less than or equal to 65535; got `70000`",
        f"{path}:9:44: points.2.address: must be greater than or equal to 0; got `-1`",
    ]


def test_types_that_do_not_fit_are_all_reported_at_once() -> None:
    path = DATA / "bad-types.yaml"
    issues = _issues(path)
    expected = [
        ("8:13: points.0.length:", "`length` applies only to type string; float32 always "
                                   "takes 2 registers"),
        ("9:5: points.1.length:", "type string needs `length`"),
        ("10:62: points.2.type:", "bool is for a coil or discrete_input; holding_register "
                                  "holds 16-bit words: use type: bit"),
        ("11:50: points.3.type:", "coil holds single bits: use type: bool"),
        ("12:5: points.4.bit:", "type bit needs `bit: 0..15`"),
        ("13:71: points.5.bit:", "must be less than or equal to 15; got `16`"),
        ("14:79: points.6.word_order:", "`word_order` applies to 32- and 64-bit types, "
                                        "not int16"),
        ("15:79: points.7.writable:", "input_register is read-only"),
        ("16:73: points.8.scale:", "`scale` applies to numeric types, not bool"),
        ("17:78: points.9.scale:", "scale must be a finite number other than 0"),
    ]
    assert len(issues) == len(expected), issues
    for issue, (where, text) in zip(issues, expected, strict=True):
        assert issue.startswith(f"{path}:{where} "), issue
        assert text in issue, issue


def test_profile_level_mistakes(tmp_path: Path) -> None:
    path = DATA / "bad-profile.yaml"
    assert _issues(path) == [
        f"{path}:10:11: events.0.type: `water.levle` is not in the event catalog; "
        "did you mean `water.level`?",
        f"{path}:12:5: events.1.type: required key missing",
    ]
    # The cross-point checks run once the rules validate (pydantic runs a model's
    # after-validator only when every field is valid): the same points, no events.
    points_only = tmp_path / "bad-profile.yaml"
    points_only.write_text(path.read_text("utf-8").split("events:")[0], "utf-8")
    assert _issues(points_only) == [
        f"{points_only}:6:79: points.0.length: point `serial` (string, 40 registers) does "
        "not fit one read of at most 32 registers (max_registers)",
        f"{points_only}:8:12: points.2.name: point name `level` is used twice (points[1] and "
        "points[2]); every point needs its own name",
    ]


def test_profile_name_must_be_its_file_name() -> None:
    path = DATA / "wrong-name.yaml"
    assert _issues(path) == [
        f"{path}:2:7: name: the profile is called `water-sensor` but its file is "
        "`wrong-name.yaml` (hint: name the file water-sensor.yaml, or write name: wrong-name)"
    ]


def test_yaml_and_key_mistakes_come_from_the_strict_loader(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("name: typo\ndescription: x\npoints:\n"
                    "  - {name: a, table: holding_registers, address: 0, type: uint16,"
                    " scael: 2}\n", "utf-8")
    issues = _issues(path)
    assert issues == [
        f"{path}:4:22: points.0.table: expected one of 'coil', 'discrete_input', "
        "'holding_register' or 'input_register'; got `holding_registers`",
        f"{path}:4:67: points.0.scael: unknown key `scael`; did you mean `scale`?",
    ]


def test_an_empty_point_list_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("name: empty\ndescription: nothing\npoints: []\n", "utf-8")
    assert _issues(path) == [f"{path}:3:1: points: a profile needs at least one point"]


def test_a_missing_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "gone.yaml"
    assert _issues(path) == [f"{path}:1:1: file not found (hint: check the path)"]


# --------------------------------------------------------------------------- lookup


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_profile("smoke-detectr")
    assert isinstance(err.value, ProfileNotFound)
    (issue,) = err.value.issues
    assert str(issue).startswith(f"{SHIPPED_PROFILES}/smoke-detectr.yaml:1:1: profile: "
                                 "unknown profile `smoke-detectr`; available profiles: "
                                 "booster-pump-de4300, energy-meter-sdm120, "
                                 "gate-controller, peer-holding-20, smoke-detector, "
                                 "water-sensor; "
                                 "did you mean `smoke-detector`?")
    assert "/etc/edge-agent/profiles" in str(issue)


def test_unknown_profile_on_an_empty_search_path(tmp_path: Path) -> None:
    with pytest.raises(ProfileNotFound, match="available profiles: none"):
        load_profile("anything", [tmp_path / "missing", tmp_path])


def test_search_path_order_and_shadowing(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(SHIPPED_PROFILES / "water-sensor.yaml", site / "water-sensor.yaml")
    shutil.copy(DATA / "scattered-20.yaml", site / "scattered-20.yaml")
    (site / "README.txt").write_text("not a profile", "utf-8")
    found = available_profiles([SHIPPED_PROFILES, site])
    assert list(found) == [*SHIPPED[:4], "scattered-20", *SHIPPED[4:]]
    assert found["water-sensor"] == SHIPPED_PROFILES / "water-sensor.yaml"  # first wins
    assert available_profiles([site, SHIPPED_PROFILES])["water-sensor"] == \
        site / "water-sensor.yaml"
    assert len(load_profile("scattered-20", [SHIPPED_PROFILES, site]).points) == 20


def test_profiles_are_cached_per_path_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "water-sensor.yaml"
    shutil.copy(SHIPPED_PROFILES / "water-sensor.yaml", path)
    first = load_profile(path)
    assert load_profile(path) is first
    assert load_profile("water-sensor", [tmp_path]) is first  # same file by name
    text = path.read_text("utf-8").replace(
        "points:\n", "points:\n  - {name: spare, table: input_register, address: 9, "
                     "type: uint16}\n")
    path.write_text(text, "utf-8")
    second = load_profile(path)
    assert second is not first
    assert second.point("spare").type is PointType.UINT16


def test_a_loaded_profile_cannot_be_changed() -> None:
    smoke = load_profile("smoke-detector")
    with pytest.raises(ValueError):
        smoke.points[0].__setattr__("address", 5)
    assert isinstance(smoke.points, tuple)
    with pytest.raises(KeyError):
        smoke.point("nope")


# --------------------------------------------------------------------------- from a device


class _Device(BaseModel):
    """A minimal model with a `ProfileName` field; the driver's own device model
    (ModbusDevice, with its transport keys) is tested in test_modbus_validate.py."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    profile: ProfileName
    unit_id: int


class _Devices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    devices: list[_Device]


def test_a_device_naming_an_unknown_or_broken_profile_fails_at_its_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile_module, "DEFAULT_SEARCH_PATH", (SHIPPED_PROFILES, DATA))
    path = DATA / "devices.yaml"
    with pytest.raises(ConfigError) as err:
        load_model(path, _Devices)
    issues = [str(issue) for issue in err.value.issues]
    assert len(issues) == 3, issues
    assert issues[0].startswith(
        f"{path}:7:14: devices.1.profile: unknown profile `smoke-detectr`; available "
        "profiles: bad-address, bad-overlap, bad-profile, bad-types, booster-pump-de4300, "
        "devices, energy-meter-sdm120, gate-controller,")
    assert "did you mean `smoke-detector`?" in issues[0]
    assert issues[1].startswith(f"{path}:10:14: devices.2.profile: profile `bad-types` has "
                                "10 problem(s):\n")
    assert f"{DATA / 'bad-types.yaml'}:8:13: points.0.length:" in issues[1]
    assert issues[2].startswith(f"{path}:13:14: devices.3.profile: `../gate-controller.yaml` "
                                "is not a profile name")


def test_a_device_naming_a_shipped_profile_loads() -> None:
    device = _Device.model_validate({"id": "s1", "profile": "smoke-detector", "unit_id": 3})
    assert device.profile == "smoke-detector"
    assert load_profile(device.profile) is load_profile("smoke-detector")  # cached


def test_profile_model_round_trips_as_json() -> None:
    gate = load_profile("gate-controller")
    again = Profile.model_validate_json(json.dumps(gate.model_dump(mode="json")), strict=True)
    assert again == gate


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_events_pass_the_rules_engine(name: str) -> None:
    """Profile.events are the rules engine's own models, parsed from the YAML as written."""
    profile = load_profile(name)
    raw = yaml.safe_load((SHIPPED_PROFILES / f"{name}.yaml").read_text("utf-8"))
    parsed = parse_rules(raw["events"], [p.name for p in profile.points],
                         point_units=profile.units())
    assert parsed == list(profile.events)
    DeviceRules(f"dev-{name}", profile.events, NullSink())  # builds without complaint


def test_shipped_profiles_are_the_drivers_package_data() -> None:
    """Found with importlib.resources beside the driver's code, wherever the agent runs
    from (a checkout, or the wheel installed into a venv: tests/test_packaging.py)."""
    import drivers.modbus
    from drivers.modbus.simulator.scenario import SHIPPED_SCENARIOS

    here = Path(drivers.modbus.__file__).parent
    assert here / "profiles" == SHIPPED_PROFILES
    assert here / "simulator" / "scenarios" == SHIPPED_SCENARIOS
    shipped = resources.files("drivers.modbus") / "profiles" / "smoke-detector.yaml"
    assert shipped.read_text("utf-8") == (SHIPPED_PROFILES / "smoke-detector.yaml").read_text(
        "utf-8")


def test_a_zipped_package_has_no_profile_folder_and_says_so(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The agent is never installed zipped; if it were, a name would not be found (with
    the folder searched in the message), rather than a traceback."""
    archive = tmp_path / "zipped.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("zipped_driver/__init__.py", "")
        zipped.writestr("zipped_driver/profiles/x.yaml", "name: x\n")
    monkeypatch.syspath_prepend(str(archive))
    monkeypatch.delitem(sys.modules, "zipped_driver", raising=False)
    folder = package_folder("zipped_driver", "profiles")
    assert not folder.is_dir()
    with pytest.raises(ProfileNotFound, match="available profiles: none") as err:
        load_profile("x", [folder])
    assert str(folder) in err.value.issues[0].hint
