"""Events dropped before they got a seq, counted until a `gateway.data_loss` reports them.

The outbox accounts for what it evicts (`edge_agent.outbox._loss`); this is the same for what never
reached it: telemetry and records refused because the in-memory queue was full
(`queue_full`) or because the disk under the outbox was full (`disk_full`). Alarms are
never dropped here. Such events have no seq, so the report names counts and times by type,
not seq ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_agent.contract.envelope import Event


@dataclass(slots=True)
class Dropped:
    """One pending report: what was dropped for `reason` since `since` (unix time)."""

    reason: str
    since: float
    count: int = 0
    by_type: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, event: Event) -> None:
        self.count += 1
        entry = self.by_type.get(event.type)
        if entry is None:
            self.by_type[event.type] = {"count": 1, "first_time": event.time,
                                        "last_time": event.time}
            return
        entry["count"] += 1
        entry["first_time"] = min(entry["first_time"], event.time)
        entry["last_time"] = max(entry["last_time"], event.time)

    def data(self) -> dict[str, Any]:
        """The `data` of the gateway.data_loss event that reports it: every one of these
        events is known never delivered (`lost`), none was sent."""
        return {"reason": self.reason, "evicted": self.count, "lost": self.count,
                "unconfirmed": 0, "by_type": dict(sorted(self.by_type.items()))}
