"""Query parameters of the stream routes, checked before anything reads the store (pure).

Every problem is a `ParamError` naming the parameter: the API answers 400 with it. A
parameter may repeat or hold a comma-separated list (`type=smoke.*,water.*`); the values
of one parameter are alternatives, different parameters all apply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from collector.stream.cursor import MAX_CURSOR_CHARS
from collector.stream.filter import AREA_CODE, TYPE_PATTERN, Filter
from collector.stream.reader import MAX_PAGE

MAX_VALUES = 20
#: Longer query strings are refused (414) before they are parsed.
MAX_QUERY_CHARS = 4096
KNOWN = frozenset({"after", "type", "alarm_type", "district", "street", "community",
                   "gateway", "since", "limit"})
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")


class ParamError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


@dataclass(frozen=True, slots=True)
class Query:
    filter: Filter
    after: str | None
    limit: int


def _values(items: list[tuple[str, str]], name: str, pattern: re.Pattern[str],
            what: str) -> tuple[str, ...]:
    out: list[str] = []
    for key, raw in items:
        if key != name:
            continue
        for value in raw.split(","):
            if not pattern.fullmatch(value):
                raise ParamError(name, f"{value[:40]!r} is not {what}")
            out.append(value)
    if len(out) > MAX_VALUES:
        raise ParamError(name, f"at most {MAX_VALUES} values")
    return tuple(dict.fromkeys(out))


def _single(items: list[tuple[str, str]], name: str) -> str | None:
    found = [v for k, v in items if k == name]
    if len(found) > 1:
        raise ParamError(name, "given more than once")
    return found[0] if found else None


def parse_query(pairs: Iterable[tuple[str, str]]) -> Query:
    """The filter, cursor text and page size a query string asks for."""
    items = list(pairs)
    for key, _ in items:
        if key not in KNOWN:
            raise ParamError(key[:40], f"unknown parameter (known: {', '.join(sorted(KNOWN))})")
    types = _values(items, "type", TYPE_PATTERN, "an event type pattern like smoke.* or *")
    code = "a code of letters, digits, '.', '_' or '-'"
    flt = Filter(
        type_groups=(types,) if types else (),
        alarm_types=_values(items, "alarm_type", TYPE_PATTERN,
                            "an alarm type pattern like pump.* or elevator.fault"),
        districts=_values(items, "district", AREA_CODE, code),
        streets=_values(items, "street", AREA_CODE, code),
        communities=_values(items, "community", AREA_CODE, code),
        gateways=_values(items, "gateway", AREA_CODE, code),
        since=_since(_single(items, "since")),
    )
    after = _single(items, "after")
    if after is not None and (not after or len(after) > MAX_CURSOR_CHARS):
        raise ParamError("after", "cursor is not one this server issued")
    return Query(flt, after or None, _limit(_single(items, "limit")))


def _since(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    if not _TIME.fullmatch(raw):
        raise ParamError("since", "expected an RFC 3339 time like 2026-12-01T00:00:00Z")
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ParamError("since", "not a valid date and time") from None


def _limit(raw: str | None) -> int:
    if raw is None:
        return MAX_PAGE
    if not raw.isdigit() or not 1 <= int(raw[:6]) <= MAX_PAGE or len(raw) > 6:
        raise ParamError("limit", f"expected an integer from 1 to {MAX_PAGE}")
    return int(raw)
