"""What both store backends say about one event row: its content hash, and the
quarantine entries for a conflicting resend and for an event the store refused."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from collector.model import EventRow, Rejected
from edge_agent.contract.envelope import format_time


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (database errors span several)."""
    return " ".join(str(exc).split())


def content_hash(values: Sequence[Any]) -> str:
    """sha256 of an event's content: every column but received_at, `data` (the last)
    canonical; a timestamp column as the envelope writes it, so both backends agree."""
    *head, data = values
    head = [format_time(v.timestamp()) if isinstance(v, datetime) else v for v in head]
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        parsed = data
    canonical = json.dumps([*head, parsed], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def conflict_entry(row: EventRow, stored: str, received: str) -> Rejected:
    """The quarantine entry of an id resent with other content (the stored one is kept)."""
    return Rejected(f"event id {row.id}: conflict: this id is stored with other content "
                    f"(stored sha256:{stored}, received sha256:{received}); the stored event "
                    "is kept", row.envelope_json(), row.id, row.epoch, row.seq)


def refused_entry(row: EventRow, exc: Exception) -> Rejected:
    """The quarantine entry of an event the store refused inside the batch transaction."""
    return Rejected(f"event id {row.id}: the store refused it ({type(exc).__name__}: "
                    f"{one_line(exc)})", row.envelope_json(), row.id, row.epoch, row.seq)
