"""How far each subscription is behind: events after its cursor in its scope (counted
up to `LAG_CAP`, then shown as "at least"), and seconds since the first of them was
stored… approximated by its event time (the envelope's `time`), the only time every
store keeps. 0 and 0 when it is caught up. Synchronous (reads the store)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from collector.stream.filter import Filter
from collector.stream.reader import MAX_PAGE, Reader
from collector.webhooks.service import Subscription, Webhooks
from edge_agent.contract.envelope import parse_time

LAG_CAP = 10_000


@dataclass(frozen=True)
class Lag:
    subscription: Subscription
    paused: bool
    events_behind: int
    capped: bool
    seconds_behind: float
    dead_letters: int

    def as_json(self) -> dict[str, Any]:
        return {**self.subscription.public(), "paused": self.paused,
                "events_behind": self.events_behind, "events_behind_capped": self.capped,
                "seconds_behind": round(self.seconds_behind, 1),
                "dead_letters": self.dead_letters}


def lag_of(webhooks: Webhooks, reader: Reader, now: float | None = None) -> list[Lag]:
    now = time.time() if now is None else now
    pending = webhooks.pending_dead_letters()
    out = []
    for sub in webhooks.all():
        scope = webhooks.scope_of(sub.consumer)
        count, capped, seconds = 0, False, 0.0
        if scope is not None:
            flt, pos, first = Filter().narrowed(scope), sub.cursor, True
            while True:
                page = reader.read(pos, flt, MAX_PAGE)
                if first and page.events:
                    at = parse_time(json.loads(page.events[0][1])["time"]).timestamp()
                    seconds = max(0.0, now - at)
                first = first and not page.events
                count += len(page.events)
                pos = page.next
                if count >= LAG_CAP:
                    capped = True
                    break
                if not page.more:
                    break
        out.append(Lag(sub, scope is None, count, capped, seconds, pending.get(sub.name, 0)))
    return out
