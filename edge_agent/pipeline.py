"""From driver observations to committed outbox rows.

Drivers call `Pipeline.emit()` / `Pipeline.device_state()` (the EventSink); the
pipeline mints envelope-v1 events, turns device state transitions into
`device.online` / `device.offline`, and its `run()` task commits what is queued to
the outbox in batches (one transaction per batch) and wakes the uplink.
Durability starts at that commit: an event is "created" once it has a seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config.models import ChatterConfig, SnapshotsConfig
from edge_agent.driver_api import DeviceState
from edge_agent.envelope import (
    Event,
    Hierarchy,
    Retention,
    Severity,
    UnknownEventType,
    new_event,
)
from edge_agent.logs import get_logger
from edge_agent.open_alarms import OpenAlarm, OpenAlarms
from edge_agent.outbox import Appended
from edge_agent.outbox_thread import OutboxThread

log = get_logger("edge_agent.pipeline")

#: Events waiting in memory for their commit; beyond this a driver's events are dropped
#: (and counted) rather than letting memory grow without bound while the disk stalls.
MAX_PENDING = 100_000


@dataclass
class DeviceStatus:
    """What the agent knows about one device (read by heartbeat and the status page)."""

    id: str
    driver: str
    state: DeviceState = DeviceState.UNKNOWN
    reason: str = ""
    since: float = field(default_factory=time.time)
    last_event_type: str | None = None
    last_event_at: float | None = None
    last_data: dict[str, Any] | None = None
    events: int = 0
    poll_errors: int = 0
    last_error: str = ""
    last_error_at: float | None = None


def transition_event(previous: DeviceState, state: DeviceState, reason: str,
                     offline_s: float) -> tuple[str, dict[str, Any]] | None:
    """The event a device state change means: `device.offline` on entering offline or
    error, `device.online` on leaving them; None otherwise (the agent's one rule)."""
    if state is DeviceState.ONLINE and previous in (DeviceState.OFFLINE, DeviceState.ERROR):
        return "device.online", {"offline_s": round(max(0.0, offline_s), 3),
                                 "reason": reason or "answers again"}
    if state in (DeviceState.OFFLINE, DeviceState.ERROR) and state != previous:
        return "device.offline", {"reason": reason or str(state)}
    return None


@dataclass
class PipelineCounters:
    created: int = 0
    committed: int = 0
    dropped: int = 0
    rejected: int = 0
    #: alarm raises and clears counted by chatter control and not sent (edge_agent.chatter)
    alarm_toggles_suppressed: int = 0


class Pipeline:
    #: Called with every event minted (the status page's edge_agent.activity.Activity.record).
    on_event: Callable[[Event], None] | None = None
    #: The gateway's `snapshots:` section, read by camera drivers (drivers/onvif/driver.py).
    snapshots: SnapshotsConfig | None = None
    #: Alarms open across restarts (edge_agent.open_alarms); None: not kept.
    open_alarms: OpenAlarms | None = None
    #: The gateway's `alarm_chatter`, read by drivers (edge_agent.chatter.chatter_policy).
    alarm_chatter: ChatterConfig | None = None
    #: Called with what a driver takes back (the status page's Activity.restore).
    on_restored: Callable[[str, list[OpenAlarm]], None] | None = None

    def __init__(
        self,
        hierarchy: Hierarchy,
        outbox: OutboxThread,
        *,
        commit_batch_max: int = 500,
        commit_linger_s: float = 0.02,
        on_commit: Callable[[], None] = lambda: None,
        on_rows: Callable[[Appended], None] | None = None,
        credential_salt: bytes = b"",
    ) -> None:
        self.hierarchy = hierarchy
        self.outbox = outbox
        self.commit_batch_max = commit_batch_max
        self.commit_linger_s = commit_linger_s
        self.on_commit = on_commit
        #: given the rows of each commit (the uplink sends them without reading them back)
        self.on_rows = on_rows
        #: read by drivers (driver_api.credential_salt) to hash access credentials
        self.credential_salt = credential_salt
        self.devices: dict[str, DeviceStatus] = {}
        self.counters = PipelineCounters()
        self._queue: asyncio.Queue[Event] = asyncio.Queue(MAX_PENDING)
        #: set when an alarm is queued: it ends the linger, alarms are committed at once
        self._urgent = asyncio.Event()

    def register_device(self, device: str, driver: str) -> None:
        self.devices.setdefault(device, DeviceStatus(device, driver))

    # ------------------------------------------------------------------ EventSink

    def emit(
        self,
        device: str,
        type_: str,
        data: dict[str, Any],
        *,
        severity: Severity | None = None,
        observed_at: float | None = None,
    ) -> None:
        try:
            event = new_event(self.hierarchy, device, type_, data,
                              severity=severity, observed_at=observed_at)
        except (UnknownEventType, ValueError) as exc:
            self.counters.rejected += 1
            log.error("event_rejected", device=device, type=type_, error=str(exc))
            return
        self._enqueue(event)
        if self.open_alarms is not None:
            self.open_alarms.record(event)
        if self.on_event is not None:
            self.on_event(event)
        status = self.devices.get(device)
        if status is not None:
            status.events += 1
            status.last_event_type, status.last_event_at = type_, time.time()
            status.last_data = data

    def device_state(self, device: str, state: DeviceState, reason: str = "") -> None:
        status = self.devices.setdefault(device, DeviceStatus(device, "?"))
        previous, since = status.state, status.since
        if state == previous:
            status.reason = reason
            return
        now = time.time()
        status.state, status.reason, status.since = state, reason, now
        log.info("device_state", device=device, state=str(state), previous=str(previous),
                 reason=reason)
        event = transition_event(previous, state, reason, now - since)
        if event is not None:
            self.emit(device, *event)

    def restored_alarms(self, device: str) -> list[OpenAlarm]:
        """driver_api.restored_alarms: what was open for `device` when the agent stopped."""
        alarms = self.open_alarms.claim(device) if self.open_alarms is not None else []
        if alarms and self.on_restored is not None:
            self.on_restored(device, alarms)
        return alarms

    def chatter_toggles(self, device: str, suppressed: int) -> None:
        """Alarm toggles chatter control counted instead of sending (heartbeat)."""
        self.counters.alarm_toggles_suppressed += suppressed

    def poll_error(self, device: str, reason: str) -> None:
        """One failed poll of `device` (driver_api.report_poll_error); counted, not an event."""
        status = self.devices.setdefault(device, DeviceStatus(device, "?"))
        status.poll_errors += 1
        status.last_error, status.last_error_at = reason, time.time()

    # ------------------------------------------------------------------ committing

    def _enqueue(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
            self.counters.created += 1
            if event.retention is Retention.ALARM:
                self._urgent.set()
        except asyncio.QueueFull:
            self.counters.dropped += 1
            if self.counters.dropped in (1, 10, 100) or self.counters.dropped % 1000 == 0:
                log.error("pending_events_dropped", dropped=self.counters.dropped,
                          hint="the outbox cannot keep up; check disk health")

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Commit queued events in batches until cancelled; flush what is left on the way out."""
        try:
            while True:
                first = await self._queue.get()
                if (self.commit_linger_s and not self._urgent.is_set()
                        and self._queue.qsize() < self.commit_batch_max):
                    # Let a burst gather: one commit (fsync) and one uplink round for many
                    # events costs far less CPU than one per event, for a few tens of ms of
                    # latency. An alarm queued meanwhile ends the wait.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.commit_linger_s):
                            await self._urgent.wait()
                self._urgent.clear()
                await self._commit([first, *self._take(self.commit_batch_max - 1)])
        finally:
            await asyncio.shield(self.flush())

    def _take(self, limit: int) -> list[Event]:
        batch: list[Event] = []
        while len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return batch

    async def flush(self) -> None:
        while batch := self._take(self.commit_batch_max):
            await self._commit(batch)

    async def _commit(self, batch: list[Event]) -> None:
        while True:
            try:
                appended = await self.outbox.append_rows(batch)
                break
            except Exception as exc:
                log.error("outbox_append_failed", events=len(batch), error=str(exc),
                          hint="events are kept in memory and retried; check the disk")
                await asyncio.sleep(1.0)
        self.counters.committed += len(batch)
        if self.on_rows is not None:
            self.on_rows(appended)
        self.on_commit()
