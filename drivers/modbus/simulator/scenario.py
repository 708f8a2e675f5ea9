"""Simulator scenarios: timed steps that change what a simulated unit answers.

A scenario is a YAML file: a shipped one by name (`drivers/modbus/simulator/scenarios/
NAME.yaml`, package data) or any path. It names the profile its points belong to and
lists steps by point name, never by address, so the simulator encodes each value with
the profile's type, scaling and byte/word order:

    description: a smoke detector sees smoke, alarms, then clears
    profile: smoke-detector
    loop: true                 # repeat ...
    period_s: 60               # ... every 60 s (longer than the last step's at_s)
    steps:
      - {at_s: 5, point: density, value: 0.25}      # set a value (scaled units)
      - {at_s: 8, point: alarm, value: true}
      - {at_s: 9, point: access_counter, add: 1}    # add to a number (integers wrap)
      - {at_s: 20, answer: false}                    # the unit stops answering ...
      - {at_s: 40, answer: true}                     # ... and answers again

A step applies to every unit the scenario is bound to (`--scenario fire@smoke-b1-01`),
or only to the one it names with `unit: N` or `device: ID`. Steps with the same `at_s`
are applied together, in file order, before the server answers another request: write
a record's fields before its counter, as a controller does.

Scenario files are untrusted input: they are read with the strict config loader, and
every mistake (an unknown point, a value the point cannot hold, a loop without a
period) is reported at once as `FILE:LINE:COL: key: message`.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.modbus.decode import EncodeError, Value, decode, encode
from drivers.modbus.points import POINT_NAME, Point, PointType, raise_issues
from drivers.modbus.profile import (
    PROFILE_NAME,
    Profile,
    ProfileNotFound,
    load_profile,
    package_folder,
)
from edge_agent.sdk.config import SEGMENT, ConfigError, ConfigIssue, load_model

__all__ = [
    "SHIPPED_SCENARIOS",
    "Scenario",
    "Step",
    "available_scenarios",
    "find_scenario",
    "load_scenario",
    "profile_problem",
]

#: Scenarios shipped with the simulator (drivers/modbus/simulator/scenarios, package data).
SHIPPED_SCENARIOS = package_folder("drivers.modbus.simulator", "scenarios")
SCENARIO_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_SUFFIXES = (".yaml", ".yml")

Loc = tuple[str | int, ...]


class Step(BaseModel):
    """One timed change: set a point, add to a point, or stop/resume answering."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float = Field(ge=0, le=86400, allow_inf_nan=False,
                        description="seconds from the start of the scenario (of each cycle)")
    point: str | None = Field(default=None, pattern=POINT_NAME,
                              description="the profile's point name")
    value: bool | int | float | str | None = Field(
        default=None, description="the new value, in the point's scaled units")
    add: int | float | None = Field(default=None, allow_inf_nan=False,
                                    description="add this to the point's current value")
    answer: bool | None = Field(default=None,
                                description="false: the unit stops answering; true: it answers")
    unit: int | None = Field(default=None, ge=0, le=247,
                             description="only this unit id of the scenario's targets")
    device: str | None = Field(default=None, pattern=SEGMENT,
                               description="only this device id of the scenario's targets")
    note: str | None = Field(default=None, max_length=200,
                             description="logged with the step, for people watching")

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        issues: list[tuple[Loc, str]] = []
        given = [key for key in ("value", "add", "answer") if getattr(self, key) is not None]
        if not given:
            issues.append(((), "a step needs one of `value: ...` (set a point), `add: N` "
                               "(add to a point) or `answer: true|false`"))
        for extra in given[1:]:
            issues.append(((extra,), f"a step does one thing: `{given[0]}` and `{extra}` "
                                      "cannot be combined; write two steps"))
        if given and given[0] in ("value", "add") and self.point is None:
            issues.append((("point",), f"`{given[0]}` needs the `point` it changes"))
        if self.answer is not None and self.point is not None:
            issues.append((("point",), "`answer` silences or revives the whole unit; "
                                       "it takes no `point`"))
        if self.unit is not None and self.device is not None:
            issues.append((("device",), "name the target by `unit` or by `device`, not both"))
        raise_issues("Step", issues)
        return self

    def target_label(self) -> str:
        if self.device is not None:
            return f"device {self.device}"
        return f"unit {self.unit}" if self.unit is not None else "every target"


class Scenario(BaseModel):
    """Timed steps for the units of one profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(min_length=1, max_length=500)
    profile: str | None = Field(default=None, pattern=PROFILE_NAME,
                                description="profile whose points the steps change; "
                                            "without one, steps may only `answer`")
    loop: bool = Field(default=False, description="repeat the steps every period_s")
    period_s: float | None = Field(default=None, gt=0, le=86400, allow_inf_nan=False,
                                   description="cycle length; needed with loop")
    steps: tuple[Step, ...] = Field(min_length=1, max_length=10000)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        issues: list[tuple[Loc, str]] = []
        last = max(step.at_s for step in self.steps)
        if self.loop and self.period_s is None:
            issues.append((("loop",), f"a looping scenario needs `period_s`, the cycle "
                                      f"length (more than the last step's at_s {last:g})"))
        if self.period_s is not None and self.period_s <= last:
            issues.append((("period_s",), f"period_s {self.period_s:g} must be more than "
                                          f"the last step's at_s {last:g}"))
        profile: Profile | None = None
        if self.profile is None:
            issues += [(("steps", index, "point"), "a scenario without `profile` can only "
                        "silence or revive units (`answer`); name the profile whose points "
                        "it changes") for index, step in enumerate(self.steps)
                       if step.point is not None]
        else:
            profile, problem = profile_problem(self.profile)
            if problem:
                issues.append((("profile",), problem))
        if profile is not None:
            for index, step in enumerate(self.steps):
                issues += [(("steps", index, *loc), message)
                           for loc, message in _step_issues(step, profile)]
        raise_issues("Scenario", issues)
        return self

    @property
    def cycle_s(self) -> float:
        """Seconds of one cycle: period_s, or just past the last step."""
        return self.period_s if self.period_s is not None \
            else max(step.at_s for step in self.steps)

    def fits(self, profile: Profile) -> bool:
        """True if the scenario can run on a unit serving `profile`."""
        return self.profile is None or self.profile == profile.name

    def ordered_steps(self) -> list[Step]:
        """Steps by time; steps with the same at_s keep their file order."""
        return sorted(self.steps, key=lambda step: step.at_s)


def profile_problem(name: str) -> tuple[Profile | None, str]:
    """(the profile, "") or (None, why it cannot be used)."""
    try:
        return load_profile(name), ""
    except ProfileNotFound as exc:
        return None, exc.message
    except ConfigError as exc:
        lines = "\n    ".join(str(issue) for issue in exc.issues)
        return None, f"profile `{name}` has {len(exc.issues)} problem(s):\n    {lines}"


def _step_issues(step: Step, profile: Profile) -> list[tuple[Loc, str]]:
    if step.point is None:
        return []
    try:
        point = profile.point(step.point)
    except KeyError:
        names = [p.name for p in profile.points]
        close = difflib.get_close_matches(step.point, names, n=1, cutoff=0.6)
        hint = f"; did you mean `{close[0]}`?" if close else f"; its points: {', '.join(names)}"
        return [(("point",), f"profile `{profile.name}` has no point `{step.point}`{hint}")]
    if step.add is not None:
        if not point.type.is_numeric:
            return [(("add",), f"`add` needs a number point; `{point.name}` is "
                               f"{point.type.value}")]
        return []
    assert step.value is not None
    message = encode_problem(point, step.value)
    return [(("value",), message)] if message else []


def encode_problem(point: Point, value: Value) -> str:
    """Why `value` cannot be served by `point` ("" if it can)."""
    try:
        words = encode(point, value, current=0 if point.type is PointType.BIT else None)
    except EncodeError as exc:
        return str(exc)
    if point.type is PointType.BIT or point.type is PointType.BOOL:
        return ""
    served = decode(point, words)
    if isinstance(value, int | float) and isinstance(served, int | float) \
            and not math.isclose(value, served, rel_tol=1e-6, abs_tol=1e-9):
        return (f"point `{point.name}` would read {served!r}, not {value!r}: its "
                f"resolution is {point.scale:g} {point.unit or ''}".rstrip())
    return ""


def available_scenarios(folder: Path = SHIPPED_SCENARIOS) -> dict[str, Path]:
    """Scenario name -> file, sorted by name."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return {}
    return {entry.stem: entry for entry in entries
            if entry.suffix in _SUFFIXES and re.match(SCENARIO_NAME, entry.stem)
            and entry.is_file()}


def find_scenario(name_or_path: str | Path) -> Path:
    """A path as given, or a shipped scenario NAME; ConfigError if there is none."""
    if isinstance(name_or_path, Path) or "/" in name_or_path \
            or name_or_path.endswith(_SUFFIXES):
        return Path(name_or_path)
    name = str(name_or_path)
    found = available_scenarios()
    if name in found:
        return found[name]
    listed = ", ".join(found) or "none"
    close = difflib.get_close_matches(name, list(found), n=1, cutoff=0.6)
    message = f"unknown scenario `{name}`; available scenarios: {listed}"
    if close:
        message += f"; did you mean `{close[0]}`?"
    raise ConfigError([ConfigIssue(str(SHIPPED_SCENARIOS / f"{name}.yaml"), 1, 1, "scenario",
                                   message, f"a scenario NAME is the file NAME.yaml in "
                                            f"{SHIPPED_SCENARIOS}, or give a path")])


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a scenario by name or path; ConfigError with every issue as FILE:LINE:COL."""
    return load_model(find_scenario(name_or_path), Scenario)
