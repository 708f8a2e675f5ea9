"""Events waiting in memory for their outbox commit (before they have a seq).

One FIFO, so commits keep the order events were made in. It is bounded for telemetry and
records (`max_pending`: beyond it they are refused and the caller counts them), never
for alarms: an alarm is always queued, and while the disk is full the alarms can be
taken out ahead of the rest (`take_alarms`) so they are not stuck behind telemetry that
cannot be written. Alarms are few (a raise and a clear per incident), so the alarm part
stays small even when the rest is full.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from edge_agent.contract.envelope import Event, Retention


def is_alarm(event: Event) -> bool:
    return event.retention is Retention.ALARM


class PendingQueue:
    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._events: deque[Event] = deque()
        self._alarms = 0
        #: set while anything is queued
        self.ready = asyncio.Event()
        #: set when an alarm is queued (ends a commit's linger)
        self.urgent = asyncio.Event()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def alarms(self) -> int:
        return self._alarms

    @property
    def full(self) -> bool:
        """No room for telemetry or records (alarms are always taken)."""
        return len(self._events) - self._alarms >= self.max_pending

    def put(self, event: Event) -> bool:
        """Queue `event`; False (not queued) for a non-alarm when the queue is full."""
        if is_alarm(event):
            self._alarms += 1
            self.urgent.set()
        elif self.full:
            return False
        self._events.append(event)
        self.ready.set()
        return True

    def put_back(self, events: Iterable[Event]) -> None:
        """Return events taken but not committed to the front, in their order (never
        refused: they were accepted once)."""
        back = list(events)
        self._events.extendleft(reversed(back))
        self._alarms += sum(1 for e in back if is_alarm(e))
        if back:
            self.ready.set()

    def take(self, limit: int) -> list[Event]:
        """Up to `limit` events from the front."""
        n = min(limit, len(self._events))
        batch = [self._events.popleft() for _ in range(n)]
        self._alarms -= sum(1 for e in batch if is_alarm(e))
        self._settle()
        return batch

    def take_alarms(self) -> list[Event]:
        """Every queued alarm, in order; the rest stays queued in its order."""
        if not self._alarms:
            return []
        alarms = [e for e in self._events if is_alarm(e)]
        self._events = deque(e for e in self._events if not is_alarm(e))
        self._alarms = 0
        self._settle()
        return alarms

    def take_all(self) -> list[Event]:
        return self.take(len(self._events))

    def _settle(self) -> None:
        if not self._events:
            self.ready.clear()
        if not self._alarms:
            self.urgent.clear()
