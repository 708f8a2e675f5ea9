"""From driver observations to committed outbox rows.

Drivers call `Pipeline.emit()` / `Pipeline.device_state()` (the EventSink); the
pipeline mints envelope-v1 events, turns device state transitions into
`device.online` / `device.offline`, and its `run()` task commits what is queued to
the outbox in batches (one transaction per batch) and wakes the uplink.
Durability starts at that commit: an event is "created" once it has a seq.
`run()` also writes the open alarms' changes (`open_alarms`, at most once per
`SAVE_INTERVAL_S`; `flush()` at a stop writes the last ones).
`run()` calls `beat` at least every `contract.watchdog.BEAT_S` while it is alive, idle
or not, and on every commit attempt (systemd's watchdog: `contract.watchdog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config.models import ChatterConfig, SnapshotsConfig
from edge_agent.contract.backoff import Backoff
from edge_agent.contract.envelope import (
    Event,
    Hierarchy,
    Severity,
    UnknownEventType,
    new_event,
)
from edge_agent.contract.logs import get_logger
from edge_agent.contract.watchdog import BEAT_S, no_beat
from edge_agent.outbox import Appended, OutboxFullDiskError, OutboxThread
from edge_agent.pipeline.dropped import Dropped
from edge_agent.pipeline.open_alarms import OpenAlarm, OpenAlarms
from edge_agent.pipeline.pending import PendingQueue, is_alarm
from edge_agent.sdk.api import DeviceState, EventSink

log = get_logger("edge_agent.pipeline.core")

#: Events waiting in memory for their commit; beyond this a driver's telemetry and records
#: are dropped (counted and reported by a gateway.data_loss) rather than letting memory grow
#: without bound while the disk stalls. Alarms are never dropped (edge_agent.pipeline.pending).
#: A waiting event costs ~1.7 KB (bench/overload.py): 20,000 is ~35 MiB, 40 s at 500
#: events/s, well inside the unit's MemoryMax=256M (100,000 took the agent past 210 MiB).
MAX_PENDING = 20_000
#: Bound of the wait between attempts to commit while the outbox fails (disk full, I/O
#: errors); the wait itself is drawn under the one back-off policy (`contract.backoff`).
COMMIT_RETRY_S = 1.0
#: A report of dropped events is queued when the queue is half empty again, or this long
#: after the first drop while the flood goes on.
DROPPED_REPORT_S = 60.0
#: How long after the last commit refused for lack of space the disk still counts as full
#: (a full disk is usually full again soon: the status says so until it stays quiet).
DISK_FULL_HOLD_S = 30.0
#: On SIGTERM, how long failing commits are retried before what is left is given up
#: (and counted): well inside systemd's TimeoutStopSec=30 (systemd/edge-agent.service).
STOP_BUDGET_S = 15.0


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


#: The states in which a device is down: moving between them is no new outage.
DOWN_STATES = frozenset({DeviceState.OFFLINE, DeviceState.ERROR})


def transition_event(previous: DeviceState, state: DeviceState, reason: str,
                     offline_s: float) -> tuple[str, dict[str, Any]] | None:
    """The event a device state change means: `device.offline` on going down (offline or
    error), `device.online` on coming back up; None otherwise, also between the two down
    states (one outage is one offline/online pair; the page shows the newest reason)."""
    if state is DeviceState.ONLINE and previous in DOWN_STATES:
        return "device.online", {"offline_s": round(max(0.0, offline_s), 3),
                                 "reason": reason or "answers again"}
    if state in DOWN_STATES and previous not in DOWN_STATES:
        return "device.offline", {"reason": reason or str(state)}
    return None


@dataclass
class PipelineCounters:
    created: int = 0
    committed: int = 0
    dropped: int = 0
    rejected: int = 0
    #: alarm raises and clears counted by chatter control and not sent (edge_agent.rules.chatter)
    alarm_toggles_suppressed: int = 0


class Pipeline:
    #: Called with every event minted (the status page's Activity.record).
    on_event: Callable[[Event], None] | None = None
    #: The gateway's `snapshots:` section, read by camera drivers (drivers/onvif/driver.py).
    snapshots: SnapshotsConfig | None = None
    #: Alarms open across restarts (edge_agent.pipeline.open_alarms); None: not kept.
    open_alarms: OpenAlarms | None = None
    #: The gateway's `alarm_chatter`, read by drivers (edge_agent.rules.chatter.chatter_policy).
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
        max_pending: int | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self.outbox = outbox
        self.commit_batch_max = commit_batch_max
        self.commit_linger_s = commit_linger_s
        self.on_commit = on_commit
        #: given the rows of each commit (the uplink sends them without reading them back)
        self.on_rows = on_rows
        #: read by drivers (EventSink.credential_salt) to hash access credentials
        self.credential_salt = credential_salt
        self.devices: dict[str, DeviceStatus] = {}
        self.counters = PipelineCounters()
        self._queue = PendingQueue(MAX_PENDING if max_pending is None else max_pending)
        #: pending reports of events dropped before they got a seq, by reason
        self._dropped: dict[str, Dropped] = {}
        #: dropped events already named in a queued gateway.data_loss
        self.dropped_reported = 0
        #: when (unix time) the outbox first met the full disk of the current episode
        self.disk_full_since: float | None = None
        self._disk_full_last = -math.inf  # monotonic time of the last commit refused
        #: events given up at shutdown (commits kept failing), by retention
        self.not_kept: dict[str, int] = {}
        self._stop_at: float | None = None
        self._committing: asyncio.Future[None] | None = None
        self._reclaimed = False  # the WAL was reclaimed for the batch being retried
        #: waits between commits the outbox refused (bounded by COMMIT_RETRY_S)
        self._commit_backoff = Backoff(COMMIT_RETRY_S, COMMIT_RETRY_S)
        self._reserve_released = False
        self._reserve_tried_at = -math.inf
        #: called in the run loop, idle or not (the agent's watchdog: contract.watchdog)
        self.beat: Callable[[], None] = no_beat

    def register_device(self, device: str, driver: str) -> None:
        self.devices.setdefault(device, DeviceStatus(device, driver))

    # ------------------------------------------------------------------ EventSink
    # (the whole of `edge_agent.sdk.api.EventSink`, checked by mypy: `_SINK` below)

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
        still_down = state in DOWN_STATES and previous in DOWN_STATES
        status.state, status.reason = state, reason
        if not still_down:  # the outage's start stays the start (device.online's offline_s)
            status.since = now
        log.info("device_state", device=device, state=str(state), previous=str(previous),
                 reason=reason)
        event = transition_event(previous, state, reason, now - since)
        if event is not None:
            self.emit(device, *event)

    def restored_alarms(self, device: str) -> list[OpenAlarm]:
        """EventSink.restored_alarms: what was open for `device` when the agent stopped."""
        alarms = self.open_alarms.claim(device) if self.open_alarms is not None else []
        if alarms and self.on_restored is not None:
            self.on_restored(device, alarms)
        return alarms

    def chatter_toggles(self, device: str, suppressed: int) -> None:
        """Alarm toggles chatter control counted instead of sending (heartbeat)."""
        self.counters.alarm_toggles_suppressed += suppressed

    def poll_error(self, device: str, reason: str) -> None:
        """One failed poll of `device` (EventSink.poll_error); counted, not an event."""
        status = self.devices.setdefault(device, DeviceStatus(device, "?"))
        status.poll_errors += 1
        status.last_error, status.last_error_at = reason, time.time()

    # ------------------------------------------------------------------ committing

    def _enqueue(self, event: Event) -> None:
        if self._queue.put(event):
            self.counters.created += 1
            return
        # Refused before it got a seq: counted, and reported like an eviction.
        self.counters.dropped += 1
        reason = "disk_full" if self.disk_full else "queue_full"
        report = self._dropped.get(reason)
        if report is None:
            report = self._dropped[reason] = Dropped(reason, time.time())
            log.error("pending_events_dropped", reason=reason, type=event.type,
                      dropped_total=self.counters.dropped, max_pending=self._queue.max_pending,
                      hint="telemetry and records are dropped while the outbox cannot keep "
                           "up (alarms never are); a gateway.data_loss reports them")
        report.add(event)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def request_stop(self, within_s: float = STOP_BUDGET_S) -> None:
        """Shutting down: commits that fail stop being retried `within_s` from now, and
        what could not be kept is counted in `not_kept` (logged by the agent)."""
        deadline = time.monotonic() + within_s
        if self._stop_at is None or deadline < self._stop_at:
            self._stop_at = deadline

    async def run(self) -> None:
        """Commit queued events in batches until cancelled; flush what is left on the way out."""
        try:
            while True:
                self.beat()
                idle_s = BEAT_S
                if self.open_alarms is not None:
                    # Alarm changes are written at most once per SAVE_INTERVAL_S, here.
                    self.open_alarms.save_if_due()
                    due = self.open_alarms.save_in()
                    idle_s = BEAT_S if due is None else min(BEAT_S, due)
                if not self._queue.ready.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(idle_s):  # idle: still beat
                            await self._queue.ready.wait()
                    continue
                if (self.commit_linger_s and not self._queue.urgent.is_set()
                        and len(self._queue) < self.commit_batch_max):
                    # Let a burst gather: one commit (fsync) and one uplink round for many
                    # events costs far less CPU than one per event, for a few tens of ms of
                    # latency. An alarm queued meanwhile ends the wait.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.commit_linger_s):
                            await self._queue.urgent.wait()
                batch = self._queue.take(self.commit_batch_max)
                if batch:
                    # A batch being committed is never lost to a cancel: on the way out it
                    # is waited for (its append may be under way on the outbox thread).
                    self._committing = asyncio.ensure_future(self._commit(batch))
                    await asyncio.shield(self._committing)
                    self._committing = None
        except asyncio.CancelledError:
            self.request_stop()  # shutting down: failing commits are not retried forever
            raise
        finally:
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        """Commit what is queued, and write the open alarms' last changes (even if a
        commit fails: they were recorded when the events were minted)."""
        try:
            if self._committing is not None:
                with contextlib.suppress(Exception):
                    await self._committing
                self._committing = None
            while batch := self._queue.take(self.commit_batch_max):
                await self._commit(batch)
            self._report_dropped(force=True)
            while batch := self._queue.take(self.commit_batch_max):
                await self._commit(batch)
        finally:
            if self.open_alarms is not None:
                self.open_alarms.save()  # a clean stop writes the last changes

    async def _commit(self, batch: list[Event]) -> None:
        """Commit `batch`, retrying at most a second apart (`_retry_wait`) while the outbox
        fails. While the disk is full, alarms go first: they are committed on their own (with
        the outbox's reserve released for them) and the rest goes back to wait in the queue."""
        while batch:
            self.beat()
            try:
                appended = await self.outbox.append_rows(batch)
            except OutboxFullDiskError as exc:
                batch = await self._disk_full_retry(batch, exc)
                continue
            except Exception as exc:
                log.error("outbox_append_failed", path=str(self.outbox.path), error=str(exc),
                          hint="events are kept in memory and retried; check the disk")
                if not await self._retry_wait(batch):
                    return
                continue
            if self.disk_full_since is not None:
                # Keep the WAL at one transaction while the disk is full: the next commit
                # then finds room in the pages acked rows freed instead of growing the WAL.
                await self.outbox.reclaim()
                await self._reserve_back()
                if not self.disk_full:
                    log.warning("outbox_disk_space_back", path=str(self.outbox.path),
                                full_s=round(time.time() - self.disk_full_since, 1))
                    self.disk_full_since = None
            self._commit_backoff.reset()
            self.counters.committed += len(batch)
            if self.on_rows is not None:
                self.on_rows(appended)
            self.on_commit()
            self._report_dropped()
            return

    async def _disk_full_retry(self, batch: list[Event], exc: Exception) -> list[Event]:
        """The batch to try next after a full disk refused `batch` ([] to stop)."""
        self._disk_full_last = time.monotonic()
        if self.disk_full_since is None:
            self.disk_full_since = time.time()
        log.error("outbox_disk_full", path=str(self.outbox.path), error=str(exc),
                  pending=len(self._queue) + len(batch),
                  hint="alarms are committed first (the outbox's reserve is released for "
                       "them); telemetry and records wait in memory, then are dropped and "
                       "counted; free space under the outbox")
        if not self._reclaimed:  # once per refused batch: it may be all it takes
            self._reclaimed = True
            if await self.outbox.reclaim():
                return batch
        alarms = [e for e in batch if is_alarm(e)]
        self._queue.put_back(e for e in batch if not is_alarm(e))
        if alarms and await self.outbox.release_reserve():
            self._reserve_released = True
            await self.outbox.reclaim()  # the reserve's room lets the checkpoint finish
            return alarms  # at once, into the space the reserve held
        self._reclaimed = False
        if not await self._retry_wait(alarms):
            return []
        alarms += self._queue.take_alarms()
        return alarms  # none: back to the queue's order (the run loop retries the front)

    @property
    def disk_full(self) -> bool:
        """The outbox met a full disk: a commit was refused for lack of space in the last
        `DISK_FULL_HOLD_S`, or its reserve could not be written again yet."""
        return self.disk_full_since is not None and (
            time.monotonic() - self._disk_full_last < DISK_FULL_HOLD_S
            or self._reserve_released or not self.outbox.is_open)

    async def _reserve_back(self) -> None:
        """After a full disk: write the reserve again (tried at most every
        `COMMIT_RETRY_S` * 10 while there is no room for it)."""
        self._reclaimed = False
        if not self._reserve_released:
            return
        now = time.monotonic()
        if now - self._reserve_tried_at < COMMIT_RETRY_S * 10:
            return
        self._reserve_tried_at = now
        if await self.outbox.restore_reserve():
            self._reserve_released = False

    async def _retry_wait(self, batch: list[Event]) -> bool:
        """Wait before retrying (an alarm queued meanwhile ends the wait). False when
        stopping and out of time: `batch` and everything queued are counted as not kept."""
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self._give_up(batch + self._queue.take_all())
            return False
        wait = self._commit_backoff.next_s()
        if self._stop_at is not None:
            wait = max(0.0, min(wait, self._stop_at - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._queue.urgent.wait()
        return True

    def _give_up(self, events: list[Event]) -> None:
        for event in events:
            kind = event.retention.name.lower()
            self.not_kept[kind] = self.not_kept.get(kind, 0) + 1

    def _report_dropped(self, *, force: bool = False) -> None:
        """Queue a gateway.data_loss for what was dropped before getting a seq, once the
        flood is over (the queue has room again) or `DROPPED_REPORT_S` after it began."""
        now = time.time()
        for reason, report in list(self._dropped.items()):
            room = len(self._queue) - self._queue.alarms <= self._queue.max_pending // 2
            if not (force or room or now - report.since >= DROPPED_REPORT_S):
                continue
            del self._dropped[reason]
            self.dropped_reported += report.count
            log.warning("pending_events_drop_reported", reason=reason, dropped=report.count,
                        by_type={k: v["count"] for k, v in report.by_type.items()})
            self._queue.put(new_event(self.hierarchy, self.hierarchy.gateway,
                                      "gateway.data_loss", report.data()))

    @property
    def dropped_unreported(self) -> int:
        """Dropped events not yet in a queued data_loss event."""
        return sum(r.count for r in self._dropped.values())


#: mypy checks here that the pipeline is a complete EventSink (every member a driver uses).
_SINK: type[EventSink] = Pipeline
