"""Records passed from validation to the store: plain data, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

#: Column order of the `events` table (a public contract: collector/README.md).
EVENT_COLUMNS: tuple[str, ...] = (
    "id", "type", "source", "district", "street", "community", "gateway", "device",
    "time", "received_at", "epoch", "seq", "severity", "data",
)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One valid event, flattened to the `events` columns (`data` as compact JSON text)."""

    id: str
    type: str
    source: str
    district: str
    street: str
    community: str
    gateway: str
    device: str
    time: str
    epoch: str
    seq: int
    severity: str
    data: str

    def values(self, received_at: str) -> tuple[str | int, ...]:
        return (self.id, self.type, self.source, self.district, self.street, self.community,
                self.gateway, self.device, self.time, received_at, self.epoch, self.seq,
                self.severity, self.data)

    def envelope_json(self) -> bytes:
        """The event as the edge sent it (envelope v1), ASCII-escaped: always encodable."""
        return json.dumps({
            "specversion": "1.0", "id": self.id, "source": self.source, "type": self.type,
            "time": self.time, "subject": self.device, "datacontenttype": "application/json",
            "district": self.district, "street": self.street, "community": self.community,
            "gateway": self.gateway, "epoch": self.epoch, "seq": self.seq,
            "severity": self.severity, "data": json.loads(self.data),
        }, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A payload or one event of it that goes to quarantine.

    `epoch`/`seq` are set when the event carried a well-formed pair, so the ack can
    tell the edge to stop resending it.
    """

    reason: str
    raw: bytes
    event_id: str | None = None
    epoch: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What validation made of one MQTT payload."""

    accepted: list[EventRow] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
