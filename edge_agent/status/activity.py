"""What happened lately, for the status page: recent events and the alarms still open.

Fed by the pipeline with every event it mints (`Activity.record`); bounded in memory
whatever the devices do. Telemetry and heartbeats are left out of `recent` (the device
table shows each device's last reading).

Open alarms: what makes an event part of one is its kind in the catalog, not its
severity. The alarm-retention types (`smoke.alarm`, `camera.tamper`, ...) open an alarm
with `data.state == "raised"`, keyed by (device, type, alarm_id), and close it with
`data.state == "cleared"` under the same key, whatever severity either carries: the
engines send their clears with severity `info` (edge_agent/rules/engine.py, serial-line zones,
video health) and a raise may be configured down to `info`. `camera.motion` carries
raised/cleared too but is a record, not an alarm, so the page does not list it.

After a restart, the alarms the last run left open for a device are listed again when
its driver asks for them (`Pipeline.restored_alarms`, edge_agent.pipeline.open_alarms; `restore`):
the driver goes on with them under their old ids without a second raise, so without this
the page would say all is well while a detector is still in alarm. A driver that does
not ask (it raises anew) gets nothing listed. Their `raised_at` is read from the ULID
every engine ends an alarm_id with (the raise's time), their severity is the catalog's.
"""

from __future__ import annotations

import heapq
import re
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edge_agent.contract.envelope import ALARM_TYPES, CATALOG, Event, Retention, parse_time
from edge_agent.pipeline import MAX_OPEN
from edge_agent.pipeline import OpenAlarm as KeptAlarm

RECENT_MAX = 100
#: Open alarms kept for the page: as many as the pipeline keeps across restarts, so the
#: page's count is the true one (the status document lists only the first ones).
OPEN_ALARMS_MAX = MAX_OPEN
SNAPSHOTS_MAX = 24
#: A snapshot id: a ULID (Crockford base32, 26 characters).
SNAPSHOT_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
#: The ULID an alarm_id ends with (`<device>:<type>:<ULID>`, `<ULID>`, ...).
_ID_ULID = re.compile(r"(?:^|:)([0-9A-HJKMNP-TV-Z]{26})$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Keys never copied to the page (hashes of access credentials are not for display).
HIDDEN_KEYS = frozenset({"credential_hash", "snapshot"})
LEFT_OUT = frozenset({"gateway.heartbeat"})
#: Types listed as open alarms: raised/cleared with an alarm_id, and alarms by the catalog.
OPEN_ALARM_TYPES = frozenset(t for t in ALARM_TYPES if CATALOG[t].retention is Retention.ALARM)


@dataclass(frozen=True, slots=True)
class Entry:
    """One event as the page shows it."""

    id: str
    device: str
    type: str
    severity: str
    at: float
    data: dict[str, Any]
    snapshot: str | None = None


@dataclass(frozen=True, slots=True)
class OpenAlarm:
    device: str
    type: str
    alarm_id: str
    severity: str
    raised_at: float
    data: dict[str, Any]
    snapshot: str | None = None


def shown_data(data: dict[str, Any]) -> dict[str, Any]:
    """`data` without hidden keys and without nested values (the page shows scalars)."""
    return {k: v for k, v in data.items()
            if k not in HIDDEN_KEYS and isinstance(v, str | int | float | bool)}


def raised_time(alarm_id: str, now: float) -> float | None:
    """The raise's time from the ULID ending `alarm_id`; None without one or if it lies
    in the future."""
    match = _ID_ULID.search(alarm_id)
    if match is None:
        return None
    ms = 0
    for char in match.group(1)[:10]:
        ms = ms * 32 + _CROCKFORD.index(char)
    at = ms / 1000
    return at if at <= now + 60 else None


def snapshot_id(data: dict[str, Any]) -> str | None:
    """The snapshot id of a camera event (`data.snapshot.id`) when it is a valid ULID."""
    snap = data.get("snapshot")
    sid = snap.get("id") if isinstance(snap, dict) else None
    return sid if isinstance(sid, str) and SNAPSHOT_ID.match(sid) else None


#: open alarms are shown most severe first
_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def _rank(severity: str) -> int:
    return _SEVERITY_RANK.get(severity, 3)


class Activity:
    def __init__(self, *, recent_max: int = RECENT_MAX, open_max: int = OPEN_ALARMS_MAX,
                 snapshots_max: int = SNAPSHOTS_MAX) -> None:
        self.recent: deque[Entry] = deque(maxlen=recent_max)
        self.snapshots: deque[Entry] = deque(maxlen=snapshots_max)
        self.open: OrderedDict[tuple[str, str, str], OpenAlarm] = OrderedDict()
        self.open_max = open_max
        #: bumped on every change the page shows
        self.changes = 0

    def record(self, event: Event) -> None:
        """Take one minted event (called by Pipeline.emit); never raises for odd data."""
        if event.type in LEFT_OUT:
            return
        kind = CATALOG.get(event.type)
        if kind is not None and kind.retention is Retention.TELEMETRY:
            return
        at = parse_time(event.time).timestamp()
        snap = snapshot_id(event.data)
        entry = Entry(event.id, event.subject, event.type, str(event.severity), at,
                      shown_data(event.data), snap)
        self.recent.append(entry)
        if snap is not None:
            self.snapshots.append(entry)
        if event.type in OPEN_ALARM_TYPES:
            self._alarm(event, entry)
        self.changes += 1

    def _alarm(self, event: Event, entry: Entry) -> None:
        state, alarm_id = event.data.get("state"), event.data.get("alarm_id")
        if not isinstance(alarm_id, str):
            return
        key = (event.subject, event.type, alarm_id)
        if state == "raised":
            self.open[key] = OpenAlarm(event.subject, event.type, alarm_id, entry.severity,
                                       entry.at, entry.data, entry.snapshot)
            self.open.move_to_end(key)
            while len(self.open) > self.open_max:
                self.open.popitem(last=False)
        elif state == "cleared":
            self.open.pop(key, None)

    def restore(self, device: str, alarms: Iterable[KeptAlarm]) -> None:
        """List again the alarms a driver of `device` goes on with after a restart."""
        now = time.time()
        for alarm in alarms:
            key = (device, alarm.type, alarm.alarm_id)
            if alarm.type not in OPEN_ALARM_TYPES or key in self.open:
                continue
            data = shown_data({"state": "raised", "alarm_id": alarm.alarm_id, **alarm.data})
            self.open[key] = OpenAlarm(device, alarm.type, alarm.alarm_id,
                                       str(CATALOG[alarm.type].severity),
                                       raised_time(alarm.alarm_id, now) or now, data)
            while len(self.open) > self.open_max:
                self.open.popitem(last=False)
            self.changes += 1

    def alarm_severity_by_device(self) -> dict[str, str]:
        """The most severe open alarm of each device with one, listed or not."""
        worst: dict[str, str] = {}
        for a in self.open.values():
            now = worst.get(a.device)
            if now is None or _rank(a.severity) < _rank(now):
                worst[a.device] = a.severity
        return worst

    def open_alarms(self, limit: int | None = None) -> list[OpenAlarm]:
        """Open alarms, critical first, then newest first; the first `limit` of them
        (all with None)."""
        ordered = enumerate(self.open.values())  # raised order breaks ties of one millisecond

        def order(ia: tuple[int, OpenAlarm]) -> tuple[int, float, int]:
            return _rank(ia[1].severity), -ia[1].raised_at, -ia[0]

        chosen = (sorted(ordered, key=order) if limit is None
                  else heapq.nsmallest(limit, ordered, key=order))
        return [a for _, a in chosen]
