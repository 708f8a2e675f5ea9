"""Device profiles: a device model's register map as a reusable YAML file.

A profile names every point of a device model, the model's read limits and the rule
specs that turn point values into catalog events. A device in the gateway config
names a profile plus its own address and unit id. Profiles live in the gateway YAML's
`profiles:` folders (while its devices are validated: `edge_agent.sdk.config.profile_dirs`),
`drivers/modbus/profiles/NAME.yaml` (shipped: package data, found with
`importlib.resources`, so the same in a checkout and an installed wheel) and
`/etc/edge-agent/profiles/NAME.yaml` (site); the first match on the search path wins.
A profile's `name` must be its file name without `.yaml`.

A device kind with no catalog type of its own needs only a profile: its `kind:` names
it, `sensor.reading` rules send its quantities (each with a unit from the contract's
fixed list: the field's `unit` or its point's) and `device.alarm` rules its own alarm
types `<kind>.<name>`. The profile checks what one rule cannot see: units of the points
a quantity reads, each quantity once, each declared type in the profile's namespace and
declared once.

Profiles are loaded with the strict config loader, so every mistake is reported at
once as `FILE:LINE:COL: key: message`; the cross-point checks (names used twice,
overlapping registers, points larger than the limits) name both points involved.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from drivers.modbus.planner import (
    DEFAULT_LIMITS,
    DEFAULT_LINK,
    DeviceLimits,
    Limits,
    LinkCost,
    ReadRequest,
    oversized,
    plan,
)
from drivers.modbus.points import Point, PointType, Table, raise_issues
from edge_agent.contract.units import is_alarm_type
from edge_agent.sdk.config import ConfigError, ConfigIssue, load_model, profile_dirs
from edge_agent.sdk.rules import (
    DECLARED_ALARM,
    KIND_PATTERN,
    RESERVED_KINDS,
    SENSOR_READING,
    UNITS,
    RuleSpec,
    point_issues,
    unit_hint,
)

__all__ = [
    "DEFAULT_SEARCH_PATH",
    "PROFILE_NAME",
    "SHIPPED_PROFILES",
    "SITE_PROFILES",
    "Profile",
    "ProfileName",
    "ProfileNotFound",
    "available_profiles",
    "clear_profile_cache",
    "find_profile",
    "load_profile",
    "package_folder",
]



def package_folder(package: str, name: str) -> Path:
    """The folder `name` of `package`'s package data, found with `importlib.resources`.

    The agent is installed as files (a wheel into its venv, or a checkout), never zipped,
    so this is a real folder; its files are read by path, which every FILE:LINE:COL
    message names.
    """
    folder = resources.files(package) / name
    return folder if isinstance(folder, Path) else Path(str(folder))


#: Profiles shipped with the driver (drivers/modbus/profiles, package data).
SHIPPED_PROFILES = package_folder("drivers.modbus", "profiles")
#: Profiles an installer adds on a gateway.
SITE_PROFILES = Path("/etc/edge-agent/profiles")
DEFAULT_SEARCH_PATH: tuple[Path, ...] = (SHIPPED_PROFILES, SITE_PROFILES)
PROFILE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_SUFFIXES = (".yaml", ".yml")

Loc = tuple[str | int, ...]


class Profile(BaseModel):
    """One device model: points, read limits and event rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=PROFILE_NAME, description="the file name without .yaml")
    description: str = Field(min_length=1, max_length=500)
    vendor: str | None = Field(default=None, max_length=100)
    model: str | None = Field(default=None, max_length=100)
    kind: str | None = Field(default=None, pattern=KIND_PATTERN,
                             description="the device kind (elevator, pump, meter): "
                             "`sensor.reading`'s data.kind and the namespace of the "
                             "profile's own alarm types (`<kind>.<name>`); default: none")
    limits: Limits = Field(default=DEFAULT_LIMITS,
                           description="what the device model accepts per request")
    points: tuple[Point, ...]
    events: list[RuleSpec] = Field(default_factory=list,
                                   description="rules turning point values into events")

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        issues = [*_empty_issues(self.points), *_name_issues(self.points),
                  *_overlap_issues(self.points),
                  *_limit_issues(self.points, self.limits),
                  *((i.loc, i.message) for i in point_issues(self.events,
                                                              {p.name for p in self.points})),
                  *_kind_issues(self.kind), *_declared_issues(self.events, self.kind),
                  *_quantity_issues(self.events, self.points)]
        raise_issues("Profile", sorted(issues, key=lambda i: _loc_key(i[0])))
        return self

    @property
    def device_kind(self) -> str:
        """`sensor.reading`'s data.kind: the profile's `kind`, else its name."""
        return self.kind or self.name

    def units(self) -> dict[str, str]:
        """Point name -> unit, for the points that have one."""
        return {p.name: p.unit for p in self.points if p.unit is not None}


    def point(self, name: str) -> Point:
        """The point called `name` (KeyError if none)."""
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(name)

    def plan(self, device: DeviceLimits | None = None,
             link: LinkCost = DEFAULT_LINK) -> list[ReadRequest]:
        """The read requests of one poll, with the device's own limits applied and the gap
        fill (unless a limit sets it) from the cost of a request on `link`."""
        return plan(self.points, self.limits.lowered(device), link)


def _loc_key(loc: Loc) -> tuple[str, ...]:
    return tuple(f"{p:08d}" if isinstance(p, int) else p for p in loc)


def _empty_issues(points: Sequence[Point]) -> list[tuple[Loc, str]]:
    return [] if points else [(("points",), "a profile needs at least one point")]


def _name_issues(points: Sequence[Point]) -> list[tuple[Loc, str]]:
    first: dict[str, int] = {}
    issues: list[tuple[Loc, str]] = []
    for index, point in enumerate(points):
        if point.name in first:
            issues.append((("points", index, "name"),
                           f"point name `{point.name}` is used twice (points[{first[point.name]}] "
                           f"and points[{index}]); every point needs its own name"))
        else:
            first[point.name] = index
    return issues


def _overlap_issues(points: Sequence[Point]) -> list[tuple[Loc, str]]:
    """Points on the same register or bit, except `bit` points on distinct bits.

    One issue per point, at the later of two overlapping points in the file, naming
    every earlier point it overlaps.
    """
    by_table: dict[Table, list[tuple[int, Point]]] = {}
    for index, point in enumerate(points):
        by_table.setdefault(point.table, []).append((index, point))
    partners: dict[int, list[int]] = {}
    for items in by_table.values():
        items.sort(key=lambda item: (item[1].address, item[0]))
        live: list[tuple[int, Point]] = []
        for index, point in items:
            live = [(i, p) for i, p in live if p.last_address >= point.address]
            for other_index, other in live:
                if not _may_share(point, other):
                    first, later = sorted((index, other_index))
                    partners.setdefault(later, []).append(first)
            live.append((index, point))
    return [(("points", later, "address"), _overlap_message(points[later],
                                                            [points[i] for i in sorted(firsts)]))
            for later, firsts in partners.items()]


def _may_share(a: Point, b: Point) -> bool:
    return a.type is PointType.BIT and b.type is PointType.BIT and a.bit != b.bit


def _overlap_message(point: Point, earlier: Sequence[Point]) -> str:
    names = ", ".join(f"`{p.name}` ({p.span()})" for p in earlier)
    text = f"point `{point.name}` ({point.span()}) overlaps {names}"
    if point.table.is_bits:
        return text
    if point.type is PointType.BIT and all(p.type is PointType.BIT for p in earlier):
        return text + ": the same bit of the same register"
    return text + "; only `bit` points may share a register, on distinct bits"


def _limit_issues(points: Sequence[Point], limits: Limits) -> list[tuple[Loc, str]]:
    index = {id(point): i for i, point in enumerate(points)}
    issues: list[tuple[Loc, str]] = []
    for point, message in oversized(points, limits):
        key = "length" if point.type is PointType.STRING else "type"
        issues.append((("points", index[id(point)], key), message))
    return issues


def _kind_issues(kind: str | None) -> list[tuple[Loc, str]]:
    if kind is not None and kind in RESERVED_KINDS:
        return [(("kind",), f"`{kind}` is a family of the event catalog; name the device "
                            "kind itself (elevator, pump, meter, barrier, air)")]
    return []


def _declared_issues(events: Sequence[RuleSpec], kind: str | None) -> list[tuple[Loc, str]]:
    """Each declared alarm type is `<kind>.<name>` of this profile's kind, declared once."""
    issues: list[tuple[Loc, str]] = []
    first: dict[str, int] = {}
    for index, rule in enumerate(events):
        declared = getattr(rule, "alarm_type", None)
        if rule.type != DECLARED_ALARM or not isinstance(declared, str) \
                or not is_alarm_type(declared):
            continue  # the rule's own checks reported it
        loc: Loc = ("events", index, "alarm_type")
        namespace = declared.split(".", 1)[0]
        if kind is None:
            issues.append((loc, f"`{declared}` needs the profile's `kind: {namespace}` (the "
                                "namespace of its alarm types); add it at the top"))
        elif namespace != kind:
            issues.append((loc, f"`{declared}` is not in this profile's namespace: write "
                                f"`{kind}.{declared.split('.', 1)[1]}` (alarm types are "
                                f"`<kind>.<name>`, kind `{kind}`)"))
        if declared in first:
            issues.append((loc, f"alarm type `{declared}` is declared twice "
                                f"(events[{first[declared]}] and events[{index}]); one rule "
                                "per alarm type"))
        else:
            first[declared] = index
    return issues


def _quantity_issues(events: Sequence[RuleSpec], points: Sequence[Point]
                     ) -> list[tuple[Loc, str]]:
    """`sensor.reading` quantities: a unit from the fixed list (the field's or its point's)
    and each quantity named once across the profile's readings."""
    by_name = {p.name: (i, p) for i, p in enumerate(points)}
    issues: list[tuple[Loc, str]] = []
    bad_points: set[int] = set()
    first: dict[str, int] = {}
    for index, rule in enumerate(events):
        if rule.type != SENSOR_READING:
            continue
        for name, spec in rule.data_fields().items():
            loc: Loc = ("events", index, "fields", name)
            if name in first:
                issues.append((loc, f"quantity `{name}` is already sent by events[{first[name]}]; "
                                    "each quantity once per profile (rename one)"))
            else:
                first[name] = index
            if spec.unit is not None or spec.point not in by_name:
                continue
            point_index, point = by_name[spec.point]
            if point.unit is None:
                issues.append(((*loc, "point"), f"quantity `{name}` has no unit: give point "
                                                f"`{point.name}` a `unit:` or write `{name}: "
                                                f"{{point: {point.name}, unit: ...}}`; "
                                                + unit_hint("")))
            elif point.unit not in UNITS and point_index not in bad_points:
                bad_points.add(point_index)
                issues.append((("points", point_index, "unit"),
                               f"unknown unit `{point.unit}` (point `{point.name}` is sent as "
                               f"quantity `{name}`); {unit_hint(point.unit)}"))
    return issues


class ProfileNotFound(ConfigError):
    """No profile of that name on the search path; the issue lists the available ones."""

    def __init__(self, name: str, available: Sequence[str], searched: Sequence[Path]) -> None:
        self.name = name
        self.available = list(available)
        self.searched = list(searched)
        listed = ", ".join(self.available) if self.available else "none"
        close = difflib.get_close_matches(name, self.available, n=1, cutoff=0.6)
        self.message = f"unknown profile `{name}`; available profiles: {listed}"
        if close:
            self.message += f"; did you mean `{close[0]}`?"
        dirs = ", ".join(str(d) for d in self.searched)
        self.hint = f"a profile NAME is the file NAME.yaml in one of: {dirs}"
        where = (self.searched[0] / f"{name}.yaml") if self.searched else Path(f"{name}.yaml")
        super().__init__([ConfigIssue(str(where), 1, 1, "profile", self.message, self.hint)])


_cache: dict[Path, tuple[tuple[int, int], Profile]] = {}
_cache_lock = threading.Lock()


def available_profiles(search_path: Sequence[Path | str] | None = None) -> dict[str, Path]:
    """Profile name -> file, first match on the search path winning, sorted by name."""
    found: dict[str, Path] = {}
    for folder in _search(search_path):
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.suffix in _SUFFIXES and re.match(PROFILE_NAME, entry.stem) \
                    and entry.stem not in found and entry.is_file():
                found[entry.stem] = entry
    return dict(sorted(found.items()))


def find_profile(name_or_path: str | Path, search_path: Sequence[Path | str] | None = None
                 ) -> Path:
    """The file of a profile: a path as given, or NAME.yaml on the search path."""
    if _is_path(name_or_path):
        return Path(name_or_path)
    name = str(name_or_path)
    folders = _search(search_path)
    if re.match(PROFILE_NAME, name):
        for folder in folders:
            for suffix in _SUFFIXES:
                candidate = folder / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
    raise ProfileNotFound(name, list(available_profiles(folders)), folders)


def load_profile(name_or_path: str | Path, search_path: Sequence[Path | str] | None = None
                 ) -> Profile:
    """Load (or take from the cache) a profile by name or path.

    Raises ConfigError with every issue as `FILE:LINE:COL: ...`, ProfileNotFound
    (a ConfigError) for a name not on the search path. Cached per resolved path and
    file version (mtime and size), so an edited profile is read again.
    """
    path = find_profile(name_or_path, search_path)
    try:
        resolved = path.resolve()
        stat = resolved.stat()
        version = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        return load_model(path, Profile)  # reports the file's problem with its path
    with _cache_lock:
        hit = _cache.get(resolved)
    if hit is not None and hit[0] == version:
        return hit[1]
    profile = load_model(path, Profile)
    if profile.name != path.stem:
        line, col = _locate_top_key(path, "name")
        raise ConfigError([ConfigIssue(
            str(path), line, col, "name",
            f"the profile is called `{profile.name}` but its file is `{path.name}`",
            f"name the file {profile.name}.yaml, or write name: {path.stem}")])
    with _cache_lock:
        _cache[resolved] = (version, profile)
    return profile


def clear_profile_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _check_profile_ref(name: str) -> str:
    if not re.match(PROFILE_NAME, name):
        dirs = " or ".join(str(d) for d in _search(None))
        raise ValueError(f"`{name}` is not a profile name; write a name such as "
                         f"`smoke-detector`, the file NAME.yaml in {dirs}")
    try:
        load_profile(name)
    except ProfileNotFound as exc:
        raise ValueError(exc.message) from None
    except ConfigError as exc:
        lines = "\n    ".join(str(issue) for issue in exc.issues)
        raise ValueError(f"profile `{name}` has {len(exc.issues)} problem(s):\n    {lines}"
                         ) from None
    return name


#: A field type for a device's `profile:` key: a name (never a path, which would be
#: relative to wherever the agent was started) that loads from the default search
#: path, so an unknown or broken profile is reported at the device's line.
ProfileName = Annotated[str, AfterValidator(_check_profile_ref)]


def _search(search_path: Sequence[Path | str] | None) -> list[Path]:
    """The given path, or the gateway YAML's `profiles:` (while its devices are validated)
    then the shipped and site folders."""
    if search_path is None:
        return [*profile_dirs(), *DEFAULT_SEARCH_PATH]
    return [Path(p) for p in search_path]


def _is_path(name_or_path: str | Path) -> bool:
    if isinstance(name_or_path, Path):
        return True
    return "/" in name_or_path or name_or_path.endswith(_SUFFIXES)


def _locate_top_key(path: Path, key: str) -> tuple[int, int]:
    """1-based line and column of a top-level key's value (1, 1 if not found)."""
    try:
        text = path.read_text("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return 1, 1
    pattern = re.compile(rf"^{re.escape(key)}\s*:\s*")
    for number, line in enumerate(text.splitlines(), start=1):
        match = pattern.match(line)
        if match:
            return number, match.end() + 1
    return 1, 1
