"""The `serial_line` device options, validated completely before any I/O.

Everything that can be checked without the port is checked here: the serial
settings, the encoding (it must be ASCII-compatible), the delimiter and its escapes,
every frame regex (compiled; each group a value or alarm names must exist in it),
the value types and maps, the alarm specs against the event catalog and its JSON
Schema, and the `events:` rules through `edge_agent.rules.engine.parse_rules`.

Each issue carries the location of its key (`frames.2.match`, `frames.0.alarms.1.per`,
`events.0.when.point`), so the config loader reports it at file:line with the device
id. The nested models only check their own shape (types, unknown keys); what they
mean is checked once, by the device model, so one run reports every such mistake of
the device at once (a wrong regex does not hide a wrong rule).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from edge_agent.contract.envelope import ALARM_TYPES, CATALOG, CHATTER_TYPES, Severity, schema
from edge_agent.sdk.config import ChatterOverride, DeviceConfig
from edge_agent.sdk.rules import DECLARED_ALARM, RuleSpec, parse_rules

from .framing import (
    ChecksumKind,
    CompiledChecksum,
    CompiledFrame,
    CompiledValue,
    ValueType,
    nested_repeat,
    unescape,
)

__all__ = [
    "MAX_FRAMES",
    "MAX_PATTERN_CHARS",
    "POINT_NAME",
    "AlarmSpec",
    "BackoffSpec",
    "ChecksumSpec",
    "FrameSpec",
    "SerialLineDevice",
    "ValueSpec",
]

#: A point name: usable as a rule reference (same rule as the Modbus driver's points).
POINT_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_FRAMES = 256
MAX_PATTERN_CHARS = 2000
_RESERVED_DATA = ("state", "alarm_id")

Loc = tuple[str | int, ...]
Issues = list[tuple[Loc, str]]


def _details(issues: Issues) -> list[InitErrorDetails]:
    return [InitErrorDetails(type="value_error", loc=loc, input=None,
                             ctx={"error": ValueError(message)}) for loc, message in issues]


def _again(err: ErrorDetails) -> InitErrorDetails:
    """An error of an inner validation (the rules), kept with its type, message and loc."""
    return InitErrorDetails(type=PydanticCustomError(err["type"], err["msg"], err.get("ctx")),
                            loc=err["loc"], input=err["input"])


def _under(prefix: Loc, issues: Issues) -> Issues:
    return [((*prefix, *loc), message) for loc, message in issues]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _regex_problem(exc: Exception) -> str:
    if isinstance(exc, re.error):
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        return f"not a valid regular expression: {exc.msg}{where}"
    return f"not a usable regular expression: {exc}"  # absurd nesting or repeat counts


# --------------------------------------------------------------------------- checksum


class ChecksumSpec(_Strict):
    """Where a line carries its checksum and how it is computed.

    The checksum is found by searching `pattern` in the raw line (bytes); its group
    named `checksum` holds the value in hex. It covers the bytes after the first
    `skip_leading` up to where the pattern's match starts, and the frame regexes
    see only the line before that match. NMEA: `{kind: xor8, skip_leading: 1}`.
    """

    kind: ChecksumKind = Field(description="xor8, sum8 or crc16_modbus")
    pattern: str | None = Field(
        default=None, min_length=1, max_length=200,
        description=r"regex with a `checksum` group; default `\*(?P<checksum>[0-9A-Fa-f]{2})$` "
                    "(4 hex digits for crc16_modbus)")
    skip_leading: int = Field(default=0, ge=0, le=16,
                              description="leading bytes not covered (NMEA's `$`: 1)")
    byte_order: Literal["big", "little"] | None = Field(
        default=None, description="crc16_modbus only: `little` when written low byte first")

    _compiled: CompiledChecksum | None = PrivateAttr(default=None)

    @property
    def compiled(self) -> CompiledChecksum:
        assert self._compiled is not None, "validated by SerialLineDevice"
        return self._compiled

    def issues(self) -> Issues:
        """What is wrong (locations relative to this spec); compiles the pattern."""
        issues: Issues = []
        digits = self.kind.hex_digits
        text = self.pattern or rf"\*(?P<checksum>[0-9A-Fa-f]{{{digits}}})$"
        if self.byte_order is not None and self.kind is not ChecksumKind.CRC16_MODBUS:
            issues.append((("byte_order",), f"`byte_order` applies to crc16_modbus only, "
                                            f"not {self.kind.value}"))
        if not text.isascii():
            issues.append((("pattern",), "the checksum pattern must be ASCII (it is matched "
                                         "against the raw bytes)"))
            return issues
        try:
            regex = re.compile(text.encode("ascii"))
        except (re.error, RecursionError, OverflowError, ValueError) as exc:
            issues.append((("pattern",), _regex_problem(exc)))
            return issues
        if "checksum" not in regex.groupindex:
            issues.append((("pattern",), "the pattern needs a group named `checksum`, e.g. "
                                         rf"\*(?P<checksum>[0-9A-F]{{{digits}}})$"))
            return issues
        self._compiled = CompiledChecksum(self.kind, regex, self.skip_leading,
                                          self.byte_order == "little")
        return issues


# --------------------------------------------------------------------------- values

MapValue = bool | int | float | str

_TYPE_NAMES = {ValueType.INT: "a whole number", ValueType.FLOAT: "a number",
               ValueType.STR: "text (quote it)", ValueType.BOOL: "true or false"}


class ValueSpec(_Strict):
    """One regex group -> one point value that goes to the `events:` rules."""

    point: str | None = Field(default=None, pattern=POINT_NAME,
                              description="point name; default: the group name")
    type: ValueType = Field(default=ValueType.STR, description="int, float, str or bool")
    map: dict[str, MapValue] | None = Field(
        default=None, description="exact group text -> value (of `type`); other text is "
                                  "a bad frame")
    scale: float | None = Field(default=None, allow_inf_nan=False,
                                description="float only: value = number * scale + offset")
    offset: float | None = Field(default=None, allow_inf_nan=False, description="float only")

    def issues(self) -> Issues:
        issues: Issues = []
        for key in ("scale", "offset"):
            if getattr(self, key) is not None and self.type is not ValueType.FLOAT:
                issues.append(((key,), f"`{key}` applies to type float, not {self.type.value}"))
        if self.scale == 0:
            issues.append((("scale",), "scale must not be 0"))
        if self.map is not None:
            if not self.map:
                issues.append((("map",), "the map is empty; give `text: value` pairs or "
                                         "remove it"))
            if self.map and (self.scale is not None or self.offset is not None):
                issues.append((("map",), "give `map` or `scale`/`offset`, not both"))
            for text, value in self.map.items():
                if not _fits(value, self.type):
                    issues.append((("map", text), f"`{value}` is not {_TYPE_NAMES[self.type]} "
                                                  "(the `type` of this value)"))
        return issues


def _fits(value: MapValue, type_: ValueType) -> bool:
    if type_ is ValueType.BOOL:
        return isinstance(value, bool)
    if type_ is ValueType.INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ is ValueType.FLOAT:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


# --------------------------------------------------------------------------- alarms


def _one_or_many(value: Any) -> Any:
    """`per: zone` is short for `per: [zone]`."""
    return [value] if isinstance(value, str) else value


class AlarmSpec(_Strict):
    """An alarm raised and cleared by lines, one alarm per distinct value of `per`.

    `FIRE ZONE 03 ALARM` with `per: zone`, `state: status`, `raise: [ALARM]`,
    `clear: [NORMAL]` raises a `smoke.alarm` with `data.zone = "03"` and its own
    `alarm_id`; `FIRE ZONE 03 NORMAL` clears that one alarm. A repeated raise or a
    clear of an alarm that is not raised emits nothing. When raise and clear are
    different lines, give each frame `action: raise` or `action: clear` instead of
    `state`; alarms are matched by type and the values of `per`, whatever the frame.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: str = Field(description="an alarm type of the catalog, e.g. smoke.alarm")
    per: Annotated[list[str], BeforeValidator(_one_or_many)] = Field(
        default_factory=list, max_length=4,
        description="group(s) naming the alarm instance, e.g. zone; none: one alarm for "
                    "the device")
    state: str | None = Field(default=None, description="group whose text raises or clears")
    raise_: list[str] = Field(default_factory=list, alias="raise",
                              description="texts of `state` that raise the alarm")
    clear: list[str] = Field(default_factory=list,
                             description="texts of `state` that clear it")
    action: Literal["raise", "clear"] | None = Field(
        default=None, description="instead of `state`: every match raises (or clears)")
    data: dict[str, str] = Field(default_factory=dict,
                                 description="extra data field -> group (its text)")
    severity: Severity | None = Field(default=None,
                                      description="default: the catalog's severity")
    chatter: ChatterOverride | None = Field(
        default=None, description="chatter control per zone; default: the gateway's "
        "`alarm_chatter`")

    def issues(self) -> Issues:
        issues: Issues = []
        if self.type in CHATTER_TYPES:
            issues.append((("type",), f"`{self.type}` is raised by the agent's chatter control "
                                      "itself; give the alarm that chatters, e.g. smoke.alarm"))
        elif self.type == DECLARED_ALARM:
            issues.append((("type",), f"`{DECLARED_ALARM}` (an alarm type a profile declares) "
                                      "is raised by an `events:` rule with `alarm_type:`, not "
                                      "by a frame's alarm"))
        elif self.type not in ALARM_TYPES:
            alarms = ", ".join(sorted(ALARM_TYPES - CHATTER_TYPES - {DECLARED_ALARM}))
            what = "not in the event catalog" if self.type not in CATALOG else "not an alarm type"
            issues.append((("type",), f"`{self.type}` is {what}; alarm types: {alarms}"))
        if self.action is not None:
            for key in ("state", "raise_", "clear"):
                if key in self.model_fields_set:
                    name = key.rstrip("_")
                    issues.append(((name,), f"`{name}` goes with `state`; with `action` every "
                                            "match of the frame raises (or clears)"))
        elif self.state is None:
            issues.append((("state",), "give `state` (the group whose text raises or clears, "
                                       "with `raise` and `clear`) or `action: raise|clear`"))
        elif not self.raise_:
            issues.append((("raise",), "give the texts of `state` that raise the alarm, "
                                       "e.g. raise: [ALARM]"))
        both = sorted(set(self.raise_) & set(self.clear))
        if both:
            issues.append((("clear",), f"{', '.join(map(repr, both))} both raises and clears"))
        for i, group in enumerate(self.per):
            if group in _RESERVED_DATA:
                issues.append((("per", i), f"a group named `{group}` would overwrite "
                                           f"data.{group}; rename the group"))
        if len(set(self.per)) != len(self.per):
            issues.append((("per",), "a group is listed twice"))
        props = _data_properties(self.type) if self.type in ALARM_TYPES else {}
        for name in self.data:
            if name in _RESERVED_DATA:
                issues.append((("data", name), f"`{name}` is set by the driver"))
            elif name in self.per:
                issues.append((("data", name), f"`{name}` is already in the data (from `per`)"))
            elif name in props and props[name].get("type", "string") != "string":
                issues.append((("data", name), f"`{name}` of {self.type} is a "
                               f"{props[name]['type']} in the catalog, but alarm data copies "
                               "text from the line; use another field name"))
        return issues

    def groups(self) -> list[tuple[Loc, str]]:
        """Every group this spec reads, with its location relative to the spec."""
        out: list[tuple[Loc, str]] = [(("per", i), g) for i, g in enumerate(self.per)]
        if self.state is not None:
            out.append((("state",), self.state))
        out += [(("data", name), g) for name, g in self.data.items()]
        return out


@cache
def _data_properties(type_: str) -> dict[str, dict[str, Any]]:
    """The documented `data` fields of a catalog type, from the published JSON Schema."""
    for branch in schema().get("allOf", []):
        const = branch.get("if", {}).get("properties", {}).get("type", {}).get("const")
        if const == type_:
            props = branch.get("then", {}).get("properties", {}).get("data", {})
            found: dict[str, dict[str, Any]] = props.get("properties", {})
            return found
    return {}


# --------------------------------------------------------------------------- frames


class FrameSpec(_Strict):
    """One kind of line: a regex over the whole line and what its groups mean."""

    name: str | None = Field(default=None, pattern=POINT_NAME,
                             description="for logs and counters; default frameN")
    match: str = Field(min_length=1, max_length=MAX_PATTERN_CHARS,
                       description="Python regex matched against the whole line, with "
                                   "named groups (?P<name>...)")
    values: dict[str, ValueSpec] = Field(default_factory=dict,
                                         description="group -> point for the event rules")
    alarms: list[AlarmSpec] = Field(default_factory=list, max_length=16,
                                    description="alarms raised/cleared by this line")
    clears_all: list[str] = Field(default_factory=list,
                                  description="alarm types this line clears on every "
                                              "instance (e.g. a panel reset)")
    count: str | None = Field(default=None, pattern=POINT_NAME,
                              description="an int point counting this frame's lines, for "
                                          "`on_change` record rules (one line, one record)")

    _regex: re.Pattern[str] | None = PrivateAttr(default=None)

    @property
    def regex(self) -> re.Pattern[str]:
        assert self._regex is not None, "validated by SerialLineDevice"
        return self._regex

    def issues(self) -> Issues:
        """What is wrong (locations relative to this frame); compiles the regex."""
        issues: Issues = []
        for group, spec in self.values.items():
            issues += _under(("values", group), spec.issues())
        for i, alarm in enumerate(self.alarms):
            issues += _under(("alarms", i), alarm.issues())
        for i, type_ in enumerate(self.clears_all):
            if type_ not in ALARM_TYPES:
                issues.append((("clears_all", i), f"`{type_}` is not an alarm type"))
        if self.count is not None and any((spec.point or group) == self.count
                                          for group, spec in self.values.items()):
            issues.append((("count",), f"`{self.count}` is also a point of `values`"))
        try:
            regex = re.compile(self.match)
        except (re.error, RecursionError, OverflowError, ValueError) as exc:
            issues.append((("match",), f"`match` is {_regex_problem(exc)}"))
            return issues
        self._regex = regex
        slow = nested_repeat(self.match)
        if slow:
            issues.append((("match",), f"`match` can take exponential time on a bad line: "
                                       f"{slow}; write the inner repeat alone (x+), or make "
                                       "it possessive (x++) or atomic (?>...)"))
        groups = sorted(regex.groupindex)
        known = ", ".join(groups) if groups else "none (write (?P<name>...))"
        used: list[tuple[Loc, str]] = [(("values", g), g) for g in self.values]
        used += [(("alarms", i, *loc), g) for i, a in enumerate(self.alarms)
                 for loc, g in a.groups()]
        for loc, group in used:
            if group not in regex.groupindex:
                issues.append((loc, f"`{group}` is not a named group of `match`; its groups: "
                                    f"{known}"))
        for group, spec in self.values.items():
            if spec.point is None and not re.match(POINT_NAME, group):
                issues.append((("values", group), f"the group name `{group}` is not a valid "
                                                  "point name; give `point:`"))
        return issues

    def compiled(self, index: int) -> CompiledFrame:
        values = tuple(
            CompiledValue(group, spec.point or group, spec.type, spec.map,
                          1.0 if spec.scale is None else spec.scale,
                          0.0 if spec.offset is None else spec.offset)
            for group, spec in self.values.items())
        return CompiledFrame(index, self.name or f"frame{index}", self.regex, values)


# --------------------------------------------------------------------------- device


class BackoffSpec(_Strict):
    initial_s: float = Field(default=1.0, gt=0, le=60, allow_inf_nan=False)
    max_s: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)


class SerialLineDevice(DeviceConfig):
    """A device that writes text lines on a serial port (legacy fire panels and the like)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: Path = Field(description="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: int = Field(default=9600, ge=50, le=4_000_000)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["none", "even", "odd", "mark", "space"] = "none"
    stopbits: float = Field(default=1, description="1, 1.5 or 2")
    encoding: str = Field(default="ascii", min_length=1, max_length=40,
                          description="an ASCII-compatible codec: ascii, utf-8, gbk, latin-1…")
    decode_errors: Literal["replace", "strict"] = Field(
        default="replace", description="replace: U+FFFD for undecodable bytes; strict: reject "
                                       "the line")
    delimiter: str = Field(default="\r\n", min_length=1, max_length=32,
                           description=r"end of line; escapes \r \n \t \0 \xHH allowed")
    strip: bool = Field(default=True, description="strip whitespace around each line; blank "
                                                  "lines are skipped")
    max_line_bytes: int = Field(default=512, ge=16, le=65536,
                                description="longer lines are dropped whole (and counted)")
    checksum: ChecksumSpec | None = Field(default=None, description="none when left out")
    frames: list[FrameSpec] = Field(min_length=1, max_length=MAX_FRAMES)
    events: list[dict[str, Any]] = Field(default_factory=list,
                                         description="rules over the frames' point values "
                                                     "(edge_agent.rules.engine)")
    idle_timeout_s: float = Field(default=0.0, ge=0, le=86400, allow_inf_nan=False,
                                  description="no valid frame this long -> offline; 0: off")
    reopen_backoff: BackoffSpec = Field(default_factory=BackoffSpec,
                                        description="wait between attempts to reopen the port")
    log_line_prefix: int = Field(default=24, ge=0, le=200,
                                 description="characters of a bad line shown in logs; 0 "
                                             "for lines that may carry credentials")

    _rules: list[RuleSpec] = PrivateAttr(default_factory=list)
    _delimiter: bytes = PrivateAttr(default=b"\r\n")

    @property
    def rules(self) -> Sequence[RuleSpec]:
        """The validated `events:` rules."""
        return self._rules

    @property
    def delimiter_bytes(self) -> bytes:
        return self._delimiter

    def compiled_frames(self) -> list[CompiledFrame]:
        return [frame.compiled(i) for i, frame in enumerate(self.frames)]

    def point_names(self) -> set[str]:
        """The points the frames give the `events:` rules."""
        names = {spec.point or group for f in self.frames for group, spec in f.values.items()}
        return names | {f.count for f in self.frames if f.count is not None}

    # ------------------------------------------------------------------ validation

    @model_validator(mode="after")
    def _check(self) -> SerialLineDevice:
        issues = self._line_issues()
        if self.reopen_backoff.max_s < self.reopen_backoff.initial_s:
            issues.append((("reopen_backoff", "max_s"),
                           f"max_s ({self.reopen_backoff.max_s:g}) must not be less than "
                           f"initial_s ({self.reopen_backoff.initial_s:g})"))
        if self.checksum is not None:
            issues += _under(("checksum",), self.checksum.issues())
        for i, frame in enumerate(self.frames):
            issues += _under(("frames", i), frame.issues())
        issues += self._point_issues()
        issues += self._frame_set_issues()
        details = _details(issues)
        try:
            self._rules = list(parse_rules(self.events, self.point_names()))
        except ValidationError as exc:  # locs are events.N...: relative to this model
            details += [_again(err) for err in exc.errors()]
        if details:
            raise ValidationError.from_exception_data("SerialLineDevice", details)
        return self

    def _line_issues(self) -> Issues:
        """Stop bits, the encoding and the delimiter in it."""
        issues: Issues = []
        if not self.port.is_absolute():
            issues.append((("port",), f"give the full path of the port, e.g. /dev/{self.port}"))
        if self.stopbits not in (1, 1.5, 2):
            issues.append((("stopbits",), f"stopbits must be 1, 1.5 or 2; got {self.stopbits:g}"))
        encoding_ok = False
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            issues.append((("encoding",), f"unknown encoding `{self.encoding}`; e.g. ascii, "
                                          "utf-8, gbk, gb18030, latin-1"))
        else:
            probe = "\r\n\t *$,:;=ABZaz09"
            try:
                encoding_ok = probe.encode(self.encoding) == probe.encode("ascii") \
                    and probe.encode("ascii").decode(self.encoding) == probe
            except (UnicodeError, LookupError, TypeError, ValueError):  # not a text encoding
                encoding_ok = False
            if not encoding_ok:
                issues.append((("encoding",), f"`{self.encoding}` is not an ASCII-compatible "
                               "text encoding (UTF-16/32 and the like cannot be split into "
                               "lines); e.g. ascii, utf-8, gbk, latin-1"))
        try:
            text = unescape(self.delimiter)
        except ValueError as exc:
            issues.append((("delimiter",), str(exc)))
            return issues
        if not encoding_ok:
            return issues
        try:
            encoded = text.encode(self.encoding)
        except UnicodeEncodeError:
            issues.append((("delimiter",), f"the delimiter cannot be written in {self.encoding}"))
            return issues
        if len(encoded) > 8:
            issues.append((("delimiter",), f"the delimiter is {len(encoded)} bytes; at most 8"))
        else:
            self._delimiter = encoded
        return issues

    def _point_issues(self) -> Issues:
        """One type per point; a counter is nothing else."""
        issues: Issues = []
        first: dict[str, tuple[ValueType, int]] = {}
        counts: dict[str, int] = {}
        for i, frame in enumerate(self.frames):
            if frame.count is not None:
                if frame.count in counts:
                    issues.append((("frames", i, "count"), f"`{frame.count}` already counts "
                                   f"frame {counts[frame.count]}; one counter per frame"))
                counts.setdefault(frame.count, i)
            for group, spec in frame.values.items():
                point = spec.point or group
                seen = first.setdefault(point, (spec.type, i))
                if seen[0] is not spec.type:
                    issues.append((("frames", i, "values", group, "type"),
                                   f"point `{point}` is {seen[0].value} in frame {seen[1]} "
                                   f"but {spec.type.value} here; one point, one type"))
        for point, i in counts.items():
            if point in first:
                issues.append((("frames", i, "count"), f"`{point}` is also a value point of "
                               f"frame {first[point][1]}"))
        return issues

    def _frame_set_issues(self) -> Issues:
        """Names unique, clears that have something to clear, something to emit."""
        issues: Issues = []
        raised = {a.type for f in self.frames for a in f.alarms}
        names: dict[str, int] = {}
        for i, frame in enumerate(self.frames):
            if frame.name is not None:
                if frame.name in names:
                    issues.append((("frames", i, "name"), f"frame name `{frame.name}` is also "
                                   f"used by frame {names[frame.name]}"))
                names.setdefault(frame.name, i)
            for j, type_ in enumerate(frame.clears_all):
                if type_ in ALARM_TYPES and type_ not in raised:
                    issues.append((("frames", i, "clears_all", j),
                                   f"no frame raises `{type_}`, so there is nothing to clear"))
        if not self.events:
            for i, frame in enumerate(self.frames):
                if frame.values or frame.count:
                    key = "values" if frame.values else "count"
                    issues.append((("frames", i, key), f"`{key}` gives points to the `events:` "
                                   "rules, but there are none; add rules or remove it"))
            if not issues and not raised:
                issues.append((("frames",), "no frame has `alarms` and there are no `events`: "
                                            "this device would emit nothing"))
        return issues
