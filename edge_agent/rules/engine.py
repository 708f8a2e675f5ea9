"""The rules engine: polled point values in, catalog events out.

Drivers (Modbus, serial line, ...) poll a device's *points* and hand each poll's values
to `DeviceRules.update()`; the rules of the device profile's `events:` list decide what
is worth an event. Values become events through rules, never as raw dumps:

- **reading** (`fields`, `deadband`, `heartbeat_s`; telemetry types): emitted when first
  seen, when any field moved by more than its deadband from the value last *sent*
  (absolute; a field without a deadband: any change), or when `heartbeat_s` passed
  since the last emission. `tick()` sends a reading whose heartbeat fell due between
  polls (the latest observed values, not yet sent, with the time they were observed).
  `report: every_poll` (or the device's `every_poll`, e.g. Modbus
  `forward_every_reading`) sends every poll's complete values.
  `sensor.reading` (any device kind): each field is a named quantity, a number (a flag
  is 0/1), sent as `{kind, quantities: {name: {value, unit}}}` with the field's `unit`
  or its point's (`units`, from the profile; the profile checked both are in the fixed
  list) and the device `kind`.
- **alarm** (`when`, `debounce_s`, `data`; ALARM_TYPES): `when: {point: p}` is active
  while p is true (a bool, a non-zero number, `"true"`/`"1"`); `{point: p, above: a,
  clear_below: c}` is active when p > a and, once raised, stays so until p < c
  (hysteresis; `below`/`clear_above` mirror it). The condition (or its absence) must be
  seen for `debounce_s` (the injected clock; 0 = at once) before a raise (or clear).
  A raise emits `{state: raised, alarm_id, ...data}` with the catalog severity, the clear
  `{state: cleared, alarm_id: <the same>, ...data}` with severity info. An alarm observed
  inactive at start emits nothing, unless the last run left it open
  (edge_agent.pipeline.open_alarms): then it starts raised under its old id, so it goes on
  without a second raise, and its clear names that id. Debounce is confirmed by polls
  only: `tick()` never raises or clears, since nothing was observed.
  An alarm that toggles (raise or clear) more than `max_toggles_per_min` times a minute
  is chattering (edge_agent.rules.chatter; the gateway's `alarm_chatter`, a rule's `chatter:`
  overrides it): one `<kind>.chattering` raise, its toggles counted instead of sent
  (a raise while reported cleared is still sent), and after `calm_s` without a toggle,
  seen by a poll, its state as it is and the chattering clear.
- **declared alarm** (`device.alarm` with `alarm_type: <kind>.<name>`): an alarm rule
  whose events carry `alarm_type` and `kind` before its data, with the rule's
  `severity`; its ids, restore (an open alarm is matched by type *and* `alarm_type`)
  and chatter (`device.chattering`, `alarm_type` the declared one) work by the declared
  type, so one device may declare several.
- **state** (`state`; gate.state): emitted on the first observation and when any mapped
  value changes. A value the map does not cover becomes `"unknown"` where the schema
  allows it (logged as a warning, once per value).
- **record** (`on_change`, `fields`; gate.access): emitted when the counter point changes
  (any change, so a wrap-around counts); the first observation is the baseline. A
  `hash: true` field carries `privacy.hash_credential(value, salt)`, never the value.

Unknown values: a point missing from a poll, or given as None or an exception instance,
is unknown *this poll*. A reading, state or record rule that reads an unknown point
emits nothing and keeps its memory (a record whose counter changed is emitted by the
next poll that has all its fields); an alarm keeps its state (an unknown data field is
left out of the alarm event). A value that can never be valid (not a number where the
schema wants one, out of the schema's range, an unmapped value of an enum without
`unknown`) is left out of the event with a warning; if the type requires that field,
there is no event. So every event the engine emits validates against the JSON Schema.

`reset()` is for a device that went offline: readings, states and counters are
forgotten (the first values after its return are emitted, the first counter is a new
baseline); alarms stay raised until observed cleared.

Credentials never appear in events or logs: hashed fields are never logged, and a
rule that fails logs the exception type and the code line, not its message.
"""

from __future__ import annotations

import math
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from edge_agent.config.models import ChatterConfig
from edge_agent.contract.envelope import CATALOG, CHATTER_TYPES, Severity, chatter_type, new_ulid
from edge_agent.contract.logs import get_logger
from edge_agent.pipeline import OpenAlarm
from edge_agent.rules._catalog import (
    SENSOR_READING,
    DataShape,
    PropertyShape,
    as_flag,
    as_number,
    canon,
    data_shape,
    lookup,
)
from edge_agent.rules._spec import (
    AlarmRule,
    AnyRule,
    FieldSpec,
    ReadingRule,
    RecordRule,
    RuleIssue,
    RuleSpec,
    StateRule,
    WhenSpec,
    check_points,
    issues_error,
    parse_rules,
    point_issues,
)
from edge_agent.rules.chatter import ChatterGuard, chatter_alarm_id, chatter_policy, report_chatter
from edge_agent.rules.privacy import hash_credential
from edge_agent.sdk.api import EventSink, restored_alarms

__all__ = [
    "AlarmRule",
    "AnyRule",
    "DeviceRules",
    "FieldSpec",
    "ReadingRule",
    "RecordRule",
    "RuleIssue",
    "RuleSpec",
    "StateRule",
    "WhenSpec",
    "check_points",
    "issues_error",
    "new_alarm_id",
    "parse_rules",
    "point_issues",
    "rule_points",
]

log = get_logger("edge_agent.rules.engine")

#: The schema's limit on `data.alarm_id`.
ALARM_ID_MAX = 64
#: Distinct (rule, field, problem, value) warnings remembered, so a stuck value warns once.
_WARNED_MAX = 256


def rule_points(rules: Iterable[AnyRule]) -> set[str]:
    """Every point the rules read: what a driver has to poll."""
    return {point for rule in rules for _, point in rule.point_refs()}


def new_alarm_id(device: str, type_: str, observed_at: float) -> str:
    """`<device>:<type>:<ULID>`, unique per raise; `<type>:<ULID>` if that passes 64 chars."""
    ulid = new_ulid(int(observed_at * 1000))
    full = f"{device}:{type_}:{ulid}"
    return full if len(full) <= ALARM_ID_MAX else f"{type_}:{ulid}"


_UNKNOWN: Any = object()  # a point not known this poll
_INVALID: Any = object()  # a value that cannot go into the event (warned, left out)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_unknown(raw: Any) -> bool:
    return raw is None or isinstance(raw, BaseException)


class DeviceRules:
    """The rules of one device, with what they remember between polls.

    Not thread-safe: call it from the one task that polls the device.
    """

    def __init__(
        self,
        device_id: str,
        rules: Sequence[RuleSpec],
        sink: EventSink,
        *,
        clock: Callable[[], float] = time.monotonic,
        salt: bytes = b"",
        chatter: ChatterConfig | None = None,
        kind: str | None = None,
        units: Mapping[str, str] | None = None,
        every_poll: bool = False,
    ) -> None:
        self.device_id = device_id
        #: `sensor.reading`: the device kind (data.kind), each point's unit (a field's
        #: `unit` overrides it), and whether every reading rule forwards every poll
        self.kind = kind or "device"
        self.units: Mapping[str, str] = dict(units or {})
        self.every_poll = every_poll
        self._sink = sink
        self._clock = clock
        self._salt = salt
        #: chatter control of the alarm rules (a rule's `chatter:` overrides keys of it)
        self.chatter = chatter if chatter is not None else chatter_policy(sink)
        self._warned: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._rules: list[_Rule] = [_build(self, index, rule) for index, rule in enumerate(rules)]
        self._restore(restored_alarms(sink, device_id))

    def _restore(self, open_alarms: list[OpenAlarm]) -> None:
        """Alarms left open by the last run go on under their ids (edge_agent.pipeline.open_alarms):
        no second raise while they hold, and their clear names the old id."""
        left = list(open_alarms)
        for rule in self._rules:
            if not isinstance(rule, _Alarm):
                continue
            found = next((a for a in left if a.type == rule.type and (
                rule.declared == rule.type or a.data.get("alarm_type") == rule.declared)), None)
            if found is not None:
                left.remove(found)
                rule.raised, rule.alarm_id = True, found.alarm_id
            chattering = next((a for a in left if a.type in CHATTER_TYPES
                               and a.data.get("alarm_type") == rule.declared), None)
            if chattering is not None:  # cleared once the alarm has been calm for a while
                left.remove(chattering)
                rule.chatter.resume(chattering.alarm_id, self._clock())

    # ------------------------------------------------------------------ driver API

    def update(self, values: Mapping[str, Any], observed_at: float | None = None) -> None:
        """One poll's values by point name (observed_at: epoch seconds, default now)."""
        now = self._clock()
        when = time.time() if observed_at is None else observed_at
        for rule in self._rules:
            self._guard(rule, "update", rule.update, values, now, when)

    def tick(self) -> None:
        """Send readings whose heartbeat fell due since the last poll."""
        now = self._clock()
        for rule in self._rules:
            self._guard(rule, "tick", rule.tick, now)

    def reset(self) -> None:
        """The device went offline: forget what was sent; alarms stay raised."""
        for rule in self._rules:
            rule.reset()

    @property
    def active_alarms(self) -> dict[str, list[str]]:
        """Raised alarms by type: their alarm_ids (for a status page)."""
        out: dict[str, list[str]] = {}
        for rule in self._rules:
            if isinstance(rule, _Alarm) and rule.alarm_id is not None:
                out.setdefault(rule.declared, []).append(rule.alarm_id)
        return out

    # ------------------------------------------------------------------ for the rules

    @property
    def salt(self) -> bytes:
        return self._salt

    @property
    def sink(self) -> EventSink:
        return self._sink

    def emit(self, type_: str, data: dict[str, Any], observed_at: float,
             severity: Severity | None = None) -> None:
        self._sink.emit(self.device_id, type_, dict(data), severity=severity,
                        observed_at=observed_at)

    def warn(self, index: int, type_: str, field: str, problem: str, raw: Any,
             *, secret: bool = False) -> None:
        """Log a value problem once per (rule, field, problem, value); never a secret value."""
        shown = None if secret else canon(raw) if canon(raw) is not None else type(raw).__name__
        key = (index, field, problem, shown)
        if key in self._warned:
            return
        self._warned[key] = None
        if len(self._warned) > _WARNED_MAX:
            self._warned.popitem(last=False)
        extra = {} if secret else {"value": repr(raw)[:80]}
        log.warning("rule_value_" + problem, device=self.device_id, rule=index, type=type_,
                    field=field, **extra)

    def _guard(self, rule: _Rule, step: str, fn: Callable[..., None], *args: Any) -> None:
        """One broken rule must not silence the others; the log never holds its values."""
        try:
            fn(*args)
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1:] or None
            where = f"{frame[0].filename}:{frame[0].lineno}" if frame else "?"
            log.error("rule_failed", device=self.device_id, rule=rule.index, type=rule.type,
                      step=step, error=type(exc).__name__, where=where)


# --------------------------------------------------------------------------- fields


class _Field:
    """One data field: reads its point and makes it a valid value for the type."""

    def __init__(self, owner: DeviceRules, index: int, type_: str, name: str,
                 spec: FieldSpec) -> None:
        self.owner, self.index, self.type, self.name, self.spec = owner, index, type_, name, spec
        self.prop: PropertyShape | None = data_shape(type_).properties.get(name)
        #: a `sensor.reading` quantity: a number (a flag counts as 0/1)
        self.quantity = type_ == SENSOR_READING

    def read(self, values: Mapping[str, Any]) -> Any:
        """The data value, _UNKNOWN (not known this poll) or _INVALID (warned, left out)."""
        raw = values.get(self.spec.point)
        if _is_unknown(raw):
            return _UNKNOWN
        if self.spec.hash:
            try:
                return hash_credential(raw, self.owner.salt)
            except ValueError:
                self._warn("unusable_credential", raw)
                return _INVALID
        return self._convert(raw)

    def _convert(self, raw: Any) -> Any:
        prop, spec = self.prop, self.spec
        value = raw
        if spec.map is not None:
            found, value = lookup(spec.map, raw)
            if not found:
                return self._unknown_or_invalid("unmapped", raw)
        if (prop is not None and prop.numeric) or spec.round is not None or self.quantity:
            number = int(value) if self.quantity and isinstance(value, bool) \
                else as_number(value)
            if number is None:
                return self._invalid("not_a_number", raw)
            if spec.round is not None:
                number = round(number, spec.round)
            if prop is not None and prop.json_type == "integer" and isinstance(number, float) \
                    and number.is_integer():
                number = int(number)
            value = number
        elif not (isinstance(value, bool | int | str)
                  or (isinstance(value, float) and math.isfinite(value))):
            return self._invalid("not_a_json_value", raw)
        if prop is not None and not prop.validate(value):
            if prop.enum is not None:
                return self._unknown_or_invalid("not_in_enum", raw)
            return self._invalid("out_of_range", raw)
        return value

    def _unknown_or_invalid(self, problem: str, raw: Any) -> Any:
        if self.prop is None or self.prop.allows_unknown:
            self._warn(problem, raw)
            return "unknown"
        return self._invalid(problem, raw)

    def _invalid(self, problem: str, raw: Any) -> Any:
        self._warn(problem, raw)
        return _INVALID

    def _warn(self, problem: str, raw: Any) -> None:
        self.owner.warn(self.index, self.type, self.name, problem, raw, secret=self.spec.hash)


# --------------------------------------------------------------------------- rules


class _Rule:
    def __init__(self, owner: DeviceRules, index: int, rule: AnyRule) -> None:
        self.owner, self.index, self.type = owner, index, rule.type
        self.alarm = isinstance(rule, AlarmRule)
        self.shape: DataShape = data_shape(rule.type)
        self.fields = [_Field(owner, index, rule.type, name, spec)
                       for name, spec in rule.data_fields().items()]

    def collect(self, values: Mapping[str, Any], *, need_all: bool) -> dict[str, Any] | None:
        """The data of this poll; None when a needed point is unknown (need_all)."""
        data: dict[str, Any] = {}
        for field in self.fields:
            value = field.read(values)
            if value is _UNKNOWN:
                if need_all:
                    return None
                continue
            if value is not _INVALID:
                data[field.name] = value
        return data

    def complete(self, data: Mapping[str, Any]) -> bool:
        """Whether the type's required fields are all there (a left-out invalid one is not)."""
        if self.type == SENSOR_READING:
            return bool(data)  # kind and quantities are added when it is sent
        return not self.shape.missing(set(data), alarm=self.alarm)

    def update(self, values: Mapping[str, Any], now: float, observed_at: float) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        return None

    def reset(self) -> None:
        raise NotImplementedError


class _Reading(_Rule):
    def __init__(self, owner: DeviceRules, index: int, rule: ReadingRule) -> None:
        super().__init__(owner, index, rule)
        self.deadband = dict(rule.deadband)
        self.heartbeat_s = rule.heartbeat_s
        self.every_poll = owner.every_poll or rule.report == "every_poll"
        #: sensor.reading: quantity -> unit (the field's, else its point's)
        self.units = {name: spec.unit or owner.units.get(spec.point, "1")
                      for name, spec in rule.fields.items()} \
            if rule.type == SENSOR_READING else None
        self.reset()

    def reset(self) -> None:
        self.sent: dict[str, Any] | None = None
        self.sent_at: float | None = None
        self.unsent: tuple[dict[str, Any], float] | None = None

    def update(self, values: Mapping[str, Any], now: float, observed_at: float) -> None:
        data = self.collect(values, need_all=True)
        if not data or not self.complete(data):
            return
        if self.every_poll or self.sent is None or self._moved(data, self.sent) \
                or self._due(now):
            self._send(data, now, observed_at)
        else:
            self.unsent = (data, observed_at)

    def tick(self, now: float) -> None:
        if self.unsent is not None and self._due(now):
            data, observed_at = self.unsent
            self._send(data, now, observed_at)

    def _send(self, data: dict[str, Any], now: float, observed_at: float) -> None:
        if self.units is None:
            self.owner.emit(self.type, data, observed_at)
        else:
            quantities = {name: {"value": value, "unit": self.units[name]}
                          for name, value in data.items()}
            self.owner.emit(self.type, {"kind": self.owner.kind, "quantities": quantities},
                            observed_at)
        self.sent, self.sent_at, self.unsent = data, now, None

    def _due(self, now: float) -> bool:
        return self.heartbeat_s is not None and self.sent_at is not None \
            and now - self.sent_at >= self.heartbeat_s

    def _moved(self, data: Mapping[str, Any], sent: Mapping[str, Any]) -> bool:
        for name, value in data.items():
            if name not in sent:
                return True
            old = sent[name]
            if _is_number(value) and _is_number(old):
                if abs(value - old) > self.deadband.get(name, 0.0):
                    return True
            elif value != old:
                return True
        return False


class _Alarm(_Rule):
    def __init__(self, owner: DeviceRules, index: int, rule: AlarmRule) -> None:
        super().__init__(owner, index, rule)
        self.when: WhenSpec = rule.when
        self.debounce_s = rule.debounce_s
        self.severity = Severity(rule.severity) if rule.severity is not None \
            else CATALOG[rule.type].severity
        #: the declared alarm type (device.alarm) or the type: what names this alarm
        self.declared = rule.declared
        #: device.alarm: what every event of it carries before its own data fields
        self.head: dict[str, Any] = {"alarm_type": rule.alarm_type, "kind": owner.kind} \
            if rule.alarm_type is not None else {}
        self.raised = False  # the condition, debounced (what hysteresis works from)
        self.alarm_id: str | None = None  # set while the events sent say "raised"
        self.since: float | None = None  # when the opposite of `raised` was first seen
        self.chatter = ChatterGuard(owner.chatter.overridden(rule.chatter))

    def reset(self) -> None:
        self.since = None  # observations before the outage do not count toward debounce

    def update(self, values: Mapping[str, Any], now: float, observed_at: float) -> None:
        active = self._active(values.get(self.when.point))
        if active is None:
            return  # unknown this poll: keep the state (and a running debounce)
        if active == self.raised:
            self.since = None
        else:
            if self.since is None:
                self.since = now
            if now - self.since >= self.debounce_s:
                self.since = None
                self.raised = active
                self._toggled(values, now, observed_at)
        self._settle(values, now, observed_at)

    def _toggled(self, values: Mapping[str, Any], now: float, observed_at: float) -> None:
        """The debounced condition changed: send it, unless chatter control counts it."""
        verdict = self.chatter.toggle(self.raised, self.alarm_id is not None, now)
        if verdict.start:
            self._chattering("raised", {"toggles": verdict.toggles}, observed_at)
        if verdict.send:
            self._report(values, observed_at)
        if verdict.start or not verdict.send:
            report_chatter(self.owner.sink, self.owner.device_id, self.declared,
                           suppressed=0 if verdict.send else 1, started=verdict.start)

    def _settle(self, values: Mapping[str, Any], now: float, observed_at: float) -> None:
        """A chatter that calmed down: report the alarm's state as it is, then clear it."""
        calm = self.chatter.settle(self.raised, self.alarm_id is not None, now)
        if calm is None:
            return
        if calm.send:
            self._report(values, observed_at)
        self._chattering("cleared", {"toggles": calm.toggles, "chatter_s": calm.chatter_s,
                                     "final_state": "raised" if self.raised else "cleared"},
                         observed_at)

    def _report(self, values: Mapping[str, Any], observed_at: float) -> None:
        """Send the alarm's raise or clear (by `raised`)."""
        data = self.collect(values, need_all=False) or {}
        if self.raised:
            self.alarm_id = new_alarm_id(self.owner.device_id, self.declared, observed_at)
            self.owner.emit(self.type, {"state": "raised", "alarm_id": self.alarm_id,
                                        **self.head, **data}, observed_at, self.severity)
        else:
            self.owner.emit(self.type, {"state": "cleared", "alarm_id": self.alarm_id,
                                        **self.head, **data}, observed_at, Severity.INFO)
            self.alarm_id = None

    def _chattering(self, state: str, extra: dict[str, Any], observed_at: float) -> None:
        type_ = chatter_type(self.type)
        if state == "raised":
            self.chatter.alarm_id = chatter_alarm_id(self.owner.device_id, self.type,
                                                     observed_at)
        data = {"state": state, "alarm_id": self.chatter.alarm_id,
                "alarm_type": self.declared, **extra}
        self.owner.emit(type_, data, observed_at,
                        CATALOG[type_].severity if state == "raised" else Severity.INFO)
        if state == "cleared":
            self.chatter.alarm_id = None

    def _active(self, raw: Any) -> bool | None:
        """The condition now, given whether the alarm is raised (hysteresis)."""
        if _is_unknown(raw):
            return None
        when = self.when
        if not when.threshold:
            flag = as_flag(raw)
            if flag is None:
                self.owner.warn(self.index, self.type, "when", "not_a_flag", raw)
            return flag
        value = as_number(raw)
        if value is None:
            self.owner.warn(self.index, self.type, "when", "not_a_number", raw)
            return None
        if when.above is not None:
            if not self.raised:
                return value > when.above
            clear = when.above if when.clear_below is None else when.clear_below
            return not value < clear
        assert when.below is not None
        if not self.raised:
            return value < when.below
        clear = when.below if when.clear_above is None else when.clear_above
        return not value > clear


class _State(_Rule):
    def __init__(self, owner: DeviceRules, index: int, rule: StateRule) -> None:
        super().__init__(owner, index, rule)
        self.reset()

    def reset(self) -> None:
        self.sent: dict[str, Any] | None = None

    def update(self, values: Mapping[str, Any], now: float, observed_at: float) -> None:
        data = self.collect(values, need_all=True)
        if not data or not self.complete(data) or data == self.sent:
            return
        self.owner.emit(self.type, data, observed_at)
        self.sent = data


class _Record(_Rule):
    def __init__(self, owner: DeviceRules, index: int, rule: RecordRule) -> None:
        super().__init__(owner, index, rule)
        self.counter = rule.on_change
        self.reset()

    def reset(self) -> None:
        self.baseline: str | None = None

    def update(self, values: Mapping[str, Any], now: float, observed_at: float) -> None:
        raw = values.get(self.counter)
        count = None if _is_unknown(raw) else canon(raw)
        if count is None:
            return
        if self.baseline is None:
            self.baseline = count
            return
        if count == self.baseline:
            return
        data = self.collect(values, need_all=True)
        if data is None:
            return  # a field is unknown this poll: the next poll sends the record
        previous, self.baseline = self.baseline, count
        self._note_missed(previous, count)
        if self.complete(data):
            self.owner.emit(self.type, data, observed_at)

    def _note_missed(self, previous: str, count: str) -> None:
        """More than one record between two polls: only the last one can be read."""
        old, new = as_number(previous), as_number(count)
        if isinstance(old, int) and isinstance(new, int) and new - old > 1:
            log.info("rule_records_missed", device=self.owner.device_id, rule=self.index,
                     type=self.type, missed=new - old - 1,
                     hint="poll more often than records happen")


def _build(owner: DeviceRules, index: int, rule: AnyRule) -> _Rule:
    if isinstance(rule, ReadingRule):
        return _Reading(owner, index, rule)
    if isinstance(rule, AlarmRule):
        return _Alarm(owner, index, rule)
    if isinstance(rule, StateRule):
        return _State(owner, index, rule)
    if isinstance(rule, RecordRule):
        return _Record(owner, index, rule)
    raise TypeError(f"not a rule: {type(rule).__name__}; validate it with parse_rules()")
