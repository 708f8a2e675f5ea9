"""The rules engine: polled values -> catalog events (readings, alarms, states, records).

Most tests are sequences: a list of (time, values) polls (or "tick" / "reset") run with a
fake clock, and the (type, data subset) events expected. Every event any test emits is
minted with `new_event`, stamped and validated against the published JSON Schema.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from edge_agent.config import ConfigError, load_model
from edge_agent.contract.envelope import Hierarchy, Severity, new_event, schema
from edge_agent.rules import engine as rules_mod
from edge_agent.rules.engine import (
    AlarmRule,
    DeviceRules,
    ReadingRule,
    RecordRule,
    RuleSpec,
    StateRule,
    check_points,
    parse_rules,
    point_issues,
    rule_points,
)
from edge_agent.rules.privacy import hash_credential, normalize_credential
from edge_agent.sdk.api import DeviceState
from edge_agent.sdk.testing import NullSink

H = Hierarchy(district="371312", street="371312001", community="371312001001", gateway="gw-0001")
VALIDATOR = jsonschema.Draft7Validator(schema())
DEVICE = "dev-01"
T0 = 1_795_840_906.0  # wall clock of the first poll (observed_at = T0 + fake time)

# --------------------------------------------------------------------------- profiles

SMOKE = yaml.safe_load("""
- type: smoke.reading
  fields: {density_db_m: density, temperature_c: temperature, battery_pct: battery}
  deadband: {density_db_m: 0.005, temperature_c: 0.5, battery_pct: 1}
  heartbeat_s: 300
- type: smoke.alarm
  when: {point: alarm}
  debounce_s: 2
  data: {density_db_m: density}
- type: smoke.fault
  when: {point: fault}
""")

GATE = yaml.safe_load("""
- type: gate.state
  state:
    door: {point: door_open, map: {true: open, false: closed}}
    lock: {point: locked, map: {true: locked, false: unlocked}}
- type: gate.access
  on_change: access_counter
  fields:
    result: {point: access_result, map: {1: granted, 2: denied}}
    credential_hash: {point: card_number, hash: true}
    method: {point: access_method, map: {1: card, 2: face, 3: qr}}
- type: gate.forced_open
  when: {point: forced}
- type: gate.held_open
  when: {point: held_s, above: 30, clear_below: 5}
  data: {held_s: held_s}
""")

WATER = yaml.safe_load("""
- type: water.leak
  when: {point: leak}
  debounce_s: 1
- type: water.level
  fields: {level_m: {point: level, round: 3}, battery_pct: battery}
  deadband: {level_m: 0.01}
  heartbeat_s: 600
- type: water.pressure
  fields: {pressure_kpa: pressure}
  deadband: {pressure_kpa: 5}
""")

POINTS = {"density", "temperature", "battery", "alarm", "fault", "door_open", "locked",
          "access_counter", "access_result", "card_number", "access_method", "forced",
          "held_s", "leak", "level", "pressure"}

# --------------------------------------------------------------------------- harness


@dataclass
class Emitted:
    device: str
    type: str
    data: dict[str, Any]
    severity: Severity | None
    observed_at: float | None


class Sink(NullSink):
    """A test EventSink that also validates every event against the schema."""

    def __init__(self) -> None:
        self.events: list[Emitted] = []

    def emit(self, device: str, type_: str, data: dict[str, Any], *,
             severity: Severity | None = None, observed_at: float | None = None) -> None:
        self.events.append(Emitted(device, type_, data, severity, observed_at))
        event = new_event(H, device, type_, data, severity=severity, observed_at=observed_at)
        VALIDATOR.validate(json.loads(event.stamped("0123456789abcdef", 1).to_json()))

    def device_state(self, device: str, state: DeviceState, reason: str = "") -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Log:
    """Stands in for the module's structlog logger: records (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _at(self, level: str) -> Any:
        return lambda event, **kw: self.records.append((level, event, kw))

    def __getattr__(self, level: str) -> Any:
        return self._at(level)

    def text(self) -> str:
        return json.dumps(self.records, default=repr)


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Log:
    log = Log()
    monkeypatch.setattr(rules_mod, "log", log)
    return log


Step = tuple[float, Any]  # (time, values | "tick" | "reset")


class Run:
    def __init__(self, specs: list[dict[str, Any]], *, points: set[str] = POINTS,
                 salt: bytes = b"", device: str = DEVICE) -> None:
        self.sink, self.clock = Sink(), Clock()
        self.rules = DeviceRules(device, parse_rules(specs, points), self.sink,
                                 clock=self.clock, salt=salt)

    def steps(self, steps: Sequence[Step]) -> list[Emitted]:
        start = len(self.sink.events)
        for t, what in steps:
            self.clock.t = t
            if what == "tick":
                self.rules.tick()
            elif what == "reset":
                self.rules.reset()
            else:
                self.rules.update(what, observed_at=T0 + t)
        return self.sink.events[start:]


def run(specs: list[dict[str, Any]], steps: Sequence[Step], **kw: Any) -> list[Emitted]:
    return Run(specs, **kw).steps(steps)


def summary(events: Sequence[Emitted]) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, e.data) for e in events]


def assert_events(events: Sequence[Emitted], expected: Sequence[tuple[str, dict[str, Any]]]
                  ) -> None:
    got = summary(events)
    assert len(got) == len(expected), f"expected {len(expected)} events, got {got}"
    for (type_, data), (want_type, want) in zip(got, expected, strict=True):
        assert type_ == want_type, got
        assert {k: data.get(k, "<missing>") for k in want} == want, got


def smoke(d: float = 0.01, t: float = 20.0, b: float = 90, alarm: bool = False,
          fault: bool = False) -> dict[str, Any]:
    return {"density": d, "temperature": t, "battery": b, "alarm": alarm, "fault": fault}


def acc(counter: Any, result: Any, card: Any, method: Any = 1) -> dict[str, Any]:
    return {"access_counter": counter, "access_result": result, "card_number": card,
            "access_method": method}


def reading(d: float, t: float, b: float) -> tuple[str, dict[str, Any]]:
    return ("smoke.reading", {"density_db_m": d, "temperature_c": t, "battery_pct": b})


def only(specs: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [s for s in specs if s["type"] == type_]


# --------------------------------------------------------------------------- sequences

SEQUENCES: dict[str, tuple[list[dict[str, Any]], list[Step], list[tuple[str, dict[str, Any]]]]] = {
    "reading: first seen, then only beyond the deadband (from the value last sent)": (
        only(SMOKE, "smoke.reading"),
        [(0, smoke()), (1, smoke(d=0.012, t=20.3)), (2, smoke(d=0.016, t=20.3)),
         (3, smoke(d=0.016, t=20.6)), (4, smoke(d=0.016, t=20.8)), (5, smoke(d=0.016, t=20.9)),
         (6, smoke(d=0.016, t=20.9, b=89)), (7, smoke(d=0.016, t=20.9, b=88.9))],
        [reading(0.01, 20.0, 90), reading(0.016, 20.3, 90), reading(0.016, 20.9, 90),
         reading(0.016, 20.9, 88.9)],
    ),
    "reading: a field without a deadband emits on any change": (
        [{"type": "water.pressure", "fields": {"pressure_kpa": "pressure"}, "heartbeat_s": 60}],
        [(0, {"pressure": 300}), (1, {"pressure": 300}), (2, {"pressure": 300.1}),
         (3, {"pressure": 300.1})],
        [("water.pressure", {"pressure_kpa": 300}), ("water.pressure", {"pressure_kpa": 300.1})],
    ),
    "reading: heartbeat by tick sends the latest unsent observation, once": (
        only(SMOKE, "smoke.reading"),
        [(0, smoke()), (100, smoke(t=20.2)), (250, "tick"), (300, "tick"), (400, "tick"),
         (450, smoke(t=20.2)), (599, "tick"), (600, "tick"), (900, smoke(t=20.2))],
        [reading(0.01, 20.0, 90), reading(0.01, 20.2, 90), reading(0.01, 20.2, 90),
         reading(0.01, 20.2, 90)],
    ),
    "alarm: bool point, debounce: blips shorter than debounce emit nothing": (
        only(SMOKE, "smoke.alarm"),
        [(0, smoke()), (1, smoke(alarm=True)), (2, smoke()), (3, smoke(alarm=True)),
         (4.9, smoke(alarm=True)), (5, smoke()), (6, smoke(alarm=True)), (7, smoke(alarm=True)),
         (8, smoke(alarm=True, d=0.2)), (9, smoke(d=0.01)), (10, smoke(alarm=True)),
         (11, smoke()), (12, smoke()), (13, smoke())],
        [("smoke.alarm", {"state": "raised", "density_db_m": 0.2}),
         ("smoke.alarm", {"state": "cleared", "density_db_m": 0.01})],
    ),
    "alarm: hysteresis, oscillating around the threshold raises and clears once": (
        [{"type": "smoke.alarm", "when": {"point": "density", "above": 0.15,
                                          "clear_below": 0.1}}],
        [(i, {"density": d}) for i, d in enumerate(
            [0.05, 0.14, 0.151, 0.149, 0.16, 0.12, 0.15, 0.11, 0.1, 0.099, 0.12, 0.149, 0.15])],
        [("smoke.alarm", {"state": "raised", "density_db_m": "<missing>"}),
         ("smoke.alarm", {"state": "cleared"})],
    ),
    "alarm: below / clear_above (pressure drop)": (
        [{"type": "water.leak", "when": {"point": "pressure", "below": 100,
                                         "clear_above": 150}}],
        [(0, {"pressure": 300}), (1, {"pressure": 99}), (2, {"pressure": 120}),
         (3, {"pressure": 101}), (4, {"pressure": 150}), (5, {"pressure": 151})],
        [("water.leak", {"state": "raised"}), ("water.leak", {"state": "cleared"})],
    ),
    "alarm: flapping faster than debounce is silent; then holding raises once": (
        only(WATER, "water.leak"),
        [(t / 2, {"leak": t % 2 == 1}) for t in range(12)]
        + [(6, {"leak": True}), (6.5, {"leak": True}), (7, {"leak": True}),
           (8, {"leak": True})],
        [("water.leak", {"state": "raised"})],
    ),
    "alarm: flapping with debounce 0 raises and clears every time": (
        only(GATE, "gate.forced_open"),
        [(t, {"forced": t % 2 == 1}) for t in range(6)],
        [("gate.forced_open", {"state": s}) for s in ["raised", "cleared"] * 2 + ["raised"]],
    ),
    "alarm: initially active raises after debounce; initially inactive emits nothing": (
        only(SMOKE, "smoke.alarm") + only(SMOKE, "smoke.fault"),
        [(0, smoke(alarm=True)), (1, smoke(alarm=True)), (2, smoke(alarm=True))],
        [("smoke.alarm", {"state": "raised"})],
    ),
    "missing values: unknown this poll, no event; alarms keep their state": (
        SMOKE,
        [(0, {"density": 0.01, "temperature": 20, "alarm": False, "fault": False}),
         (1, {**smoke(alarm=True), "battery": TimeoutError("no answer")}),
         (2, {**smoke(alarm=True), "battery": None}),
         (3, {**smoke(alarm=True), "battery": 90}),
         (4, {"density": 0.5, "fault": True}),
         (5, {}),
         (9, {"alarm": None, "fault": OSError("bus")}),
         (10, smoke(alarm=False, d=0.02)),
         (11, smoke(d=0.02)),
         (12, smoke(d=0.02))],
        [reading(0.01, 20.0, 90),  # t=3: the first poll with every field
         ("smoke.alarm", {"state": "raised", "density_db_m": 0.01}),  # t=3: 2 s after t=1
         ("smoke.fault", {"state": "raised"}),  # t=4
         ("smoke.reading", {"density_db_m": 0.02}),  # t=10
         ("smoke.fault", {"state": "cleared"}),  # t=10
         ("smoke.alarm", {"state": "cleared", "density_db_m": 0.02})],  # t=12
    ),
    "offline reset: the first values after return are sent, alarms stay raised": (
        SMOKE,
        [(0, smoke(alarm=True)), (2, smoke(alarm=True)), (3, "reset"), (4, smoke(alarm=True)),
         (5, "reset"), (6, smoke()), (7, smoke()), (8, smoke())],
        [reading(0.01, 20.0, 90), ("smoke.alarm", {"state": "raised"}),
         reading(0.01, 20.0, 90), reading(0.01, 20.0, 90),
         ("smoke.alarm", {"state": "cleared"})],
    ),
    "state: first observation, then only when a mapped value changes": (
        only(GATE, "gate.state"),
        [(0, {"door_open": False, "locked": True}), (1, {"door_open": 0, "locked": 1}),
         (2, {"door_open": 1, "locked": "true"}), (3, {"door_open": True, "locked": False}),
         (4, {"door_open": True}), (5, {"door_open": "1", "locked": "0"}), (6, "reset"),
         (7, {"door_open": "TRUE", "locked": "FALSE"})],
        [("gate.state", {"door": "closed", "lock": "locked"}),
         ("gate.state", {"door": "open", "lock": "locked"}),
         ("gate.state", {"door": "open", "lock": "unlocked"}),
         ("gate.state", {"door": "open", "lock": "unlocked"})],
    ),
    "record: on counter change, not on the baseline; wrap-around counts": (
        only(GATE, "gate.access"),
        [(0, acc(65534, 1, 11)), (1, acc(65535, 2, 22)), (2, acc(65535, 2, 22)),
         (3, acc(0, 1, 33)), (4, acc(1, 1, 33, method=2))],
        [("gate.access", {"result": "denied", "credential_hash": hash_credential(22),
                          "method": "card"}),
         ("gate.access", {"result": "granted", "credential_hash": hash_credential(33)}),
         ("gate.access", {"result": "granted", "method": "face"})],
    ),
    "record: a field unknown when the counter moves is sent by the next poll": (
        only(GATE, "gate.access"),
        [(0, acc(7, 1, 1)),
         (1, acc(8, ValueError(), 5)),
         (2, {"access_counter": None}),
         (3, {**acc(8, 2, 5), "access_method": None}),
         (4, acc(8, 2, 5)),
         (5, acc(8, 2, 5)),
         (6, "reset"),
         (7, acc(9, 1, 6)),
         (8, acc(10, 1, 6))],
        [("gate.access", {"result": "denied", "credential_hash": hash_credential(5)}),
         ("gate.access", {"result": "granted", "credential_hash": hash_credential(6)})],
    ),
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_sequence(name: str) -> None:
    specs, steps, expected = SEQUENCES[name]
    assert_events(run(specs, steps), expected)


# --------------------------------------------------------------------------- invariants

_ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True),
    st.sampled_from(["", "1", "0", "true", "open", " 12.5 ", "0x10", "CARD-00042"]),
    st.just(TimeoutError("no answer")))
_POLL = st.dictionaries(st.sampled_from(sorted(POINTS)), _ANY_VALUE, max_size=len(POINTS))
_STEP = st.one_of(_POLL, st.sampled_from(["tick", "reset"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 5), _STEP), max_size=40))
def test_any_poll_sequence_gives_valid_linked_events(steps: list[tuple[float, Any]]) -> None:
    """Whatever the devices send: schema-valid events, alarms alternate raise/clear with
    one alarm_id per raise, and no raw credential in any event."""
    r = Run(SMOKE + GATE + WATER)  # Sink.emit validates every event against the schema
    t = 0.0
    timeline: list[Step] = []
    for dt, what in steps:
        t += dt
        timeline.append((t, what))
    events = r.steps(timeline)
    open_alarms: dict[str, str] = {}
    seen_ids: set[str] = set()
    for e in events:
        if "state" in e.data and "alarm_id" in e.data:
            if e.data["state"] == "raised":
                assert e.type not in open_alarms and e.data["alarm_id"] not in seen_ids
                open_alarms[e.type] = e.data["alarm_id"]
                seen_ids.add(e.data["alarm_id"])
            else:
                assert open_alarms.pop(e.type) == e.data["alarm_id"]
        if e.type == "gate.access":
            assert set(e.data) <= {"result", "credential_hash", "method"}
            assert e.data.get("credential_hash", "sha256:").startswith("sha256:")
    assert {k: [v] for k, v in open_alarms.items()} == r.rules.active_alarms


# --------------------------------------------------------------------------- readings


def test_heartbeat_tick_carries_the_observation_time() -> None:
    events = run(only(SMOKE, "smoke.reading"), [(0, smoke()), (100, smoke(t=20.1)),
                                                 (300, "tick")])
    assert [e.observed_at for e in events] == [T0, T0 + 100]


def test_heartbeat_in_update_without_change() -> None:
    events = run(only(SMOKE, "smoke.reading"), [(t, smoke()) for t in range(0, 1000, 50)])
    assert [e.observed_at - T0 for e in events if e.observed_at] == [0, 300, 600, 900]


def test_reading_rounding_and_numeric_text() -> None:
    events = run(only(WATER, "water.level"),
                 [(0, {"level": 1.23456, "battery": 80}), (1, {"level": "1.2391", "battery": 80}),
                  (2, {"level": " 1.25 ", "battery": "79"})])
    assert summary(events) == [("water.level", {"level_m": 1.235, "battery_pct": 80}),
                               ("water.level", {"level_m": 1.25, "battery_pct": 79})]


def test_invalid_values_are_left_out_with_a_warning(logs: Log) -> None:
    specs = only(SMOKE, "smoke.reading") + only(WATER, "water.level")
    events = run(specs, [(0, {**smoke(b=150), "level": "dry", "battery": 150}),
                         (1, {**smoke(b=math.nan), "level": 1.0}),
                         (2, {**smoke(b=math.nan, d=-1), "temperature": "x", "level": 1.0})])
    # battery 150% and NaN are not valid battery_pct: left out; level "dry" is not a number,
    # and water.level requires level_m: no water.level event at t=0.
    assert summary(events) == [
        ("smoke.reading", {"density_db_m": 0.01, "temperature_c": 20.0}),
        ("water.level", {"level_m": 1.0}),
    ]
    problems = {(kw["field"], event) for level, event, kw in logs.records if level == "warning"}
    assert ("battery_pct", "rule_value_out_of_range") in problems
    assert ("level_m", "rule_value_not_a_number") in problems
    assert ("temperature_c", "rule_value_not_a_number") in problems
    assert ("density_db_m", "rule_value_out_of_range") in problems


# --------------------------------------------------------------------------- alarms


def test_alarm_ids_severity_and_clear_links_raise() -> None:
    events = run(only(GATE, "gate.held_open") + only(SMOKE, "smoke.alarm"),
                 [(0, {"held_s": 31, "alarm": True}), (1, {"held_s": 10, "alarm": True}),
                  (2, {"held_s": 4, "alarm": True}), (3, {"held_s": 45, "alarm": False}),
                  (4, {"held_s": 0, "alarm": False}), (5, {"held_s": 0, "alarm": False})])
    held = [e for e in events if e.type == "gate.held_open"]
    assert [(e.data["state"], e.data["held_s"], e.severity) for e in held] == [
        ("raised", 31, Severity.WARNING), ("cleared", 4, Severity.INFO),
        ("raised", 45, Severity.WARNING), ("cleared", 0, Severity.INFO)]
    assert held[0].data["alarm_id"] == held[1].data["alarm_id"]
    assert held[2].data["alarm_id"] == held[3].data["alarm_id"] != held[0].data["alarm_id"]
    assert held[0].data["alarm_id"].startswith(f"{DEVICE}:gate.held_open:")
    smoke_events = [e for e in events if e.type == "smoke.alarm"]
    assert [(e.data["state"], e.severity) for e in smoke_events] == [
        ("raised", Severity.CRITICAL), ("cleared", Severity.INFO)]


def test_alarm_id_fits_the_schema_for_a_long_device_id() -> None:
    device = "d" * 64
    events = run(only(GATE, "gate.forced_open"), [(0, {"forced": True})], device=device)
    alarm_id = events[0].data["alarm_id"]
    assert len(alarm_id) <= 64 and alarm_id.startswith("gate.forced_open:")


def test_active_alarms_and_tick_never_decides_an_alarm() -> None:
    r = Run(only(SMOKE, "smoke.alarm"))
    r.steps([(0, smoke(alarm=True)), (5, "tick")])
    assert r.rules.active_alarms == {}
    r.steps([(6, smoke(alarm=True))])
    assert list(r.rules.active_alarms) == ["smoke.alarm"]


def test_alarm_condition_from_numbers_and_text(logs: Log) -> None:
    events = run(only(GATE, "gate.forced_open"),
                 [(0, {"forced": 0}), (1, {"forced": "1"}), (2, {"forced": "maybe"}),
                  (3, {"forced": 0.0}), (4, {"forced": "true"}), (5, {"forced": "false"})])
    assert [e.data["state"] for e in events] == ["raised", "cleared", "raised", "cleared"]
    assert any(event == "rule_value_not_a_flag" for _, event, _ in logs.records)


# --------------------------------------------------------------------------- maps


@pytest.mark.parametrize("door_map", [
    {True: "open", False: "closed"},  # yaml.safe_load of {true: open, false: closed}
    {"true": "open", "false": "closed"},  # the project's loader keeps keys as text
    {1: "open", 0: "closed"},  # written as register values
    {"1": "open", "0": "closed"},
])
@pytest.mark.parametrize("closed, opened", [(False, True), (0, 1), ("0", "1"),
                                            ("false", "true"), (0.0, 1.0)])
def test_map_keys_match_bools_ints_and_text(door_map: dict[Any, str], closed: Any,
                                            opened: Any) -> None:
    spec = [{"type": "gate.state", "state": {"door": {"point": "door_open", "map": door_map}}}]
    events = run(spec, [(0, {"door_open": closed}), (1, {"door_open": opened})])
    assert summary(events) == [("gate.state", {"door": "closed"}),
                               ("gate.state", {"door": "open"})]


def test_unmapped_state_is_unknown_and_warned_once(logs: Log) -> None:
    events = run(only(GATE, "gate.state"),
                 [(0, {"door_open": 7, "locked": True}), (1, {"door_open": 7, "locked": True}),
                  (2, {"door_open": False, "locked": True})])
    assert summary(events) == [("gate.state", {"door": "unknown", "lock": "locked"}),
                               ("gate.state", {"door": "closed", "lock": "locked"})]
    warnings = [kw for level, _, kw in logs.records if level == "warning"]
    assert len(warnings) == 1 and warnings[0]["field"] == "door" and warnings[0]["value"] == "7"


def test_unmapped_required_enum_drops_the_record(logs: Log) -> None:
    events = run(only(GATE, "gate.access"),
                 [(0, acc(1, 1, 5)), (1, acc(2, 9, 5)), (2, acc(3, 2, 5, method=9))])
    assert summary(events) == [("gate.access", {"result": "denied",
                                                "credential_hash": hash_credential(5)})]
    assert {kw["field"] for level, _, kw in logs.records if level == "warning"} == {
        "result", "method"}


# --------------------------------------------------------------------------- credentials


def test_credentials_are_hashed_never_raw(logs: Log) -> None:
    card = "8801234567"
    specs = only(GATE, "gate.access")
    steps: list[Step] = [(0, acc(1, 1, card)), (1, acc(2, 1, card)),
                         (2, acc(3, 1, f" {card}\n")), (3, acc(4, 1, int(card))),
                         (4, acc(5, 1, "")), (5, acc(6, 1, [card]))]
    events = run(specs, steps, salt=b"gw-salt")
    other = run(specs, steps[:2], salt=b"other-salt")
    hashes = [e.data.get("credential_hash") for e in events]
    assert hashes[:3] == [hash_credential(card, b"gw-salt")] * 3
    assert hashes[3:] == [None, None]  # empty / unusable: left out, never raw
    assert other[0].data["credential_hash"] != hashes[0]
    assert hashes[0] != hash_credential(card)  # the salt is used
    everything = json.dumps([e.data for e in events + other]) + logs.text()
    assert card not in everything
    assert any(kw.get("field") == "credential_hash" and "value" not in kw
               for _, _, kw in logs.records)


def test_hash_credential_format_and_normalization() -> None:
    h = hash_credential("ABC123", b"s")
    assert h.startswith("sha256:") and len(h) == 7 + 64
    assert h == hash_credential(" ABC123 ", b"s") != hash_credential("abc123", b"s")
    assert hash_credential(42) == hash_credential("42") == hash_credential(42.0)
    assert normalize_credential(b"\x01\xab") == "01ab"
    assert normalize_credential("e\u0301") == "\u00e9"  # NFC
    for bad in ("", "  ", None, True, 1.5, math.inf, ["x"]):
        with pytest.raises(ValueError) as err:
            hash_credential(bad)
        assert "1.5" not in str(err.value) and "inf" not in str(err.value)


def test_a_failing_rule_does_not_stop_the_others_nor_leak_values(
        logs: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "4111111111111111"

    def boom(value: object, salt: bytes = b"") -> str:
        raise RuntimeError(f"cannot hash {value}")

    monkeypatch.setattr(rules_mod, "hash_credential", boom)
    events = run(only(GATE, "gate.access") + only(GATE, "gate.forced_open"),
                 [(0, {"access_counter": 1, "forced": False}),
                  (1, {"access_counter": 2, "access_result": 1, "card_number": secret,
                       "forced": True})])
    assert summary(events) == [("gate.forced_open", {"state": "raised",
                                                     "alarm_id": events[0].data["alarm_id"]})]
    assert [(event, kw["error"]) for level, event, kw in logs.records if level == "error"] == [
        ("rule_failed", "RuntimeError")]
    assert secret not in logs.text()


# --------------------------------------------------------------------------- validation


def errors_of(specs: Any, points: set[str] = POINTS) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        parse_rules(specs, points)
    return {".".join(str(p) for p in err["loc"]): err["msg"] for err in exc.value.errors()}


def test_the_profiles_parse_to_their_kinds() -> None:
    kinds = [type(r) for r in parse_rules(SMOKE + GATE + WATER, POINTS)]
    assert kinds == [ReadingRule, AlarmRule, AlarmRule, StateRule, RecordRule, AlarmRule,
                     AlarmRule, AlarmRule, ReadingRule, ReadingRule]
    assert rule_points(parse_rules(SMOKE + GATE + WATER, POINTS)) == POINTS


@pytest.mark.parametrize("spec, loc, words", [
    ({"type": "smoke.alarm", "when": {"point": "alarn"}}, "events.0.when.point",
     ["unknown point `alarn`", "did you mean `alarm`"]),
    ({"type": "gate.access", "on_change": "counter", "fields": {"result": "access_result"}},
     "events.0.on_change", ["unknown point `counter`"]),
    ({"type": "smoke.reading", "fields": {"density_db_m": {"point": "dens"}}},
     "events.0.fields.density_db_m.point", ["unknown point `dens`", "density"]),
    ({"type": "smoke.reading", "when": {"point": "alarm"}}, "events.0.type",
     ["needs a reading rule", "this is an alarm rule"]),
    ({"type": "smoke.alarm", "fields": {"density_db_m": "density"}}, "events.0.type",
     ["needs an alarm rule"]),
    ({"type": "gate.state", "on_change": "access_counter", "fields": {"door": "door_open"}},
     "events.0.type", ["needs a state rule"]),
    ({"type": "gate.access", "state": {"result": "access_result"}}, "events.0.type",
     ["needs a record rule"]),
    ({"type": "device.offline", "on_change": "access_counter"}, "events.0.type",
     ["emitted by the agent itself"]),
    ({"type": "smoke.alrm", "when": {"point": "alarm"}}, "events.0.type",
     ["not in the event catalog", "did you mean `smoke.alarm`"]),
    ({"type": "gate.state", "state": {"door": "door_open"}, "when": {"point": "forced"}},
     "events.0.when", ["one rule, one kind", "an alarm rule", "this is a state rule"]),
    ({"type": "smoke.alarm", "state": {"door": "door_open"}, "deadband": {"door": 1}},
     "events.0.deadband", ["one rule, one kind", "`state` makes this a state rule"]),
    ({"type": "smoke.alarm", "when": {"point": "alarm"}, "fields": {"a": "density"}},
     "events.0.fields", ["not to an alarm rule", "under `data`"]),
    ({"type": "smoke.reading", "fields": {"density_db_m": "density"}, "heartbeat_s": 60,
      "debounce_s": 2}, "events.0.debounce_s", ["belongs to alarm rules"]),
    ({"type": "water.leak", "whne": {"point": "leak"}}, "events.0.whne",
     ["did you mean `when`"]),
    ({"type": "water.leak", "when": {"point": "leak"}, "debounce": 2}, "events.0.debounce",
     ["did you mean `debounce_s`"]),
    ({"type": "water.level", "fields": {"battery_pct": "battery"}}, "events.0.fields",
     ["need `level_m`"]),
    ({"type": "smoke.reading", "fields": {"density_db_m": "density"},
      "deadband": {"temperature_c": 1}}, "events.0.deadband.temperature_c",
     ["not one of this rule's `fields`"]),
    ({"type": "gate.access", "on_change": "access_counter",
      "fields": {"result": "access_result", "card_number": "card_number"}},
     "events.0.fields.card_number", ["raw credential"]),
    ({"type": "gate.access", "on_change": "access_counter",
      "fields": {"result": "access_result", "credential_hash": "card_number"}},
     "events.0.fields.credential_hash", ["must be hashed"]),
    ({"type": "gate.state", "state": {"door": {"point": "door_open",
                                               "map": {True: "opened", False: "closed"}}}},
     "events.0.state.door.map.true", ["`opened` is not a valid `door`"]),
    ({"type": "gate.state", "state": {"door": {"point": "door_open",
                                               "map": {True: "open", "TRUE": "closed"}}}},
     "events.0.state.door.map", ["same value"]),
    ({"type": "smoke.alarm", "when": {"point": "density", "above": 0.1, "clear_below": 0.2}},
     "events.0.when.clear_below", ["must not be more than `above`"]),
    ({"type": "smoke.alarm", "when": {"point": "density", "clear_above": 0.2}},
     "events.0.when.clear_above", ["goes with `below`"]),
    ({"type": "smoke.alarm", "when": {"point": "alarm"}, "data": {"state": "alarm"}},
     "events.0.data.state", ["set by the alarm rule itself"]),
    ({"type": "smoke.alarm", "when": {"point": "alarm"},
      "data": {"density_db_m": {"point": "density", "hash": True, "round": 2}}},
     "events.0.data.density_db_m.round", ["cannot also be rounded"]),
    ({"type": "smoke.reading", "fields": {"densty_db_m": "density"}},
     "events.0.fields.densty_db_m", ["did you mean `density_db_m`"]),
    ({"type": "smoke.reading"}, "events.0", ["cannot tell what kind of rule",
                                             "reading rule: give `fields`"]),
    ("smoke.alarm", "events.0", ["must be a mapping"]),
])
def test_validation_errors_are_located(spec: Any, loc: str, words: list[str]) -> None:
    found = errors_of([SMOKE[0], spec])
    shifted = {key.replace("events.1", "events.0", 1): msg for key, msg in found.items()}
    assert loc in shifted, found
    for word in words:
        assert word in shifted[loc], shifted[loc]


def test_every_mistake_at_once_with_rule_indexes() -> None:
    specs = [SMOKE[0], {"type": "smoke.alrm", "when": {"point": "alarm"}},
             {"type": "smoke.alarm", "when": {"point": "nope"}, "data": {"density_db_m": "x"}},
             {"type": "gate.state", "state": {"door": "door_open"}, "on_change": "locked"}]
    found = errors_of(specs)
    assert set(found) == {"events.1.type", "events.2.when.point",
                          "events.2.data.density_db_m.point", "events.3.on_change"}
    with pytest.raises(ValueError, match=r"events\.2\.when\.point"):
        parse_rules(specs, POINTS)


def test_point_issues_and_check_points() -> None:
    parsed = parse_rules(SMOKE, POINTS)
    issues = point_issues(parsed, {"density", "alarm"})
    assert [str(i).split(":")[0] for i in issues] == [
        "events.0.fields.temperature_c.point", "events.0.fields.battery_pct.point",
        "events.2.when.point"]
    with pytest.raises(ValueError, match="unknown point `fault`"):
        check_points(parsed, {"density", "temperature", "battery", "alarm"})


class Profile(BaseModel):
    """What a device profile model looks like: points plus `events: list[RuleSpec]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    points: list[str]
    events: list[RuleSpec] = []

    @model_validator(mode="after")
    def _known_points(self) -> Profile:
        check_points(self.events, set(self.points))
        return self


@pytest.fixture
def profile_file(tmp_path: Path) -> Iterator[Any]:
    def write(text: str) -> Path:
        path = tmp_path / "profile.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path
    yield write


def test_profile_through_the_config_loader(profile_file: Any) -> None:
    path = profile_file("""\
        points: [door_open, locked, access_counter, access_result, card_number]
        events:
          - type: gate.state
            state:
              door: {point: door_open, map: {true: open, false: closed}}
              lock: {point: locked, map: {true: locked, false: unlocked}}
          - type: gate.access
            on_change: access_counter
            fields:
              result: {point: access_result, map: {1: granted, 2: denied}}
              credential_hash: {point: card_number, hash: true}
        """)
    profile = load_model(path, Profile)
    sink, clock = Sink(), Clock()
    rules = DeviceRules("gate-01", profile.events, sink, clock=clock)
    rules.update({"door_open": True, "locked": 0, "access_counter": 3})
    rules.update({"door_open": 1, "locked": 0, "access_counter": 4, "access_result": 1,
                  "card_number": "A1"})
    assert summary(sink.events) == [
        ("gate.state", {"door": "open", "lock": "unlocked"}),
        ("gate.access", {"result": "granted", "credential_hash": hash_credential("A1")})]


def test_profile_mistakes_have_file_and_line(profile_file: Any) -> None:
    path = profile_file("""\
        points: [alarm, density]
        events:
          - type: smoke.alarm
            when: {point: alarm, above: 1, clear_below: 2}
            debounce: 2
          - type: smoke.reading
            fields: {density_db_m: density}
            when: {point: alarm}
          - type: smoke.alarm
            when: {point: alarm}
            data: {density_db_m: {point: density, map: {true: x}, hash: true}}
        """)
    with pytest.raises(ConfigError) as exc:
        load_model(path, Profile)
    lines = {(issue.line, issue.key) for issue in exc.value.issues}
    assert lines == {(4, "events.0.when.clear_below"), (5, "events.0.debounce"),
                     (8, "events.1.when"), (11, "events.2.data.density_db_m.map")}
    path = profile_file("""\
        points: [alarm, density]
        events:
          - type: smoke.reading
            fields: {density_db_m: density}
          - type: smoke.alarm
            when: {point: alrm}
        """)
    with pytest.raises(ConfigError) as exc:
        load_model(path, Profile)
    [issue] = exc.value.issues
    assert (issue.line, issue.key) == (6, "events.1.when.point")
    assert "did you mean `alarm`" in issue.message


def test_rule_spec_json_schema_is_generated() -> None:
    text = json.dumps(Profile.model_json_schema())
    assert "ReadingRule" in text and "WhenSpec" in text
