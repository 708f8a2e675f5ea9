"""The fleet's state, pure: CloudEvents in (`Fleet.apply`), the view out (`Fleet.view`).

Per gateway: its place, when it was last heard from (any event), the data of its last
`gateway.heartbeat`, its devices (last event, offline/online) and its open alarms (a
`raised` not yet `cleared`, by `alarm_id`). Time comes from the events themselves (their
`time`, capped at the moment they were applied so a gateway clock ahead of ours cannot
keep it green), so a rebuild from the store gives the same answer as having followed
the stream live.

Status, decided at view time (`now`), worst first:
- red: nothing heard for more than 2 × the heartbeat interval;
- amber: uplink backlog (the oldest waiting event older than one heartbeat interval, or
  the disk under the outbox full), unexplained sequence gaps, or a device offline;
- green otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["red", "amber", "green"]
#: the heartbeat fields the view shows
HEARTBEAT_FIELDS = ("outbox_events", "oldest_waiting_s", "disk_full", "version", "uptime_s",
                    "evicted_total")


def parse_time(text: str) -> float:
    """RFC 3339 (`…Z` or an offset) -> seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass(slots=True)
class Device:
    id: str
    last_type: str = ""
    last_at: float = 0.0
    #: None until a device.offline / device.online says
    online: bool | None = None
    offline_reason: str | None = None


@dataclass(frozen=True, slots=True)
class OpenAlarm:
    alarm_id: str
    type: str
    device: str
    severity: str
    since: float
    #: a `device.alarm`'s declared type (`pump.failure`), shown instead of the generic type
    alarm_type: str | None = None


@dataclass(slots=True)
class Gateway:
    id: str
    district: str
    street: str
    community: str
    last_seen: float = 0.0
    heartbeat_at: float | None = None
    heartbeat: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    alarms: dict[str, OpenAlarm] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Thresholds:
    heartbeat_s: float = 60.0

    @property
    def silent_after_s(self) -> float:
        return 2 * self.heartbeat_s


def _source_parts(event: Mapping[str, Any]) -> tuple[str, str, str, str, str] | None:
    parts = str(event.get("source", "")).strip("/").split("/")
    if len(parts) != 5 or not all(parts):
        return None
    return parts[0], parts[1], parts[2], parts[3], parts[4]


class Fleet:
    """Gateways by id, updated one event at a time (events of a gateway in store order)."""

    def __init__(self) -> None:
        self.gateways: dict[str, Gateway] = {}
        self.applied = 0

    def apply(self, event: Mapping[str, Any], applied_at: float) -> None:
        """One validated CloudEvent (as the stream API serves it)."""
        place = _source_parts(event)
        if place is None:
            return
        district, street, community, gw_id, device = place
        try:
            at = min(parse_time(str(event["time"])), applied_at)
        except (KeyError, ValueError):
            at = applied_at
        gw = self.gateways.get(gw_id)
        if gw is None or (gw.district, gw.street, gw.community) != (district, street, community):
            old = gw
            gw = Gateway(gw_id, district, street, community)
            if old is not None:  # moved: keep what it reported, under its new place
                gw.devices, gw.alarms = old.devices, old.alarms
                gw.last_seen, gw.heartbeat, gw.heartbeat_at = (old.last_seen, old.heartbeat,
                                                               old.heartbeat_at)
            self.gateways[gw_id] = gw
        self.applied += 1
        gw.last_seen = max(gw.last_seen, at)
        type_ = str(event.get("type", ""))
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        if type_ == "gateway.heartbeat":
            gw.heartbeat = {k: data[k] for k in HEARTBEAT_FIELDS if k in data}
            gw.heartbeat_at = at
        if device != gw_id or not type_.startswith("gateway."):
            dev = gw.devices.setdefault(device, Device(device))
            if at >= dev.last_at:
                dev.last_type, dev.last_at = type_, at
            if type_ == "device.offline":
                dev.online, dev.offline_reason = False, str(data.get("reason", "")) or None
            elif type_ == "device.online":
                dev.online, dev.offline_reason = True, None
            elif dev.online is None:
                dev.online = True  # it sent something of its own
        state, alarm_id = data.get("state"), data.get("alarm_id")
        if isinstance(alarm_id, str) and state in ("raised", "cleared"):
            if state == "raised":
                if alarm_id not in gw.alarms:
                    declared = data.get("alarm_type") if type_ == "device.alarm" else None
                    gw.alarms[alarm_id] = OpenAlarm(
                        alarm_id, type_, device, str(event.get("severity", "")), at,
                        declared if isinstance(declared, str) else None)
            else:
                gw.alarms.pop(alarm_id, None)

    def status(self, gw: Gateway, now: float, t: Thresholds,
               unexplained_gaps: int) -> tuple[Status, list[str]]:
        """The colour and the reasons for it (codes the page translates)."""
        reasons: list[str] = []
        if now - gw.last_seen > t.silent_after_s:
            reasons.append("silent")
        backlog = gw.heartbeat.get("oldest_waiting_s")
        if isinstance(backlog, int | float) and backlog > t.heartbeat_s:
            reasons.append("backlog")
        if gw.heartbeat.get("disk_full") is True:
            reasons.append("disk_full")
        if unexplained_gaps:
            reasons.append("gaps")
        if any(d.online is False for d in gw.devices.values()):
            reasons.append("devices_offline")
        if "silent" in reasons:
            return "red", reasons
        return ("amber" if reasons else "green"), reasons

    def view(self, now: float, t: Thresholds, gaps: Mapping[str, tuple[int, int]],
             visible: Callable[[Gateway], bool],
             type_visible: Callable[[str], bool]) -> dict[str, Any]:
        """district → street → community → gateway → device, and the alarms across all.

        `gaps`: gateway -> (unexplained missing events, explained ones). `visible` keeps the
        gateways of the reader's areas; `type_visible` the event types it may see (alarms
        and a device's last event of another type are left out, not the device).
        """
        districts: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
        alarms: list[dict[str, Any]] = []
        counts = {"red": 0, "amber": 0, "green": 0}
        for gw in sorted(self.gateways.values(), key=lambda g: g.id):
            if not visible(gw):
                continue
            unexplained, explained = gaps.get(gw.id, (0, 0))
            status, reasons = self.status(gw, now, t, unexplained)
            counts[status] += 1
            gw_alarms = [a for a in gw.alarms.values() if type_visible(a.type)]
            for a in gw_alarms:
                alarms.append({"alarm_id": a.alarm_id, "type": a.type, "device": a.device,
                               "severity": a.severity, "since": iso(a.since), "gateway": gw.id,
                               "district": gw.district, "street": gw.street,
                               "community": gw.community,
                               **({"alarm_type": a.alarm_type} if a.alarm_type else {})})
            devices = [{"id": d.id, "online": d.online, "reason": d.offline_reason,
                        "last_type": d.last_type if type_visible(d.last_type) else None,
                        "last_at": iso(d.last_at) if type_visible(d.last_type) else None}
                       for d in sorted(gw.devices.values(), key=lambda d: d.id)]
            entry = {"id": gw.id, "status": status, "reasons": reasons,
                     "last_seen": iso(gw.last_seen),
                     "silent_s": round(max(0.0, now - gw.last_seen), 1),
                     "heartbeat_at": iso(gw.heartbeat_at), "heartbeat": gw.heartbeat,
                     "gaps": {"unexplained": unexplained, "explained": explained},
                     "devices_offline": sum(1 for d in gw.devices.values() if d.online is False),
                     "open_alarms": len(gw_alarms), "devices": devices}
            (districts.setdefault(gw.district, {}).setdefault(gw.street, {})
             .setdefault(gw.community, []).append(entry))
        alarms.sort(key=lambda a: (a["severity"] != "critical", a["since"]))
        tree = [{"code": d, "streets": [
                    {"code": s, "communities": [
                        {"code": c, "gateways": gws} for c, gws in sorted(comms.items())]}
                    for s, comms in sorted(streets.items())]}
                for d, streets in sorted(districts.items())]
        return {"generated_at": iso(now), "heartbeat_s": t.heartbeat_s,
                "silent_after_s": t.silent_after_s, "counts": counts, "districts": tree,
                "alarms": alarms}
