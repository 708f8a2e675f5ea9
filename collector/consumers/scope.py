"""A consumer's scope: the areas it may read × the event types it may read.

Areas are the codes the envelope carries (docs/events.md): a 6-digit `district`, a
9-digit `street`, a 12-digit `community`; a code's length says which column it matches,
and one scope may mix them (an event is in scope when ANY code matches). `""` alone means
every area. Types are patterns checked against the event catalog
(`edge_agent.contract.envelope.CATALOG`): an exact type (`gate.access`), a family
(`smoke.*`) or `*`; a pattern that matches no catalog type is refused, naming it, so a typo
cannot silently grant nothing (or, worse, be "fixed" later into something broader).

The stream API turns a scope into SQL itself: `districts`, `streets`, `communities`
and `event_types()` are plain tuples for `IN (...)` filters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from collector.consumers.errors import ConsumerError
from edge_agent.contract.envelope import CATALOG

#: Which envelope column a code of this length matches.
AREA_COLUMNS = {6: "district", 9: "street", 12: "community"}
ALL_AREAS = ""
ALL_TYPES = "*"
_CODE = re.compile(r"^[0-9]+$")
_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*\.\*|[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)$")


class ScopeParts(Protocol):
    """What the audit needs of a scope (the stream API passes its own view of one)."""

    @property
    def areas(self) -> tuple[str, ...]: ...

    @property
    def types(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Scope:
    """`areas`: codes (`""` = all areas); `types`: patterns (`*` = all types). Sorted,
    deduplicated; build one with `parse_scope` to have it validated."""

    areas: tuple[str, ...]
    types: tuple[str, ...]

    # ------------------------------------------------------------- plain parts for SQL

    @property
    def all_areas(self) -> bool:
        return ALL_AREAS in self.areas

    @property
    def all_types(self) -> bool:
        return ALL_TYPES in self.types

    def _codes(self, length: int) -> tuple[str, ...]:
        return tuple(a for a in self.areas if len(a) == length)

    @property
    def districts(self) -> tuple[str, ...]:
        return self._codes(6)

    @property
    def streets(self) -> tuple[str, ...]:
        return self._codes(9)

    @property
    def communities(self) -> tuple[str, ...]:
        return self._codes(12)

    def event_types(self) -> tuple[str, ...] | None:
        """The catalog types the patterns cover, sorted; None when `*` (no type filter)."""
        if self.all_types:
            return None
        return tuple(sorted(t for t in CATALOG if self.matches_type(t)))

    # ------------------------------------------------------------- checks

    def matches_area(self, district: str, street: str, community: str) -> bool:
        if self.all_areas:
            return True
        by_column = {"district": district, "street": street, "community": community}
        return any(by_column[AREA_COLUMNS[len(a)]] == a for a in self.areas)

    def matches_type(self, event_type: str) -> bool:
        return any(_type_matches(p, event_type) for p in self.types)

    def text(self) -> str:
        """One line for the audit log and `consumers list`: `areas=… types=…`."""
        areas = ",".join(self.areas) if not self.all_areas else "all"
        return f"areas={areas} types={','.join(self.types)}"

    def __str__(self) -> str:
        return self.text()


def _type_matches(pattern: str, event_type: str) -> bool:
    if pattern == ALL_TYPES:
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return event_type == pattern


def parse_area(code: str) -> str:
    """A valid area code (stripped), `""` for all (`""`, `all`, `*`); else ConsumerError."""
    code = code.strip()
    if code in ("", "all", "*"):
        return ALL_AREAS
    if not _CODE.match(code) or len(code) not in AREA_COLUMNS:
        raise ConsumerError(
            f"area {code!r}: expected a 6-digit district, 9-digit street or 12-digit "
            "community code (hint: as in the events' district/street/community, e.g. "
            "371312001001; `all` for every area)")
    return code


def parse_type(pattern: str) -> str:
    """A valid type pattern that matches at least one catalog type; else ConsumerError."""
    pattern = pattern.strip()
    if not _PATTERN.match(pattern):
        raise ConsumerError(f"type {pattern!r}: expected an event type (gate.access), a "
                            "family (smoke.*) or * (hint: `edge-collector consumers types` "
                            "lists the catalog)")
    if not any(_type_matches(pattern, t) for t in CATALOG):
        families = sorted({t.split(".", 1)[0] + ".*" for t in CATALOG})
        raise ConsumerError(f"type {pattern!r} matches no event type of the catalog (hint: "
                            f"families are {', '.join(families)})")
    return pattern


def parse_scope(areas: Iterable[str], types: Iterable[str]) -> Scope:
    """Validate and normalise; at least one area and one type are required."""
    got_areas = sorted({parse_area(a) for a in areas})
    got_types = sorted({parse_type(t) for t in types})
    if not got_areas:
        raise ConsumerError("no area given (hint: --area CODE, or --area all)")
    if not got_types:
        raise ConsumerError("no event type given (hint: --type smoke.*, or --type '*')")
    if ALL_AREAS in got_areas:
        got_areas = [ALL_AREAS]
    if ALL_TYPES in got_types:
        got_types = [ALL_TYPES]
    return Scope(tuple(got_areas), tuple(got_types))


def scope_from_db(areas: str, types: str) -> Scope:
    """The stored form (space-separated, already validated) back into a Scope."""
    return Scope(tuple(areas.split(" ")) if areas else (ALL_AREAS,), tuple(types.split(" ")))


def scope_to_db(scope: Scope) -> tuple[str, str]:
    return ("" if scope.all_areas else " ".join(scope.areas)), " ".join(scope.types)
