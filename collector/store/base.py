"""What every store backend offers the collector and its CLI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from collector.model import EventRow, Rejected


class StoreError(RuntimeError):
    """A store cannot be opened or used; the message is meant for the operator."""


class StoreLost(StoreError):
    """The store is no longer the one opened (its file deleted or replaced): a commit may
    have gone where nobody will read it. Nothing of it may be acked; the collector stops
    (systemd restarts it, and it opens the store anew)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a payload came from: its MQTT topic and the gateway that topic names."""

    topic: str
    gateway: str | None


class Payload(NamedTuple):
    """One MQTT payload's share of a group commit: where it came from, the events
    validation accepted, and what it rejected."""

    origin: Origin
    accepted: Sequence[EventRow]
    rejected: Sequence[Rejected]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """`quarantined`: entries written; `dropped`: rejections not kept (rate, caps), counted.

    `diverted`: accepted events the store quarantined instead (an id already stored with
    other content: `conflicts` of them; or a value the transaction refused); the edge
    is acked for them as rejected.
    """

    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    dropped: int = 0
    conflicts: int = 0
    diverted: tuple[Rejected, ...] = ()


@dataclass(frozen=True, slots=True)
class Gap:
    """Missing seqs [from_seq, to_seq] of one stream; `explained` by a data_loss report."""

    gateway: str
    epoch: str
    from_seq: int
    to_seq: int
    explained: bool
    reason: str | None = None

    @property
    def size(self) -> int:
        return self.to_seq - self.from_seq + 1


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    id: int
    received_at: str
    topic: str
    gateway_from_topic: str | None
    reason: str
    raw: bytes
    raw_size: int
    event_id: str | None


@dataclass(frozen=True, slots=True)
class StreamInfo:
    gateway: str
    epoch: str
    first_seen: str
    last_seen: str
    high_seq: int
    received: int
    contiguous_through: int

    @property
    def missing(self) -> int:
        return self.high_seq - self.received


@dataclass(frozen=True, slots=True)
class DroppedCount:
    """Quarantine entries not kept (or expired) for one gateway ("" = none) and cause."""

    gateway: str
    cause: str
    rows: int
    bytes: int
    last_at: str


@dataclass(frozen=True, slots=True)
class StoreStats:
    events: int
    quarantined: int
    gateways: int
    last_received_at: str | None
    streams: list[StreamInfo] = field(default_factory=list)
    quarantine_bytes: int = 0
    dropped: list[DroppedCount] = field(default_factory=list)


class Store(Protocol):
    def open(self) -> None:
        """Create the schema if needed; idempotent."""

    def describe(self) -> str:
        """The store for a log line or a message (a path, a URL without password)."""

    def ingest_many(self, items: Sequence[Payload]) -> list[IngestResult]:
        """Insert several payloads' events idempotently, update watermarks and quarantine,
        all in ONE transaction (group commit); one result per payload, in order.

        When this returns, everything is durably committed; when it raises, nothing is.
        An event the transaction refuses (a value the backend cannot hold) fails neither
        its payload's other events nor the other payloads: they are inserted payload by
        payload, then event by event, and the refused one is quarantined. An id twice in
        the group is inserted once: the later copy is a duplicate (or a conflict). Each
        payload's rejections are quarantined under its own origin and bounds.
        """

    def ingest(self, origin: Origin, accepted: Sequence[EventRow],
               rejected: Sequence[Rejected]) -> IngestResult:
        """`ingest_many` of one payload."""

    def quarantine(self, origin: Origin, rejected: Sequence[Rejected]) -> int:
        """Store rejected payloads only (one transaction); returns the rows written."""

    def gaps(self, gateway: str | None = None) -> list[Gap]:
        """Missing seq ranges of every stream (or one gateway's), explained or not."""

    def quarantined(self, limit: int = 50) -> list[QuarantineEntry]:
        """Most recent quarantine entries first."""

    def expire_quarantine(self) -> int:
        """Delete entries older than the retention; returns how many went (counted)."""

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...
