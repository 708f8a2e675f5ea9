"""Rule specs: the `events:` list of a device profile, validated before any I/O.

Import the names from `edge_agent.rules`. Every error carries
the location of the mistake relative to the rule (`when.point`, `fields.battery_pct.map.1`)
with no union tags in it, so the config loader maps `events.2.when.point` to a file:line.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from edge_agent.config.models import ChatterOverride
from edge_agent.contract.envelope import CATALOG
from edge_agent.contract.units import (
    QUANTITY_PATTERN,
    RESERVED_KINDS,
    UNITS,
    is_alarm_type,
    unit_hint,
)
from edge_agent.rules._catalog import (
    ALARM_KEYS,
    DECLARED_ALARM,
    KIND_SHAPE,
    SENSOR_READING,
    PropertyShape,
    RuleKind,
    agent_owned,
    canon,
    data_shape,
    kind_for_type,
    types_for_kind,
)

Loc = tuple[str | int, ...]

_TITLE = "rules"


def _err(loc: Loc, message: str, input_: Any = None, type_: str = "value_error"
         ) -> InitErrorDetails:
    return {"type": PydanticCustomError(type_, message), "loc": loc, "input": input_}


def _again(err: ErrorDetails, prefix: Loc = ()) -> InitErrorDetails:
    """An error of an inner validation, re-raised unchanged under `prefix`."""
    ctx = {k: v for k, v in (err.get("ctx") or {}).items()
           if isinstance(v, str | int | float | bool)}  # what the loader reads, JSON-safe
    return {"type": PydanticCustomError(err["type"], err["msg"], ctx or None),
            "loc": (*prefix, *err["loc"]), "input": err["input"]}


def _raise(title: str, errors: list[InitErrorDetails]) -> NoReturn:
    raise ValidationError.from_exception_data(title, errors)


def _a(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


# --------------------------------------------------------------------------- fields


def _point_shorthand(value: Any) -> Any:
    """`battery_pct: battery` is short for `battery_pct: {point: battery}`."""
    return {"point": value} if isinstance(value, str) else value


def _map_target(value: Any) -> Any:
    if isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise PydanticCustomError("value_error", "a map value must be text, a number or true/false")


MapTarget = Annotated[Any, AfterValidator(_map_target),
                      WithJsonSchema({"type": ["string", "number", "boolean"]})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    """Where one `data` field comes from: a point, optionally mapped, hashed or rounded."""

    point: str = Field(min_length=1, description="point name in the device profile")
    map: dict[str, MapTarget] | None = Field(
        default=None, description="device value -> data value; YAML keys true/1/'x' all work")
    hash: bool = Field(default=False, description="send sha256 of the salted value, never it")
    round: int | None = Field(default=None, ge=0, le=12, description="decimal places")
    unit: str | None = Field(default=None, description="sensor.reading: the quantity's unit "
                             "(default: the point's `unit`), from the fixed list")

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, value: str | None) -> str | None:
        if value is not None and value not in UNITS:
            raise PydanticCustomError("value_error", "unknown unit `{unit}`; {hint}",
                                      {"unit": value, "hint": unit_hint(value)})
        return value

    @field_validator("map", mode="before")
    @classmethod
    def _canonical_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        first: dict[str, Any] = {}
        for key, target in value.items():
            text = canon(key) if isinstance(key, bool | int | float | str) else None
            if text is None:
                raise PydanticCustomError("value_error",
                                          "a map key must be text, a number or true/false")
            if text in first:
                raise PydanticCustomError(
                    "value_error", f"map keys `{first[text]}` and `{key}` are the same value")
            first[text] = key
            out[text] = target
        return out

    @model_validator(mode="after")
    def _one_transform(self) -> FieldSpec:
        errors = []
        if self.hash and self.map is not None:
            errors.append(_err(("map",), "a hashed field cannot also be mapped"))
        if self.hash and self.round is not None:
            errors.append(_err(("round",), "a hashed field cannot also be rounded"))
        if self.map is not None and not self.map:
            errors.append(_err(("map",), "the map is empty; give `device value: data value` "
                                         "pairs or remove `map`"))
        if errors:
            _raise("FieldSpec", errors)
        return self


FieldRef = Annotated[FieldSpec, BeforeValidator(_point_shorthand)]
Threshold = Annotated[float, Field(allow_inf_nan=False)]


class WhenSpec(_Strict):
    """An alarm condition: a bool point, or a number beyond a threshold with hysteresis."""

    point: str = Field(min_length=1)
    above: Threshold | None = Field(default=None, description="active when value > above")
    clear_below: Threshold | None = Field(
        default=None, description="once raised, clears only when value < clear_below")
    below: Threshold | None = Field(default=None, description="active when value < below")
    clear_above: Threshold | None = Field(
        default=None, description="once raised, clears only when value > clear_above")

    @model_validator(mode="after")
    def _thresholds(self) -> WhenSpec:
        errors = []
        if self.above is not None and self.below is not None:
            errors.append(_err(("below",), "give `above` or `below`, not both; use two rules "
                                           "for a band"))
        if self.clear_below is not None:
            if self.above is None:
                errors.append(_err(("clear_below",), "`clear_below` goes with `above`"))
            elif self.clear_below > self.above:
                errors.append(_err(("clear_below",), f"`clear_below` ({self.clear_below:g}) "
                                   f"must not be more than `above` ({self.above:g})"))
        if self.clear_above is not None:
            if self.below is None:
                errors.append(_err(("clear_above",), "`clear_above` goes with `below`"))
            elif self.clear_above < self.below:
                errors.append(_err(("clear_above",), f"`clear_above` ({self.clear_above:g}) "
                                   f"must not be less than `below` ({self.below:g})"))
        if errors:
            _raise("WhenSpec", errors)
        return self

    @property
    def threshold(self) -> bool:
        return self.above is not None or self.below is not None


# --------------------------------------------------------------------------- rules


class _Rule(_Strict):
    kind: ClassVar[RuleKind]
    fields_key: ClassVar[str]

    type: str = Field(description="catalog type (docs/events.md)")

    @field_validator("type")
    @classmethod
    def _type_fits_kind(cls, value: str) -> str:
        if value not in CATALOG:
            close = difflib.get_close_matches(value, list(CATALOG), n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else "see docs/events.md"
            raise PydanticCustomError("value_error",
                                      f"`{value}` is not in the event catalog; {hint}")
        if agent_owned(value):
            raise PydanticCustomError(
                "value_error", f"`{value}` is emitted by the agent itself, not by device rules")
        fit = kind_for_type(value)
        if fit != cls.kind:
            assert fit is not None
            allowed = ", ".join(types_for_kind(cls.kind)) or "none"
            raise PydanticCustomError(
                "value_error",
                f"`{value}` needs {_a(fit)} {fit} rule ({KIND_SHAPE[fit]}), but this is "
                f"{_a(cls.kind)} {cls.kind} rule ({KIND_SHAPE[cls.kind]}), which fits: {allowed}")
        return value

    def data_fields(self) -> Mapping[str, FieldSpec]:
        """The `data` fields the rule fills in, by name."""
        raise NotImplementedError

    def point_refs(self) -> Iterator[tuple[Loc, str]]:
        """Every point the rule reads, with its location relative to the rule."""
        for name, spec in self.data_fields().items():
            yield (self.fields_key, name, "point"), spec.point

    @model_validator(mode="after")
    def _fits_schema(self) -> _Rule:
        errors = self._shape_errors()
        if errors:
            _raise(type(self).__name__, errors)
        return self

    def _shape_errors(self) -> list[InitErrorDetails]:
        """Check the fields against the type's data in the JSON Schema (the contract)."""
        shape = data_shape(self.type)
        fields = self.data_fields()
        key = self.fields_key
        errors: list[InitErrorDetails] = []
        for name, spec in fields.items():
            loc: Loc = (key, name)
            prop = shape.properties.get(name)
            if spec.unit is not None and self.type != SENSOR_READING:
                errors.append(_err((*loc, "unit"), f"`unit` is for `{SENSOR_READING}` "
                                   f"quantities; the fields of `{self.type}` have fixed units "
                                   "(docs/events.md)"))
            if name in shape.forbidden:
                errors.append(_err(loc, f"`{name}` would be a raw credential, which "
                                   f"`{self.type}` must never carry; send "
                                   "`credential_hash: {point: ..., hash: true}` instead"))
            elif self.kind == "alarm" and name in ALARM_KEYS:
                errors.append(_err(loc, f"`{name}` is set by the alarm rule itself"))
            elif name == "credential_hash" and not spec.hash:
                errors.append(_err(loc, "`credential_hash` must be hashed: write "
                                   f"`credential_hash: {{point: {spec.point}, hash: true}}`"))
            elif prop is None:
                close = difflib.get_close_matches(name, list(shape.properties), n=1, cutoff=0.75)
                if close:
                    errors.append(_err(loc, f"`{name}` is not a documented field of "
                                       f"`{self.type}`; did you mean `{close[0]}`?"))
            else:
                errors += self._field_errors(loc, spec, prop)
        missing = shape.missing(set(fields), alarm=self.kind == "alarm")
        if missing:
            errors.append(_err((key,), f"`{self.type}` events need {', '.join(missing)}; "
                               f"add it under `{key}`"))
        return errors

    @staticmethod
    def _field_errors(loc: Loc, spec: FieldSpec, prop: PropertyShape) -> list[InitErrorDetails]:
        errors: list[InitErrorDetails] = []
        if spec.hash and (prop.enum is not None or prop.json_type not in (None, "string")):
            errors.append(_err((*loc, "hash"), f"`{prop.name}` is {prop.describe()}, not free "
                               "text: it cannot be hashed"))
        if spec.round is not None and not prop.numeric \
                and (prop.enum is not None or prop.json_type is not None):
            errors.append(_err((*loc, "round"), f"`{prop.name}` is {prop.describe()}; only "
                               "numbers are rounded"))
        for key, target in (spec.map or {}).items():
            if not prop.validate(target):
                errors.append(_err((*loc, "map", key), f"`{target}` is not a valid "
                                   f"`{prop.name}`: expected {prop.describe()}", target))
        return errors


class ReadingRule(_Rule):
    """Telemetry: emitted when first seen, on a change beyond the deadband, or on heartbeat."""

    kind: ClassVar[RuleKind] = "reading"
    fields_key: ClassVar[str] = "fields"

    fields: dict[str, FieldRef] = Field(min_length=1, description="data field -> point")
    deadband: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict,
        description="data field -> absolute change that is not worth an event")
    heartbeat_s: float | None = Field(
        default=None, gt=0, le=86400, allow_inf_nan=False,
        description="emit at least this often while values are observed")
    report: Literal["on_change", "every_poll"] = Field(
        default="on_change", description="every_poll: forward every poll's values (no "
        "deadband); on_change: on a change beyond the deadband or the heartbeat")

    def data_fields(self) -> Mapping[str, FieldSpec]:
        return self.fields

    def _shape_errors(self) -> list[InitErrorDetails]:
        errors = self._quantity_errors() if self.type == SENSOR_READING \
            else super()._shape_errors()
        for name in self.deadband:
            if name not in self.fields:
                close = difflib.get_close_matches(name, list(self.fields), n=1, cutoff=0.6)
                hint = f"; did you mean `{close[0]}`?" if close else ""
                errors.append(_err(("deadband", name),
                                   f"`{name}` is not one of this rule's `fields`{hint}"))
        return errors


    def _quantity_errors(self) -> list[InitErrorDetails]:
        """`sensor.reading`: each field is a named number (its unit: `unit`, else the
        point's, checked by the profile that knows the points)."""
        errors: list[InitErrorDetails] = []
        for name, spec in self.fields.items():
            loc: Loc = ("fields", name)
            if not re.match(QUANTITY_PATTERN, name):
                errors.append(_err(loc, f"quantity name `{name}` must be lower case letters, "
                                   "digits and `_`, starting with a letter (e.g. `voltage_l1`)"))
            if spec.hash:
                errors.append(_err((*loc, "hash"), "a quantity is a number: it cannot be hashed"))
            for key, target in (spec.map or {}).items():
                if isinstance(target, bool) or not isinstance(target, int | float):
                    errors.append(_err((*loc, "map", key), f"`{target}` is not a number: a "
                                       "quantity's value is a number", target))
        return errors


class AlarmRule(_Rule):
    """An alarm: raised and cleared (with one alarm_id) as the `when` condition changes."""

    kind: ClassVar[RuleKind] = "alarm"
    fields_key: ClassVar[str] = "data"

    when: WhenSpec
    debounce_s: float = Field(
        default=0.0, ge=0, le=3600, allow_inf_nan=False,
        description="the condition must hold (or be gone) this long before raise (or clear)")
    data: dict[str, FieldRef] = Field(default_factory=dict,
                                      description="extra data fields -> point")
    chatter: ChatterOverride | None = Field(
        default=None, description="this alarm's chatter control; default: the gateway's "
        "`alarm_chatter`")
    alarm_type: str | None = Field(
        default=None, description="device.alarm: the declared alarm type `<kind>.<name>` "
        "(e.g. elevator.fault), <kind> the profile's `kind`")
    severity: Literal["info", "warning", "critical"] | None = Field(
        default=None, description="device.alarm: the raise's severity (default warning)")

    def data_fields(self) -> Mapping[str, FieldSpec]:
        return self.data

    @property
    def declared(self) -> str:
        """What identifies this alarm among the device's: the declared type or the type."""
        return self.alarm_type or self.type

    def _shape_errors(self) -> list[InitErrorDetails]:
        errors = super()._shape_errors()
        if self.type != DECLARED_ALARM:
            for key in ("alarm_type", "severity"):
                if getattr(self, key) is not None:
                    errors.append(_err((key,), f"`{key}` is for `{DECLARED_ALARM}` rules (a "
                                       f"profile's own alarm types); `{self.type}` is a catalog "
                                       "type with its own severity"))
            return errors
        value = self.alarm_type
        if value is None:
            errors.append(_err((), f"a `{DECLARED_ALARM}` rule needs `alarm_type: <kind>.<name>` "
                               "(e.g. `elevator.fault`), <kind> the profile's `kind:`"))
        elif not is_alarm_type(value):
            errors.append(_err(("alarm_type",), f"`{value}` is not an alarm type name: write "
                               "`<kind>.<name>`, lower case letters, digits and `_` (e.g. "
                               "`elevator.fault`, `pump.failure`)", value))
        elif value.split(".", 1)[0] in RESERVED_KINDS:
            errors.append(_err(("alarm_type",), f"`{value}` is in the catalog's own "
                               f"`{value.split('.', 1)[0]}.` family; a declared alarm type "
                               "names the profile's `kind:` (e.g. `elevator.fault`)", value))
        return errors

    def point_refs(self) -> Iterator[tuple[Loc, str]]:
        yield ("when", "point"), self.when.point
        yield from super().point_refs()


class StateRule(_Rule):
    """Enumerated states (door, lock): emitted when any mapped value changes."""

    kind: ClassVar[RuleKind] = "state"
    fields_key: ClassVar[str] = "state"

    state: dict[str, FieldRef] = Field(min_length=1, description="data field -> point")

    def data_fields(self) -> Mapping[str, FieldSpec]:
        return self.state


class RecordRule(_Rule):
    """A record (an access): emitted when the `on_change` counter point changes."""

    kind: ClassVar[RuleKind] = "record"
    fields_key: ClassVar[str] = "fields"

    on_change: str = Field(min_length=1, description="counter point; a change = a new record")
    fields: dict[str, FieldRef] = Field(default_factory=dict, description="data field -> point")

    def data_fields(self) -> Mapping[str, FieldSpec]:
        return self.fields

    def point_refs(self) -> Iterator[tuple[Loc, str]]:
        yield ("on_change",), self.on_change
        yield from super().point_refs()


# --------------------------------------------------------------------------- the union

_MODELS: dict[RuleKind, type[_Rule]] = {
    "reading": ReadingRule, "alarm": AlarmRule, "state": StateRule, "record": RecordRule}

#: Keys that make a rule of one kind (`fields` alone also makes a reading).
_MARKERS: dict[str, RuleKind] = {
    "when": "alarm", "state": "state", "on_change": "record",
    "deadband": "reading", "heartbeat_s": "reading"}

_ALL_KEYS = sorted({name for model in _MODELS.values() for name in model.model_fields})


def _kind_of(value: dict[Any, Any]) -> list[tuple[str, RuleKind]]:
    """(key, kind) for each key that decides the kind, in the order written.

    `fields` makes a reading unless `on_change` (a record) is there too.
    """
    found: list[tuple[str, RuleKind]] = []
    for key in value:
        if not isinstance(key, str):
            continue
        if key in _MARKERS:
            found.append((key, _MARKERS[key]))
        elif key == "fields" and "on_change" not in value:
            found.append((key, "reading"))
    return found


def _no_kind(value: dict[Any, Any]) -> list[InitErrorDetails]:
    errors = []
    for key in value:
        if isinstance(key, str) and key not in _ALL_KEYS:
            close = difflib.get_close_matches(key, _ALL_KEYS, n=1, cutoff=0.6)
            if close:
                errors.append(_err((key,), f"unknown key `{key}`; did you mean `{close[0]}`?"))
    type_ = value.get("type")
    fit = kind_for_type(type_) if isinstance(type_, str) else None
    wanted = (f"`{type_}` is written as {_a(fit)} {fit} rule: give {KIND_SHAPE[fit]}" if fit
              else "give `fields` (a reading), `when` (an alarm), `state` (a state change) "
                   "or `on_change` (a record)")
    errors.append(_err((), f"cannot tell what kind of rule this is; {wanted}"))
    return errors


def _rewrite(model: type[_Rule], err: ErrorDetails) -> InitErrorDetails:
    """Unknown top-level keys: say which kind they belong to, or what was meant."""
    if err["type"] != "extra_forbidden" or len(err["loc"]) != 1:
        return _again(err)
    key = str(err["loc"][0])
    kind = model.kind
    owners = [k for k, m in _MODELS.items() if key in m.model_fields]
    if key in _MARKERS or (key == "fields" and kind != "alarm"):
        other = _MARKERS.get(key, "reading")
        message = (f"one rule, one kind: `{key}` makes {_a(other)} {other} rule, but this is "
                   f"{_a(kind)} {kind} rule ({KIND_SHAPE[kind]}); write the {other} as a rule "
                   "of its own")
    elif owners:
        kinds = " or ".join(f"{k} rules ({KIND_SHAPE[k]})" for k in owners)
        hint = "; put extra values under `data`" if kind == "alarm" and key == "fields" else ""
        message = f"`{key}` belongs to {kinds}, not to {_a(kind)} {kind} rule{hint}"
    else:
        names = list(model.model_fields)
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        message = f"unknown key `{key}`; " + (f"did you mean `{close[0]}`?" if close else
                                               f"{_a(kind)} {kind} rule has: "
                                               + ", ".join(names))
    return _err((key,), message, err["input"])


def _dispatch(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Pick the rule model from the keys present and validate with it (no tag in locs)."""
    if isinstance(value, _Rule):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "a rule must be a mapping (`type: ...` and "
                                               "the keys of its kind)")
    found = _kind_of(value)
    kinds = list(dict.fromkeys(kind for _, kind in found))
    if not kinds:
        _raise(_TITLE, _no_kind(value))
    type_ = value.get("type")
    meant = kind_for_type(type_) if isinstance(type_, str) else None
    if len(kinds) > 1 and meant in kinds:
        kinds = [meant]  # the type says which kind was meant: the other keys are strays
    if len(kinds) > 1:
        first = next(key for key, kind in found if kind == kinds[0])
        second = next(key for key, kind in found if kind == kinds[1])
        _raise(_TITLE, [_err((second,), f"one rule, one kind: `{first}` makes this "
                             f"{_a(kinds[0])} {kinds[0]} rule and `{second}` "
                             f"{_a(kinds[1])} {kinds[1]} rule; write two rules",
                             value[second])])
    model = _MODELS[kinds[0]]
    try:
        return model.model_validate(value, strict=True)
    except ValidationError as exc:
        _raise(_TITLE, [_rewrite(model, err) for err in exc.errors()])


RuleSpec = Annotated[ReadingRule | AlarmRule | StateRule | RecordRule, WrapValidator(_dispatch)]
"""One rule of a device profile's `events:` list; its kind follows from its keys."""

AnyRule = ReadingRule | AlarmRule | StateRule | RecordRule

_ADAPTER: TypeAdapter[AnyRule] = TypeAdapter(RuleSpec)


# --------------------------------------------------------------------------- points


@dataclass(frozen=True)
class RuleIssue:
    """One bad reference in a rule list; `loc` is e.g. `("events", 2, "when", "point")`."""

    loc: Loc
    message: str

    def __str__(self) -> str:
        return ".".join(str(part) for part in self.loc) + ": " + self.message


def point_issues(rules: Sequence[AnyRule], point_names: Collection[str], *,
                 prefix: Loc = ("events",)) -> list[RuleIssue]:
    """Every point a rule reads that the device does not have, located by rule index."""
    names = sorted(set(point_names))
    known = ", ".join(names[:20]) + (", …" if len(names) > 20 else "") if names else "none"
    issues = []
    for index, rule in enumerate(rules):
        for rel, point in rule.point_refs():
            if point in point_names:
                continue
            close = difflib.get_close_matches(point, names, n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"the device's points: {known}"
            issues.append(RuleIssue((*prefix, index, *rel), f"unknown point `{point}`; {hint}"))
    return issues


def issues_error(issues: Sequence[RuleIssue], title: str = _TITLE) -> ValidationError:
    """A pydantic ValidationError holding the issues at their locations.

    Raised inside a profile model's `model_validator(mode="after")` the locations stay
    relative to that model, so the config loader reports each at its file:line.
    """
    return ValidationError.from_exception_data(
        title, [_err(issue.loc, issue.message, issue.loc[-1]) for issue in issues])


def check_points(rules: Sequence[AnyRule], point_names: Collection[str], *,
                 prefix: Loc = ("events",)) -> None:
    """Raise ValidationError (a ValueError) listing every unknown point reference."""
    issues = point_issues(rules, point_names, prefix=prefix)
    if issues:
        raise issues_error(issues)


def parse_rules(specs: Sequence[Mapping[str, Any]], point_names: Collection[str], *,
                point_units: Mapping[str, str] | None = None) -> list[AnyRule]:
    """Validate a profile's `events:` list and its point references, all mistakes at once.

    Every `sensor.reading` field needs a unit: its own `unit:`, or its point's unit in
    `point_units` (a Modbus profile's points carry units, checked by the profile).

    Raises pydantic ValidationError (a ValueError) with locations such as
    `events.2.when.point`; nothing is read from any device.
    """
    if not isinstance(specs, list | tuple):
        _raise(_TITLE, [_err(("events",), "expected a list of rules", specs, "list_type")])
    rules: list[AnyRule] = []
    errors: list[InitErrorDetails] = []
    indexes: list[int] = []
    for index, spec in enumerate(specs):
        try:
            rule = _ADAPTER.validate_python(spec, strict=True)
        except ValidationError as exc:
            errors += [_again(err, ("events", index)) for err in exc.errors()]
            continue
        rules.append(rule)
        indexes.append(index)
    for issue in point_issues(rules, point_names, prefix=()):
        position, rel = issue.loc[0], issue.loc[1:]
        assert isinstance(position, int)
        errors.append(_err(("events", indexes[position], *rel), issue.message, rel[-1]))
    for position, rule in enumerate(rules):  # points without units here: each field says
        if rule.type != SENSOR_READING:
            continue
        for name, spec in rule.data_fields().items():
            if spec.unit is None and (point_units or {}).get(spec.point) is None:
                errors.append(_err(("events", indexes[position], "fields", name),
                                   f"quantity `{name}` needs a unit: write `{name}: {{point: "
                                   f"{spec.point}, unit: ...}}`; " + unit_hint("")))
    if errors:
        _raise(_TITLE, errors)
    return rules
