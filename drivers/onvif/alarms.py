"""Camera notifications -> catalog events: raise/clear bookkeeping and snapshots.

`CameraAlarms` keeps, per camera, which alarms are raised (by type and ONVIF source),
so a repeated `true` is not a second alarm, a `false` clears with the same `alarm_id`,
and the Initialized states a new subscription starts with reconcile what happened
while the channel was down. A raise (or a line-crossing record) of a type listed in
`snapshots.on` waits at most `wait_s` for one snapshot, referenced as
`data.snapshot = {id, bytes, sha256}`; without one in time, the event goes without.
It also raises and clears `camera.events_lost` for the event channel itself.

Alarms left open when the agent stopped (`restore`, from edge_agent.pipeline.open_alarms) go on
under their ids: the camera's next state for the same topic, video source and rule
(the Initialized state a new subscription starts with) either continues the alarm
(no second raise) or clears it under the old id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent.contract.logs import get_logger
from edge_agent.sdk.api import EventSink, OpenAlarm
from edge_agent.sdk.rules import new_alarm_id

from .options import SnapshotOptions
from .snapshots import SnapshotRef, SnapshotRing, is_jpeg
from .topics import CAMERA_EVENT_TYPES, Mapped, Notification, map_notification

__all__ = ["CameraAlarms", "SnapshotTaker"]

log = get_logger("drivers.onvif.alarms")

Fetch = Callable[[], Awaitable[bytes | None]]
#: Alarms one camera may hold raised at once: their keys come from the camera's
#: notifications (source items), so a faulty or hostile camera must not grow this forever.
ACTIVE_MAX = 256


@dataclass
class SnapshotTaker:
    """One camera's snapshots: the ONVIF snapshot URI, else the sampler's last frame."""

    device: str
    options: SnapshotOptions
    ring: SnapshotRing
    fetch: Fetch | None = None
    fallback: Fetch | None = None
    _last: float = field(default=-1e9)
    taken: int = 0

    async def take(self) -> SnapshotRef | None:
        now = time.monotonic()
        if now - self._last < self.options.min_interval_s:
            return None
        self._last = now
        jpeg, source = await self._image()
        if jpeg is None:
            return None
        try:
            ref = await self.ring.store(jpeg)
        except (OSError, ValueError) as exc:
            log.warning("snapshot_not_stored", device=self.device, reason=str(exc)[:200])
            return None
        self.taken += 1
        log.info("snapshot_stored", device=self.device, snapshot=ref.id, bytes=ref.bytes,
                 source=source)
        return ref

    async def _image(self) -> tuple[bytes | None, str]:
        from .errors import OnvifError

        if self.fetch is not None:
            try:
                data = await self.fetch()
                if data is not None and is_jpeg(data):
                    return data, "snapshot_uri"
                reason = "no snapshot URI" if data is None else "the reply is not a JPEG"
            except OnvifError as err:
                reason = err.reason
            log.warning("snapshot_uri_failed", device=self.device, reason=reason,
                        fallback=self.options.stream_fallback)
        if self.options.stream_fallback and self.fallback is not None:
            frame = await self.fallback()
            if frame is not None and is_jpeg(frame):
                return frame, "stream"
        return None, ""


@dataclass
class _Planned:
    type: str
    data: dict[str, Any]
    observed_at: float
    snapshot: bool


def _restore_key(type_: str, data: dict[str, Any]) -> tuple[str, ...]:
    """What identifies a camera alarm in the data kept across a restart (the live key
    holds every source item; the event data keeps topic, video source and rule)."""
    return (type_, *(str(data.get(k, "")) for k in ("onvif_topic", "video_source", "rule",
                                                    "reason")))


class CameraAlarms:
    def __init__(self, device: str, sink: EventSink, options: SnapshotOptions,
                 taker: SnapshotTaker | None, clock_skew_s: Callable[[], float]) -> None:
        self.device, self.sink, self.options, self.taker = device, sink, options, taker
        self.clock_skew_s = clock_skew_s
        self.active: dict[str, str] = {}  # key -> alarm_id
        self._lost: tuple[str, float] | None = None  # (alarm_id, since)
        #: alarms open before a restart, not yet seen again: restore key -> alarm_id
        self.restored: dict[tuple[str, ...], str] = {}
        self.unmapped = 0

    def restore(self, open_alarms: list[OpenAlarm]) -> list[OpenAlarm]:
        """Take back the camera's event alarms and its `camera.events_lost` left open by
        the last run; returns the others (the video monitor's)."""
        rest: list[OpenAlarm] = []
        for alarm in open_alarms:
            if alarm.type == "camera.events_lost":
                if self._lost is None:  # the gap counts from this start
                    self._lost = (alarm.alarm_id, time.time())
            elif alarm.type in CAMERA_EVENT_TYPES and "onvif_topic" in alarm.data:
                if len(self.restored) < ACTIVE_MAX:
                    self.restored[_restore_key(alarm.type, alarm.data)] = alarm.alarm_id
            else:
                rest.append(alarm)
        if len(rest) < len(open_alarms):
            log.info("camera_alarms_restored", device=self.device,
                     alarms=len(open_alarms) - len(rest))
        return rest

    def drop_channel_loss(self, reason: str) -> None:
        """Clear a `camera.events_lost` that no longer means anything (the camera has no
        events service at all)."""
        if self._lost is None:
            return
        alarm_id, _since = self._lost
        self._lost = None
        self.sink.emit(self.device, "camera.events_lost",
                       {"state": "cleared", "alarm_id": alarm_id, "reason": reason[:200]})

    # ------------------------------------------------------------------ event channel

    def channel_lost(self, reason: str) -> None:
        if self._lost is not None:
            return
        now = time.time()
        alarm_id = new_alarm_id(self.device, "camera.events_lost", now)
        self._lost = (alarm_id, now)
        self.sink.emit(self.device, "camera.events_lost",
                       {"state": "raised", "alarm_id": alarm_id, "reason": reason[:200]})

    def channel_up(self) -> None:
        if self._lost is None:
            return
        alarm_id, since = self._lost
        self._lost = None
        gap = round(max(0.0, time.time() - since), 3)
        log.info("event_channel_restored", device=self.device, gap_s=gap)
        self.sink.emit(self.device, "camera.events_lost",
                       {"state": "cleared", "alarm_id": alarm_id, "gap_s": gap})

    # ------------------------------------------------------------------ notifications

    async def handle(self, messages: list[Notification]) -> None:
        planned = [p for m in messages if (p := self._plan(m)) is not None]
        snapshot: SnapshotRef | None = None
        if self.taker is not None and any(p.snapshot for p in planned):
            try:
                async with asyncio.timeout(self.options.wait_s):
                    snapshot = await self.taker.take()
            except TimeoutError:
                log.warning("snapshot_late", device=self.device, wait_s=self.options.wait_s)
        for p in planned:
            if p.snapshot and snapshot is not None:
                p.data["snapshot"] = snapshot.as_data()
            self.sink.emit(self.device, p.type, p.data, observed_at=p.observed_at)

    def _observed_at(self, msg: Notification) -> float:
        now = time.time()
        if msg.utc_time is None:
            return now
        local = msg.utc_time - self.clock_skew_s()
        return local if now - 300 <= local <= now + 2 else now

    def _plan(self, msg: Notification) -> _Planned | None:
        mapped = map_notification(msg)
        if mapped is None:
            self.unmapped += 1
            log.debug("topic_unmapped", device=self.device, topic=msg.topic[:120])
            return None
        data = self._transition(mapped)
        if data is None:
            return None
        wants = (self.options.enabled and mapped.type in self.options.on
                 and data.get("state", "raised") == "raised")
        return _Planned(mapped.type, data, self._observed_at(msg), wants)

    def _transition(self, m: Mapped) -> dict[str, Any] | None:
        data: dict[str, Any] = dict(m.data)
        if m.active is None:
            return data
        alarm_id = self.active.get(m.key)
        if alarm_id is None and self.restored:
            alarm_id = self.restored.pop(_restore_key(m.type, data), None)
            if alarm_id is not None:  # open before the restart: go on with its id
                self.active[m.key] = alarm_id
                if m.active:
                    return None
        if m.active and alarm_id is None:
            if len(self.active) >= ACTIVE_MAX:
                log.warning("alarm_not_raised", device=self.device, type=m.type,
                            reason=f"{ACTIVE_MAX} alarms already raised on this camera")
                return None
            alarm_id = self.active[m.key] = new_alarm_id(self.device, m.type, time.time())
            return {"state": "raised", "alarm_id": alarm_id, **data}
        if not m.active and alarm_id is not None:
            del self.active[m.key]
            return {"state": "cleared", "alarm_id": alarm_id, **data}
        return None
