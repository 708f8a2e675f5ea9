"""What a read selects: the request's filters ANDed with the consumer's scope, as SQL.

Pure: `where(filter, dialect)` returns a SQL fragment with placeholders and its
parameters. User input only ever travels as a bound parameter; the only text built from
it is the *number* of placeholders. Type patterns (`smoke.*`, `*`) become `LIKE` with
`%`, `_` and the escape character escaped first, so a pattern can only mean what its
`*` says.

Narrowing never widens: a scope adds groups that every row must also satisfy; a scope
with no areas or no types (an empty tuple) selects nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, Protocol

from edge_agent.contract.envelope import format_time

#: An event type pattern: the characters of event types, `*` for any run of them.
TYPE_PATTERN = re.compile(r"[A-Za-z0-9_.*-]{1,100}")
#: A district / street / community / gateway code or id.
AREA_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ScopeLike(Protocol):
    """`collector.consumers.Scope`: area codes ("" = all) and type patterns ("*" = all)."""

    @property
    def areas(self) -> tuple[str, ...]: ...

    @property
    def types(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Filter:
    """Every group must hold; inside a group any value may. Empty tuples: no condition.

    `type_groups`: patterns; `area_groups`: codes matched against district, street and
    community; `districts` … `gateways`: exact values of that column; `alarm_types`:
    patterns matched against `data.alarm_type` (the declared type of a `device.alarm`,
    e.g. `pump.*`; an event without one never matches).
    """

    type_groups: tuple[tuple[str, ...], ...] = ()
    alarm_types: tuple[str, ...] = ()
    area_groups: tuple[tuple[str, ...], ...] = ()
    districts: tuple[str, ...] = ()
    streets: tuple[str, ...] = ()
    communities: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    since: datetime | None = None

    def narrowed(self, scope: ScopeLike) -> Filter:
        """This filter ANDed with a consumer's scope."""
        types = self.type_groups if "*" in scope.types else (*self.type_groups,
                                                               tuple(scope.types))
        areas = self.area_groups if "" in scope.areas else (*self.area_groups,
                                                             tuple(scope.areas))
        return replace(self, type_groups=types, area_groups=areas)


def like_pattern(pattern: str) -> str:
    """`smoke.*` -> `smoke.%` with LIKE's own characters escaped (escape character `\\`)."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one store names the columns and binds a value."""

    placeholder: str
    columns: dict[str, str]
    time_kind: Literal["text", "timestamp"]

    def bind_time(self, value: datetime) -> Any:
        return format_time(value.timestamp()) if self.time_kind == "text" else value


SQLITE = Dialect("?", {**{c: c for c in ("type", "district", "street", "community", "gateway",
                                          "time")},
                       "alarm_type": "json_extract(data, '$.alarm_type')"}, "text")
POSTGRES = Dialect("%s", {"type": "e.type", "district": "p.district", "street": "p.street",
                          "community": "p.community", "gateway": "p.gateway",
                          "time": "e.time", "alarm_type": "(e.data::jsonb ->> 'alarm_type')"},
                   "timestamp")


def _in(column: str, values: Sequence[str], d: Dialect, params: list[Any]) -> str:
    params.extend(values)
    return f"{column} IN ({', '.join([d.placeholder] * len(values))})"


def _types(group: Sequence[str], d: Dialect, params: list[Any], column: str = "type") -> str:
    if "*" in group and column == "type":
        return "1 = 1"
    if not group:
        return "1 = 0"
    parts = []
    for pattern in group:
        params.append(like_pattern(pattern))
        parts.append(f"{d.columns[column]} LIKE {d.placeholder} ESCAPE '\\'")
    return "(" + " OR ".join(parts) + ")"


def _areas(group: Sequence[str], d: Dialect, params: list[Any]) -> str:
    if "" in group:
        return "1 = 1"
    if not group:
        return "1 = 0"
    parts = [_in(d.columns[level], group, d, params)
             for level in ("district", "street", "community")]
    return "(" + " OR ".join(parts) + ")"


def where(f: Filter, d: Dialect) -> tuple[str, list[Any]]:
    """`f` as a SQL condition (never empty: `1 = 1` at least) and its parameters."""
    params: list[Any] = []
    parts = [_types(g, d, params) for g in f.type_groups]
    parts += [_areas(g, d, params) for g in f.area_groups]
    if f.alarm_types:
        parts.append(_types(f.alarm_types, d, params, "alarm_type"))
    for column, values in (("district", f.districts), ("street", f.streets),
                           ("community", f.communities), ("gateway", f.gateways)):
        if values:
            parts.append(_in(d.columns[column], values, d, params))
    if f.since is not None:
        params.append(d.bind_time(f.since))
        parts.append(f"{d.columns['time']} >= {d.placeholder}")
    return (" AND ".join(parts) or "1 = 1"), params
