"""Alarms raised and cleared by lines, one per distinct value of the `per` groups.

A fire panel with hundreds of zones is configured with one frame and one alarm spec
(`per: zone`), not one rule per zone: this tracker keeps, per device, which
(type, zone) alarms are raised and under which `alarm_id`, emits `raised` once when
a zone goes into alarm (a panel repeating the line emits nothing more) and `cleared`
with the same `alarm_id` when the zone is seen normal again. Clearing a zone that is
not raised emits nothing, so a panel's status roll-call after a restart is quiet.

After an agent restart the zones left in alarm are taken back (`restore`, from
edge_agent.pipeline.open_alarms): a panel repeating one emits nothing, and its clear names the
alarm_id of the raise before the restart.

Chatter control (edge_agent.rules.chatter) works per zone: a zone that goes into alarm and back
more than `max_toggles_per_min` times a minute raises one `<kind>.chattering` alarm (with
the zone), its raises and clears are then counted, not sent (a raise while the zone is
reported normal is still sent at once), and `settle()`, called by the driver's ticker,
reports the zone's state as it is and clears the chattering alarm once the zone has been
calm for `calm_s`.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.contract.envelope import CATALOG, CHATTER_TYPES, Severity, chatter_type, new_ulid
from edge_agent.contract.logs import get_logger
from edge_agent.sdk.api import EventSink, OpenAlarm
from edge_agent.sdk.config import ChatterConfig
from edge_agent.sdk.rules import ChatterGuard, chatter_alarm_id, chatter_policy, report_chatter

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


@dataclass
class _Zone:
    """What chatter control remembers of one alarm instance."""

    guard: ChatterGuard
    observed: bool  # what the panel's lines say now (the events may say otherwise)
    per_data: dict[str, str]
    severity: Severity


class AlarmTracker:
    """The raised alarms of one device; emits through the sink."""

    def __init__(self, device: str, sink: EventSink, *, max_active: int = MAX_ACTIVE,
                 chatter: ChatterConfig | None = None) -> None:
        self.device = device
        self.sink = sink
        self.max_active = max_active
        self.chatter = chatter if chatter is not None else chatter_policy(sink)
        self.active: dict[Key, _Raised] = {}  # raised as far as the events sent say
        self.zones: OrderedDict[Key, _Zone] = OrderedDict()  # at most max_active
        self.refused = 0  # raises dropped because max_active was reached

    def restore(self, specs: Iterable[AlarmSpec], open_alarms: Iterable[OpenAlarm]) -> None:
        """Take back the alarms the last run left open (their `per` groups from the
        raise's data); ones no spec of this device names are left alone."""
        specs = list(specs)
        for alarm in open_alarms:
            chattering = alarm.type in CHATTER_TYPES
            type_ = alarm.data.get("alarm_type") if chattering else alarm.type
            for spec in specs:
                values = tuple(alarm.data.get(g) for g in spec.per)
                if spec.type != type_ or not all(isinstance(v, str) for v in values):
                    continue
                per = tuple(str(v) for v in values)
                per_data = dict(zip(spec.per, per, strict=True))
                if chattering:  # cleared once the zone has been calm for a while
                    zone = self._zone(spec, (spec.type, per), per_data)
                    zone.observed = (spec.type, per) in self.active
                    zone.guard.resume(alarm.alarm_id, time.time())
                elif len(self.active) < self.max_active:
                    self.active[(spec.type, per)] = _Raised(alarm.alarm_id, per_data)
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
        per_data = dict(zip(spec.per, values, strict=True))
        self._observe(spec, key, per_data, extra, action == "raise", observed_at)

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
        keys = [k for k in self.active if k[0] in wanted]
        keys += [k for k, z in self.zones.items() if k[0] in wanted and z.observed
                 and k not in self.active]  # in alarm, not sent: chattering
        for key in keys:
            zone = self.zones.get(key)
            if zone is None:
                self._clear(key, {}, observed_at)
            elif zone.observed:  # else normal already: the chatter's calm puts it right
                self._toggle(zone, key, {}, False, observed_at)

    def settle(self, now: float) -> None:
        """End the chatter of zones calm for `calm_s`: report their state as it is and
        clear their chattering alarm (the driver calls this every second)."""
        for key, zone in list(self.zones.items()):
            if not zone.guard.chattering:
                continue
            calm = zone.guard.settle(zone.observed, key in self.active, now)
            if calm is None:
                continue
            if calm.send:
                self._send(zone, key, {}, now)
            self._chattering(zone, key, "cleared", {
                "toggles": calm.toggles, "chatter_s": calm.chatter_s,
                "final_state": "raised" if zone.observed else "cleared"}, now)

    # ------------------------------------------------------------------ chatter control

    def _observe(self, spec: AlarmSpec, key: Key, per_data: dict[str, str],
                 extra: dict[str, Any], active: bool, observed_at: float) -> None:
        zone = self.zones.get(key)
        observed = zone.observed if zone is not None else key in self.active
        if active == observed:
            return  # a panel repeats its lines; a clear of a normal zone is a roll-call
        if active and key not in self.active and len(self.active) >= self.max_active:
            self._refuse(key)
            return
        if zone is None:
            zone = self._zone(spec, key, per_data)
        self._toggle(zone, key, extra, active, observed_at)

    def _zone(self, spec: AlarmSpec, key: Key, per_data: dict[str, str]) -> _Zone:
        zone = self.zones.get(key)
        if zone is None:
            zone = _Zone(ChatterGuard(self.chatter.overridden(spec.chatter)),
                         key in self.active, per_data,
                         spec.severity or CATALOG[key[0]].severity)
            if len(self.zones) >= self.max_active:  # forget the oldest calm zone
                old = next((k for k, z in self.zones.items() if z.guard.idle), None)
                if old is not None:
                    del self.zones[old]
            self.zones[key] = zone
        self.zones.move_to_end(key)
        return zone

    def _toggle(self, zone: _Zone, key: Key, extra: dict[str, Any], active: bool,
                observed_at: float) -> None:
        zone.observed = active
        verdict = zone.guard.toggle(active, key in self.active, observed_at)
        if verdict.start:
            self._chattering(zone, key, "raised", {"toggles": verdict.toggles}, observed_at)
        if verdict.send:
            self._send(zone, key, extra, observed_at)
        if verdict.start or not verdict.send:
            report_chatter(self.sink, self.device, key[0], suppressed=0 if verdict.send else 1,
                           started=verdict.start, instance=zone.per_data)

    def _send(self, zone: _Zone, key: Key, extra: dict[str, Any], observed_at: float) -> None:
        if zone.observed:
            self._raise(zone.severity, key, zone.per_data, extra, observed_at)
        else:
            self._clear(key, extra, observed_at)

    def _chattering(self, zone: _Zone, key: Key, state: str, extra: dict[str, Any],
                    observed_at: float) -> None:
        type_ = chatter_type(key[0])
        guard = zone.guard
        if state == "raised":
            guard.alarm_id = chatter_alarm_id(self.device, key[0], observed_at)
        self._emit(type_, {**zone.per_data, "state": state, "alarm_id": guard.alarm_id,
                           "alarm_type": key[0], **extra},
                   CATALOG[type_].severity if state == "raised" else Severity.INFO,
                   observed_at)
        if state == "cleared":
            guard.alarm_id = None

    # ------------------------------------------------------------------ events

    def _refuse(self, key: Key) -> None:
        self.refused += 1
        if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
            log.error("serial_line_alarms_full", device=self.device, type=key[0],
                      active=len(self.active), refused=self.refused,
                      hint="more raised alarms than any panel has zones; check `per`")

    def _raise(self, severity: Severity, key: Key, per_data: dict[str, str],
               extra: dict[str, Any], observed_at: float) -> None:
        if key in self.active:
            return  # already raised: a panel repeats its alarms
        if len(self.active) >= self.max_active:
            self._refuse(key)
            return
        raised = _Raised(alarm_id(self.device, key[0], key[1], observed_at), per_data)
        self.active[key] = raised
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
