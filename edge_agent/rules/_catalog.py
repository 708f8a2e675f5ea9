"""What rules may emit: the rule kind that fits each catalog type, and each type's `data`.

The data shapes are read from the published JSON
Schema (the contract), so a rule is checked against exactly what the collector accepts:
required fields, enums, ranges, forbidden keys. Values are canonicalized here too, so a
map written with YAML `true`/`1` keys matches a decoded bool, an int register or text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import fastjsonschema

from edge_agent.contract.envelope import ALARM_TYPES, CATALOG, CHATTER_TYPES, Retention, schema

RuleKind = Literal["reading", "alarm", "state", "record"]

#: The generic telemetry type: `{kind, quantities: {name: {value, unit}}}`.
SENSOR_READING = "sensor.reading"
#: The type of every profile-declared alarm; `data.alarm_type` names it (`elevator.fault`).
DECLARED_ALARM = "device.alarm"

#: How each kind is written (the keys that make it that kind), for messages.
KIND_SHAPE: dict[str, str] = {
    "reading": "`fields` with `deadband`/`heartbeat_s`",
    "alarm": "`when`",
    "state": "`state`",
    "record": "`on_change` with `fields`",
}

#: Types whose data is a set of enumerated states, emitted when one changes.
STATE_TYPES = frozenset({"gate.state"})
#: The fields an alarm rule sets itself: a rule may not map points to them.
ALARM_KEYS = frozenset({"state", "alarm_id", "alarm_type", "kind"})


def agent_owned(type_: str) -> bool:
    """`device.*` (but `device.alarm`, a profile-declared alarm), `gateway.*` and
    `*.chattering` (chatter control) are emitted by the agent itself, never by device rules."""
    if type_ == DECLARED_ALARM:
        return False
    return type_.startswith(("device.", "gateway.")) or type_ in CHATTER_TYPES


def kind_for_type(type_: str) -> RuleKind | None:
    """The one rule kind that may emit `type_` (None: not emitted by rules)."""
    kind = CATALOG.get(type_)
    if kind is None or agent_owned(type_):
        return None
    if type_ in ALARM_TYPES:
        return "alarm"
    if kind.retention is Retention.TELEMETRY:
        return "reading"
    if type_ in STATE_TYPES:
        return "state"
    return "record"


def types_for_kind(kind: str) -> list[str]:
    return sorted(t for t in CATALOG if kind_for_type(t) == kind)


# --------------------------------------------------------------------------- data shapes


@dataclass(frozen=True)
class PropertyShape:
    """One documented `data` field of a type, with a validator compiled from the schema."""

    name: str
    json_type: str | None  # "number", "integer", "string", ... or None (any)
    enum: tuple[Any, ...] | None
    validate: Callable[[Any], bool]

    @property
    def allows_unknown(self) -> bool:
        """Whether `"unknown"` is a valid value (an enum that lists it, or free text)."""
        if self.enum is not None:
            return "unknown" in self.enum
        return self.json_type in (None, "string")

    @property
    def numeric(self) -> bool:
        return self.json_type in ("number", "integer")

    def describe(self) -> str:
        if self.enum is not None:
            return "/".join(str(v) for v in self.enum)
        return self.json_type or "any value"


@dataclass(frozen=True)
class DataShape:
    type: str
    properties: Mapping[str, PropertyShape]
    required: frozenset[str]
    any_of_required: tuple[frozenset[str], ...]  # alternatives: one must be complete
    forbidden: frozenset[str]

    def missing(self, keys: frozenset[str] | set[str], *, alarm: bool = False) -> list[str]:
        """Human descriptions of the required fields `keys` lacks (alarm keys excluded)."""
        reserved = ALARM_KEYS if alarm else frozenset()
        out = [f"`{k}`" for k in sorted(self.required - reserved) if k not in keys]
        alternatives = self.any_of_required
        if alternatives and not any(alt <= keys for alt in alternatives):
            out.append(" or ".join(" and ".join(f"`{k}`" for k in sorted(alt))
                                   for alt in alternatives))
        return out


def _compile(sub: dict[str, Any]) -> Callable[[Any], bool]:
    clean = {k: v for k, v in sub.items() if k != "description"}
    try:
        check = fastjsonschema.compile(clean)
    except Exception:  # pragma: no cover - the schema is ours and compiles
        return lambda value: True
    numeric = clean.get("type") in ("number", "integer")

    def validate(value: Any) -> bool:
        if numeric and isinstance(value, float) and not math.isfinite(value):
            return False
        try:
            check(value)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    return validate


def _groups(alternatives: list[dict[str, Any]]) -> list[frozenset[str]]:
    return [frozenset(alt.get("required", [])) for alt in alternatives]


@cache
def data_shape(type_: str) -> DataShape:
    """The `data` shape of a catalog type as the JSON Schema states it."""
    data: dict[str, Any] = {}
    for branch in schema().get("allOf", []):
        const = branch.get("if", {}).get("properties", {}).get("type", {}).get("const")
        if const == type_:
            data = branch.get("then", {}).get("properties", {}).get("data", {})
            break
    props = {
        name: PropertyShape(
            name,
            sub.get("type") if isinstance(sub.get("type"), str) else None,
            tuple(sub["enum"]) if "enum" in sub else None,
            _compile(sub),
        )
        for name, sub in data.get("properties", {}).items()
    }
    forbidden = frozenset[str]().union(*_groups(data.get("not", {}).get("anyOf", [])))
    return DataShape(
        type_,
        props,
        frozenset(data.get("required", [])),
        tuple(_groups(data.get("anyOf", []))),
        forbidden,
    )


# --------------------------------------------------------------------------- values

_INT = re.compile(r"^[-+]?[0-9]+$")
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_OCT = re.compile(r"^0o[0-7]+$")
_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?$")
_BOOL_ALIAS = {"true": "1", "1": "true", "false": "0", "0": "false"}


def _canon_float(value: float) -> str:
    if math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def canon(value: Any) -> str | None:
    """One text form per value, so that `True`, `"true"` and `"TRUE"` compare equal, and
    `1`, `1.0`, `"1"` and `"0x01"` do too. None for a value that has no such form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _canon_float(value)
    if isinstance(value, str):
        text = value.strip()
        low = text.lower()
        if low in ("true", "false"):
            return low
        if _INT.match(text):
            return str(int(text))
        if _HEX.match(text):
            return str(int(text[2:], 16))
        if _OCT.match(text):
            return str(int(text[2:], 8))
        if _FLOAT.match(text):
            return _canon_float(float(text))
        return text
    return None


def lookup(table: Mapping[str, Any], value: Any) -> tuple[bool, Any]:
    """Find `value` in a map with canonical keys; a bool and a 0/1 stand in for each other."""
    key = canon(value)
    if key is None:
        return False, None
    if key in table:
        return True, table[key]
    alias = _BOOL_ALIAS.get(key)
    if alias is not None and alias in table:
        return True, table[alias]
    return False, None


def as_number(value: Any) -> float | int | None:
    """A finite int/float from a number or numeric text; None otherwise (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            if _INT.match(text):
                return int(text)
            if _FLOAT.match(text):
                number = float(text)
                return number if math.isfinite(number) else None
        except ValueError:  # pragma: no cover - the patterns admit only numbers
            return None
    return None


def as_flag(value: Any) -> bool | None:
    """A condition from a bool point: bools, numbers (non-zero) or true/false/0/1 text."""
    if isinstance(value, bool):
        return value
    number = as_number(value)
    if number is not None:
        return number != 0
    key = canon(value)
    if key in ("true", "false"):
        return key == "true"
    return None
