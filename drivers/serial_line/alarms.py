"""Alarms raised and cleared by lines, one per distinct value of the `per` groups.

A fire panel with hundreds of zones is configured with one frame and one alarm spec
(`per: zone`), not one rule per zone: this tracker keeps, per device, which
(type, zone) alarms are raised and under which `alarm_id`, emits `raised` once when
a zone goes into alarm (a panel repeating the line emits nothing more) and `cleared`
with the same `alarm_id` when the zone is seen normal again. Clearing a zone that is
not raised emits nothing, so a panel's status roll-call after a restart is quiet.

After an agent restart the zones left in alarm are taken back (`restore`, from
edge_agent.open_alarms): a panel repeating one emits nothing, and its clear names the
alarm_id of the raise before the restart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.driver_api import EventSink
from edge_agent.envelope import CATALOG, Severity, new_ulid
from edge_agent.logs import get_logger
from edge_agent.open_alarms import OpenAlarm

from .options import AlarmSpec

__all__ = ["ALARM_ID_MAX", "MAX_ACTIVE", "AlarmTracker", "alarm_id"]

log = get_logger("drivers.serial_line")

#: The schema's limit on `data.alarm_id`.
ALARM_ID_MAX = 64
#: Raised alarms one device may hold; a flood of made-up zone numbers cannot grow memory.
MAX_ACTIVE = 10_000

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

Key = tuple[str, tuple[str, ...]]  # (type, values of the `per` groups)


def alarm_id(device: str, type_: str, instance: tuple[str, ...], observed_at: float) -> str:
    """`<device>:<type>:<zone>:<ULID>`, unique per raise, at most 64 characters.

    The device and then the zone are left out when the id would be longer (the
    event's `subject` names the device and `data` holds the zone anyway).
    """
    ulid = new_ulid(int(observed_at * 1000))
    zone = _UNSAFE.sub("_", ".".join(instance))[:24]
    for parts in ((device, type_, zone, ulid), (type_, zone, ulid), (type_, ulid)):
        text = ":".join(p for p in parts if p)
        if len(text) <= ALARM_ID_MAX:
            return text
    return ulid  # pragma: no cover - a catalog type is short


@dataclass
class _Raised:
    alarm_id: str
    per_data: dict[str, str]  # the `per` groups of the raising line, repeated on the clear


class AlarmTracker:
    """The raised alarms of one device; emits through the sink."""

    def __init__(self, device: str, sink: EventSink, *, max_active: int = MAX_ACTIVE) -> None:
        self.device = device
        self.sink = sink
        self.max_active = max_active
        self.active: dict[Key, _Raised] = {}
        self.refused = 0  # raises dropped because max_active was reached

    def restore(self, specs: Iterable[AlarmSpec], open_alarms: Iterable[OpenAlarm]) -> None:
        """Take back the alarms the last run left open (their `per` groups from the
        raise's data); ones no spec of this device names are left alone."""
        specs = list(specs)
        for alarm in open_alarms:
            for spec in specs:
                values = tuple(alarm.data.get(g) for g in spec.per)
                if spec.type != alarm.type or not all(isinstance(v, str) for v in values):
                    continue
                per = tuple(str(v) for v in values)
                if len(self.active) < self.max_active:
                    self.active[(spec.type, per)] = _Raised(
                        alarm.alarm_id, dict(zip(spec.per, per, strict=True)))
                break

    def apply(self, spec: AlarmSpec, groups: Mapping[str, str | None],
              observed_at: float) -> None:
        """One matched line for one alarm spec."""
        action = spec.action or self._action(spec, groups)
        if action is None:
            return
        instance = tuple(groups.get(g) for g in spec.per)
        if any(v is None for v in instance):
            return  # a `per` group did not take part in this match: no instance to name
        values = tuple(v for v in instance if v is not None)
        key: Key = (spec.type, values)
        extra = {name: text for name, g in spec.data.items()
                 if (text := groups.get(g)) is not None}
        if action == "raise":
            self._raise(spec, key, dict(zip(spec.per, values, strict=True)), extra, observed_at)
        else:
            self._clear(key, extra, observed_at)

    @staticmethod
    def _action(spec: AlarmSpec, groups: Mapping[str, str | None]) -> str | None:
        text = groups.get(spec.state) if spec.state is not None else None
        if text is None:
            return None
        if text in spec.raise_:
            return "raise"
        if text in spec.clear:
            return "clear"
        return None  # e.g. FAULT on the smoke.alarm spec: another spec's business

    def clear_all(self, types: Iterable[str], observed_at: float) -> None:
        """Clear every raised alarm of these types (a panel reset)."""
        wanted = set(types)
        for key in [k for k in self.active if k[0] in wanted]:
            self._clear(key, {}, observed_at)

    def _raise(self, spec: AlarmSpec, key: Key, per_data: dict[str, str],
               extra: dict[str, Any], observed_at: float) -> None:
        if key in self.active:
            return  # already raised: a panel repeats its alarms
        if len(self.active) >= self.max_active:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                log.error("serial_line_alarms_full", device=self.device, type=key[0],
                          active=len(self.active), refused=self.refused,
                          hint="more raised alarms than any panel has zones; check `per`")
            return
        raised = _Raised(alarm_id(self.device, key[0], key[1], observed_at), per_data)
        self.active[key] = raised
        severity = spec.severity or CATALOG[key[0]].severity
        self._emit(key[0], {**extra, **per_data, "state": "raised",
                            "alarm_id": raised.alarm_id}, severity, observed_at)

    def _clear(self, key: Key, extra: dict[str, Any], observed_at: float) -> None:
        raised = self.active.pop(key, None)
        if raised is None:
            return
        self._emit(key[0], {**extra, **raised.per_data, "state": "cleared",
                            "alarm_id": raised.alarm_id}, Severity.INFO, observed_at)

    def _emit(self, type_: str, data: dict[str, Any], severity: Severity,
              observed_at: float) -> None:
        try:
            self.sink.emit(self.device, type_, data, severity=severity, observed_at=observed_at)
        except Exception as exc:  # the sink never raises; if it does, the line is lost, not us
            log.error("serial_line_emit_failed", device=self.device, type=type_,
                      error=type(exc).__name__)

    def raised(self) -> dict[str, list[str]]:
        """Raised alarms by type: their alarm_ids (for status and tests)."""
        out: dict[str, list[str]] = {}
        for (type_, _), raised in self.active.items():
            out.setdefault(type_, []).append(raised.alarm_id)
        return out
