"""Event envelope v1: the one event model both the edge and the collector use.

CloudEvents 1.0 in structured JSON mode, with the extension attributes
`gateway`, `community`, `street`, `district`, `epoch`, `seq` and `severity`
(docs/events.md). The published JSON Schema (`schemas/event-v1.schema.json`) is the
contract; `tests/test_envelope.py` checks that this module and the schema agree.

An event is minted by `new_event()` at the edge without `epoch`/`seq`; the
outbox stamps those when it commits the event (`Event.stamped`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SPECVERSION: Literal["1.0"] = "1.0"
ENVELOPE_VERSION = 1
DATACONTENTTYPE: Literal["application/json"] = "application/json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Retention(IntEnum):
    """Eviction class in a full outbox: lower is evicted first, ALARM never."""

    TELEMETRY = 0
    RECORD = 1
    ALARM = 2


@dataclass(frozen=True, slots=True)
class EventKind:
    type: str
    severity: Severity
    retention: Retention
    summary: str


def _k(type_: str, severity: Severity, retention: Retention, summary: str) -> EventKind:
    return EventKind(type_, severity, retention, summary)


_S, _R = Severity, Retention

#: Catalog v1. Extend, never repurpose. Data fields and units: docs/events.md.
CATALOG: dict[str, EventKind] = {
    k.type: k
    for k in (
        _k("gate.state", _S.INFO, _R.RECORD, "door/lock state changed"),
        _k("gate.access", _S.INFO, _R.RECORD, "access granted or denied (credential hashed)"),
        _k("gate.forced_open", _S.CRITICAL, _R.ALARM, "door opened without access"),
        _k("gate.held_open", _S.WARNING, _R.ALARM, "door held open too long"),
        _k("smoke.alarm", _S.CRITICAL, _R.ALARM, "smoke detector in alarm"),
        _k("smoke.fault", _S.WARNING, _R.ALARM, "smoke detector fault"),
        _k("smoke.reading", _S.INFO, _R.TELEMETRY, "smoke density, temperature, battery"),
        _k("water.leak", _S.CRITICAL, _R.ALARM, "water leak detected"),
        _k("water.level", _S.INFO, _R.TELEMETRY, "water level"),
        _k("water.pressure", _S.INFO, _R.TELEMETRY, "water pressure"),
        _k("camera.motion", _S.INFO, _R.RECORD, "motion detected by a camera"),
        _k("camera.tamper", _S.WARNING, _R.ALARM, "camera covered, moved or blurred"),
        _k("camera.video_loss", _S.WARNING, _R.ALARM, "no usable video from a camera"),
        _k("camera.health", _S.INFO, _R.TELEMETRY, "video frame rate, resolution, frame age"),
        _k("camera.intrusion", _S.WARNING, _R.ALARM, "object inside a camera's guarded field"),
        _k("camera.line_crossing", _S.INFO, _R.RECORD, "object crossed a camera's virtual line"),
        _k("camera.events_lost", _S.WARNING, _R.ALARM,
           "camera's event channel lapsed (reboot, network, quiet)"),
        _k("camera.video_worker_restarted", _S.WARNING, _R.RECORD,
           "a camera worker process died or wedged and was restarted"),
        _k("device.online", _S.INFO, _R.RECORD, "device answers again"),
        _k("device.offline", _S.WARNING, _R.RECORD, "device stopped answering"),
        _k("gateway.heartbeat", _S.INFO, _R.TELEMETRY, "gateway alive, with outbox figures"),
        _k("gateway.data_loss", _S.WARNING, _R.ALARM, "events the outbox had to evict"),
        _k("gateway.driver_installed", _S.INFO, _R.RECORD, "a signed driver bundle installed"),
        _k("gateway.driver_rolled_back", _S.WARNING, _R.RECORD,
           "a driver went back to its previous version"),
        _k("gateway.driver_refused", _S.WARNING, _R.RECORD, "a driver bundle was refused"),
        _k("gate.chattering", _S.WARNING, _R.ALARM, "a door alarm toggles too often"),
        _k("smoke.chattering", _S.WARNING, _R.ALARM, "a smoke alarm or zone toggles too often"),
        _k("water.chattering", _S.WARNING, _R.ALARM, "a water alarm toggles too often"),
        _k("camera.chattering", _S.WARNING, _R.ALARM, "a camera alarm toggles too often"),
        _k("sensor.reading", _S.INFO, _R.TELEMETRY,
           "named quantities with units from the fixed list, of any device kind"),
        _k("device.alarm", _S.WARNING, _R.ALARM,
           "an alarm a device profile declares (data.alarm_type, e.g. elevator.fault)"),
        _k("device.chattering", _S.WARNING, _R.ALARM, "a declared device alarm toggles too often"),
    )
}

#: Alarm types carry data.state = raised|cleared and data.alarm_id.
ALARM_TYPES = frozenset(t for t, k in CATALOG.items() if k.retention is Retention.ALARM
                        and t != "gateway.data_loss") | {"camera.motion"}

#: `<kind>.chattering`: raised by the agent's chatter control (edge_agent.rules.chatter) for an
#: alarm of that kind that toggles too often; never configured as a rule's or zone's type.
CHATTER_TYPES = frozenset(t for t in CATALOG if t.endswith(".chattering"))


def chatter_type(alarm_type: str) -> str:
    """The chattering alarm reported for `alarm_type` (`smoke.alarm` -> `smoke.chattering`)."""
    return alarm_type.split(".", 1)[0] + ".chattering"


# --------------------------------------------------------------------------- ULID

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def encode_ulid(ms: int, rand: int) -> str:
    """The 26-character Crockford base32 ULID of a 48-bit time (ms) and 80 random bits."""
    value = (ms << 80) | rand
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


class _UlidFactory:
    """Monotonic ULIDs: within one millisecond the random part is incremented."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def __call__(self, ms: int | None = None) -> str:
        now = int(time.time() * 1000) if ms is None else ms
        with self._lock:
            if now <= self._last_ms:
                now = self._last_ms
                rand = self._last_rand + 1
                if rand >= 1 << 80:  # 2^80 ids in one ms: wait for the clock
                    now, rand = self._last_ms + 1, int.from_bytes(os.urandom(10), "big")
            else:
                rand = int.from_bytes(os.urandom(10), "big")
            self._last_ms, self._last_rand = now, rand
        return encode_ulid(now, rand)


new_ulid = _UlidFactory()


def format_time(ts: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-28T04:41:46.123Z."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --------------------------------------------------------------------------- model


class Hierarchy(BaseModel):
    """Where a gateway sits: admin codes copied into every event it mints."""

    model_config = ConfigDict(frozen=True)

    district: str
    street: str
    community: str
    gateway: str

    def source(self, device: str) -> str:
        return f"/{self.district}/{self.street}/{self.community}/{self.gateway}/{device}"


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = SPECVERSION
    id: str
    source: str
    type: str
    time: str
    subject: str
    datacontenttype: Literal["application/json"] = DATACONTENTTYPE
    district: str
    street: str
    community: str
    gateway: str
    epoch: str | None = None
    seq: int | None = Field(default=None, ge=1)
    severity: Severity
    data: dict[str, Any]

    @property
    def retention(self) -> Retention:
        kind = CATALOG.get(self.type)
        return kind.retention if kind else Retention.TELEMETRY

    def stamped(self, epoch: str, seq: int) -> Event:
        return self.model_copy(update={"epoch": epoch, "seq": seq})

    def to_json(self) -> str:
        """Compact JSON, keys in envelope order, without unset epoch/seq."""
        body = self.model_dump(mode="json", exclude_none=True)
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


class UnknownEventType(ValueError):
    pass


def new_event(
    hierarchy: Hierarchy,
    device: str,
    type_: str,
    data: dict[str, Any],
    *,
    severity: Severity | None = None,
    observed_at: float | None = None,
) -> Event:
    """Mint an event at the edge: ULID id, observation time, catalog severity."""
    kind = CATALOG.get(type_)
    if kind is None:
        raise UnknownEventType(f"{type_!r} is not in catalog v1; see docs/events.md")
    ts = time.time() if observed_at is None else observed_at
    return Event(
        id=new_ulid(int(ts * 1000)),
        source=hierarchy.source(device),
        type=type_,
        time=format_time(ts),
        subject=device,
        district=hierarchy.district,
        street=hierarchy.street,
        community=hierarchy.community,
        gateway=hierarchy.gateway,
        severity=severity or kind.severity,
        data=data,
    )


def schema_text() -> str:
    """The published JSON Schema of envelope v1."""
    schemas = resources.files("edge_agent.contract.schemas")
    return schemas.joinpath("event-v1.schema.json").read_text("utf-8")


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded
