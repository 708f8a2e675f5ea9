"""The status document (`/api/status`, schema status-v1) built from the agent's state.

Pure: it reads in-memory figures only (plus one cached `statvfs` for the disk). Nothing
secret is in the sources it reads (no config secrets, no credential hashes), and
driver texts pass through `reasons.scrub`.
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.config.models import GatewayConfig
from edge_agent.contract.envelope import Hierarchy, format_time
from edge_agent.outbox import OutboxThread
from edge_agent.pipeline import DeviceStatus, Pipeline
from edge_agent.status.activity import Activity, Entry, OpenAlarm, shown_data
from edge_agent.status.reasons import reason_code, scrub
from edge_agent.uplink import Uplink

SCHEMA_VERSION = 1
RECENT_SHOWN = 30
#: Open alarms listed in the document (critical first, newest first); `summary.open_alarms`
#: counts them all and `alarms_not_listed` says how many are left out. A fire panel with
#: 10,000 zones in alarm would otherwise make every refresh (each second on a stream)
#: megabytes.
ALARMS_LISTED = 200
STATE_RANK = {"error": 0, "offline": 1, "unknown": 2, "online": 3}


class AgentView(Protocol):
    """What the status page reads from the agent (edge_agent.agent.Agent has all of it)."""

    cfg: GatewayConfig
    hierarchy: Hierarchy
    outbox: OutboxThread
    pipeline: Pipeline
    uplink: Uplink
    activity: Activity
    started: float


def ts(value: float | None) -> str | None:
    return None if value is None else format_time(value)


@dataclass
class DiskGauge:
    """Disk usage of the filesystem holding `path`, refreshed at most every `ttl_s`."""

    path: Path
    ttl_s: float = 5.0
    _at: float = float("-inf")
    _value: dict[str, Any] | None = None

    def read(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._value is None or now - self._at > self.ttl_s:
            self._at = now
            try:
                usage = shutil.disk_usage(self.path)
                self._value = {"path": str(self.path), "total_bytes": usage.total,
                               "free_bytes": usage.free,
                               "used_pct": round(100 * usage.used / max(1, usage.total), 1)}
            except OSError:
                self._value = {"path": str(self.path), "total_bytes": None, "free_bytes": None,
                               "used_pct": None}
        return self._value


def build_status(view: AgentView, disk: DiskGauge, *, authenticated: bool,
                 login_available: bool = False, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    names = {d.id: d.name for d in view.cfg.devices}
    alarmed = view.activity.alarm_severity_by_device()
    devices = sorted((_device(s, names.get(s.id), alarmed.get(s.id))
                      for s in view.pipeline.devices.values()),
                     key=lambda d: (STATE_RANK.get(d["state"], 9), d["id"]))
    open_total = len(view.activity.open)
    alarms = [_alarm(a, names.get(a.device), authenticated)
              for a in view.activity.open_alarms(ALARMS_LISTED)]
    recent = [_entry(e, names.get(e.device), authenticated)
              for e in list(view.activity.recent)[::-1][:RECENT_SHOWN]]
    counts = {state: 0 for state in STATE_RANK}
    for d in devices:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": format_time(now),
        "gateway": _gateway(view, disk, now),
        "uplink": _uplink(view),
        "outbox": _outbox(view, now, authenticated),
        "pipeline": {"created": view.pipeline.counters.created,
                     "committed": view.pipeline.counters.committed,
                     "dropped": view.pipeline.counters.dropped,
                     "rejected": view.pipeline.counters.rejected,
                     "pending": view.pipeline.pending},
        "summary": {"devices": len(devices), **counts, "open_alarms": open_total},
        "alarms": alarms,
        "alarms_not_listed": open_total - len(alarms),
        "devices": devices,
        "recent": recent,
        "viewer": {"authenticated": authenticated, "login_available": login_available},
    }
    if authenticated:
        doc["snapshots"] = [_entry(e, names.get(e.device), True)
                            for e in list(view.activity.snapshots)[::-1]]
    return doc


def _gateway(view: AgentView, disk: DiskGauge, now: float) -> dict[str, Any]:
    gw = view.cfg.gateway
    return {"id": gw.id, "name": gw.name, "district": gw.district, "street": gw.street,
            "community": gw.community, "version": __version__,
            "python": platform.python_version(), "started_at": format_time(view.started),
            "uptime_s": round(max(0.0, now - view.started), 1), "disk": disk.read()}


def _uplink(view: AgentView) -> dict[str, Any]:
    s = view.uplink.status
    return {"connected": s.connected, "since": format_time(s.since), "broker": s.broker,
            "protocol": s.protocol or None, "last_ack_at": ts(s.last_ack_at),
            "batches_sent": s.batches_sent, "events_sent": s.events_sent,
            "events_acked": s.events_acked, "resends": s.resends,
            "last_error": scrub(s.last_error) or None}


def _outbox(view: AgentView, now: float, authenticated: bool) -> dict[str, Any]:
    s = view.outbox.stats()
    out: dict[str, Any] = {
        "events": s.events, "bytes": s.bytes, "max_bytes": view.cfg.outbox.max_bytes,
        "oldest_created_at": ts(s.oldest_created),
        "oldest_age_s": (None if s.oldest_created is None
                         else round(max(0.0, now - s.oldest_created), 1)),
        "evicted_total": s.evicted_total,
        "disk_full": view.pipeline.disk_full or not view.outbox.is_open,
        "disk_full_since": ts(view.pipeline.disk_full_since
                              if view.pipeline.disk_full else None)}
    if authenticated:  # an ack names the epoch: nobody on the LAN needs it to read the page
        out["epoch"] = s.epoch
    return out


def _device(s: DeviceStatus, name: str | None, alarm_severity: str | None
            ) -> dict[str, Any]:
    reason = scrub(s.reason)
    return {"id": s.id, "name": name, "driver": s.driver, "state": str(s.state),
            "alarm_severity": alarm_severity,
            "since": format_time(s.since), "reason": reason or None,
            "reason_code": reason_code(reason) if reason else None,
            "last_event_type": s.last_event_type, "last_event_at": ts(s.last_event_at),
            "last_data": _scrubbed(shown_data(s.last_data)) if s.last_data else None,
            "events": s.events, "poll_errors": s.poll_errors,
            "last_error": scrub(s.last_error) or None, "last_error_at": ts(s.last_error_at)}


def _scrubbed(data: dict[str, Any]) -> dict[str, Any]:
    """Event data as shown: texts through `reasons.scrub` too (a driver's reason may quote
    a URL), whatever the driver did."""
    return {k: scrub(v) if isinstance(v, str) else v for k, v in data.items()}


def _alarm(a: OpenAlarm, name: str | None, authenticated: bool) -> dict[str, Any]:
    return {"device": a.device, "device_name": name, "type": a.type, "alarm_id": a.alarm_id,
            "severity": a.severity, "raised_at": format_time(a.raised_at),
            "data": _scrubbed(a.data), "snapshot": a.snapshot if authenticated else None}


def _entry(e: Entry, name: str | None, authenticated: bool) -> dict[str, Any]:
    return {"id": e.id, "device": e.device, "device_name": name, "type": e.type,
            "severity": e.severity, "time": format_time(e.at), "data": _scrubbed(e.data),
            "snapshot": e.snapshot if authenticated else None}
