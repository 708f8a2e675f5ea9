"""`VideoMonitor`: watch one camera's stream and say in events when its video goes bad.

Which condition becomes which event (each condition is its own alarm, with its own
`alarm_id` linking raise and clear, so a camera can be covered and frozen at once):

| condition | event | why |
|---|---|---|
| no stream (cannot open, stopped, undecodable) | `camera.video_loss` | no video reaches us |
| frozen (identical samples) | `camera.video_loss` | stuck encoder: frames come, nothing new |
| black | `camera.tamper` | lens capped or blacked out (or the light failed) |
| over-exposed | `camera.tamper` | blinded by a torch or the sun |
| covered (uniform picture) | `camera.tamper` | hand, tape, paint over the lens |
| blurred | `camera.tamper` | knocked out of focus, lens smeared or sprayed |

`camera.health` (fps read from the stream, resolution, age of the last frame) goes out
every `health_interval_s`, and `camera.motion` from frame difference when `motion: true`.
While the stream is down the picture alarms keep their state: nothing was observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_agent.contract.backoff import Backoff
from edge_agent.contract.envelope import Severity
from edge_agent.contract.logs import get_logger
from edge_agent.sdk.api import EventSink, OpenAlarm, report_poll_error
from edge_agent.sdk.rules import new_alarm_id

from .video_analysis import Condition, FrameMetrics, Hysteresis, classify, measure, motion_region
from .video_options import VideoHealthOptions
from .video_sampler import Sample, StreamError, VideoSampler, VideoWorkers, redact

__all__ = ["VIDEO_LOSS_CONDITIONS", "VideoMonitor", "redact"]

log = get_logger("drivers.onvif.video")

VIDEO_LOSS_CONDITIONS = frozenset({Condition.FROZEN})
_REASONS = {
    Condition.BLACK: "image is black",
    Condition.OVEREXPOSED: "image is over-exposed (washed out)",
    Condition.COVERED: "lens covered (uniform image)",
    Condition.BLURRED: "image blurred (out of focus or lens smeared)",
    Condition.FROZEN: "image frozen (identical frames)",
}
NO_SIGNAL = "no_signal"


class _Alarm:
    """One condition's hysteresis and alarm id; emits raise/clear events."""

    def __init__(self, monitor: VideoMonitor, key: str, type_: str, tracker: Hysteresis) -> None:
        self.monitor, self.key, self.type, self.tracker = monitor, key, type_, tracker
        self.alarm_id: str | None = None
        self.data: dict[str, Any] = {}

    def observe(self, bad: bool, now: float, data: dict[str, Any], *,
                bad_since: float | None = None) -> None:
        flip = self.tracker.observe(bad, now, bad_since=bad_since)
        if flip == "raised":
            observed_at = time.time()
            self.alarm_id = new_alarm_id(self.monitor.device_id, self.type, observed_at)
            self.data = data
            self.monitor.emit(self.type, {"state": "raised", "alarm_id": self.alarm_id, **data},
                              None, observed_at)
        elif flip == "cleared" and self.alarm_id is not None:
            self.monitor.emit(self.type, {"state": "cleared", "alarm_id": self.alarm_id,
                                          **self.data}, Severity.INFO, time.time())
            self.alarm_id = None


@dataclass(frozen=True)
class _Observed:
    sample: Sample
    metrics: FrameMetrics
    region: str | None


class VideoMonitor:
    """Sample `stream_url` at `options.sample_fps` in `pool`; emit health and alarms.
    `secrets` (the camera password) are masked in every URL logged or put in an event."""

    def __init__(self, device_id: str, stream_url: str, options: VideoHealthOptions,
                 sink: EventSink, *, pool: VideoWorkers | None = None,
                 secrets: Iterable[str] = ()) -> None:
        self.device_id = device_id
        self.options = options
        self.sink = sink
        self.pool = pool or VideoWorkers.shared()
        self.sampler = VideoSampler(stream_url, options, secrets)
        self.safe_url = self.sampler.safe_url
        o = options
        self._alarms: dict[str, _Alarm] = {
            NO_SIGNAL: _Alarm(self, NO_SIGNAL, "camera.video_loss",
                              Hysteresis(1, o.clear_after, o.no_signal_after_s)),
        }
        for cond in Condition:
            type_ = "camera.video_loss" if cond in VIDEO_LOSS_CONDITIONS else "camera.tamper"
            after_s = o.frozen_after_s if cond is Condition.FROZEN else 0.0
            self._alarms[cond] = _Alarm(self, cond, type_,
                                        Hysteresis(o.raise_after, o.clear_after, after_s))
        self._motion = _Alarm(self, "motion", "camera.motion",
                              Hysteresis(1, o.motion_clear_after))
        self._previous: np.ndarray | None = None
        self._latest: Sample | None = None
        self._jpeg: tuple[Sample, bytes] | None = None
        self._started = time.monotonic()
        self._frames = 0          # frames read since the last health event
        self._frames_since = self._started
        self._last_failure = ""
        self.samples = 0          # samples analysed
        self.failures = 0         # failed opens and reads

    def restore(self, open_alarms: Iterable[OpenAlarm]) -> None:
        """Go on with the video alarms the last run left open (same `alarm_id`): each is
        raised again only in our books, and clears once the picture is good again."""
        by_reason: dict[str, str] = {text: cond for cond, text in _REASONS.items()}
        for alarm in open_alarms:
            reason = alarm.data.get("reason")
            key: str | None = by_reason.get(reason) if isinstance(reason, str) else None
            if key is None and alarm.type == "camera.video_loss":
                key = NO_SIGNAL
            target = (self._motion if alarm.type == "camera.motion" and "region" in alarm.data
                      else self._alarms.get(key) if key is not None else None)
            if target is None or target.type != alarm.type or target.alarm_id is not None:
                continue
            target.alarm_id, target.data = alarm.alarm_id, dict(alarm.data)
            target.tracker.raised = True

    # ---- what others read -----------------------------------------------------------

    @property
    def last_sample(self) -> Sample | None:
        """The last decoded sample (its frame, thumbnail, worker thread, time)."""
        return self._latest

    @property
    def last_frame_age_s(self) -> float | None:
        return None if self._latest is None else time.monotonic() - self._latest.at

    def raised(self) -> dict[str, str]:
        """Raised alarms: condition -> alarm_id (for a status page)."""
        return {k: a.alarm_id for k, a in self._alarms.items() if a.alarm_id is not None}

    def latest_jpeg(self) -> bytes | None:
        """The last sampled frame as JPEG (encoded once per frame, on first ask), or None.
        Blocking (`cv2.imencode`): call it from the pool, `await pool.run(latest_jpeg)`."""
        latest = self._latest
        if latest is None:
            return None
        if self._jpeg is None or self._jpeg[0] is not latest:
            ok, buf = cv2.imencode(".jpg", latest.frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
            if not ok:
                return None
            self._jpeg = (latest, buf.tobytes())
        return self._jpeg[1]

    # ---- running ----------------------------------------------------------------------

    def emit(self, type_: str, data: dict[str, Any], severity: Severity | None,
             observed_at: float) -> None:
        if type_ != "camera.health":
            log.info("camera_video_alarm", device=self.device_id, type=type_,
                     state=data.get("state"), reason=data.get("reason", data.get("region")))
        self.sink.emit(self.device_id, type_, data, severity=severity, observed_at=observed_at)

    async def run(self) -> None:
        """Sample until cancelled; survives anything the stream does."""
        if not self.options.enabled:
            return
        health = asyncio.create_task(self._health_loop())
        try:
            await self._sample_loop()
        finally:
            health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health
            with contextlib.suppress(RuntimeError):  # pool already shut down
                self.pool.submit(self.sampler.close)

    async def _sample_loop(self) -> None:
        o = self.options
        backoff = Backoff(o.reconnect_initial_s, o.reconnect_max_s)
        while True:
            started = time.monotonic()
            try:
                if not self.sampler.is_open:
                    await self.pool.run_open(self.sampler.open)
                    log.info("camera_stream_opened", device=self.device_id, url=self.safe_url)
                observed = await self.pool.run(self._sample_and_measure)
            except StreamError as exc:
                self._failed(str(exc))
                await backoff.sleep()
                continue
            except (cv2.error, ValueError) as exc:  # a decoder bug or an odd frame (too
                # small, 16-bit): reported as no signal; it must not end the monitor
                self.pool.submit(self.sampler.close)
                self._failed(f"frame could not be decoded ({type(exc).__name__})")
                await backoff.sleep()
                continue
            backoff.reset()
            self._observed(observed)
            await asyncio.sleep(max(0.0, started + o.sample_period_s - time.monotonic()))

    def _sample_and_measure(self) -> _Observed:
        """In a worker: one sample, its metrics against the previous one, motion region."""
        sample = self.sampler.sample()
        previous = self._previous
        metrics = measure(sample.thumb, previous, self.options)
        region = None
        if (self.options.motion and previous is not None and metrics.moved is not None
                and metrics.moved >= self.options.motion_area):
            region = motion_region(sample.thumb, previous, self.options.motion_pixel_delta)
        self._previous = sample.thumb
        return _Observed(sample, metrics, region)

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self._previous = None  # do not compare pictures across an outage
        now = time.monotonic()
        if reason != self._last_failure:
            log.warning("camera_stream_failed", device=self.device_id, url=self.safe_url,
                        reason=reason)
            self._last_failure = reason
        report_poll_error(self.sink, self.device_id, reason)
        since = self._latest.at if self._latest is not None else self._started
        self._alarms[NO_SIGNAL].observe(True, now, {"reason": reason}, bad_since=since)

    def _observed(self, obs: _Observed) -> None:
        sample, metrics = obs.sample, obs.metrics
        now = sample.at
        self.samples += 1
        self._frames += sample.frames
        self._latest = sample
        if self._last_failure:
            log.info("camera_stream_recovered", device=self.device_id, url=self.safe_url)
            self._last_failure = ""
        self._alarms[NO_SIGNAL].observe(False, now, {})
        found = classify(metrics, self.options)
        for cond in Condition:
            self._alarms[cond].observe(cond in found, now, {"reason": _REASONS[cond]})
        if self.options.motion and metrics.moved is not None:
            self._motion.observe(obs.region is not None, now,
                                 {"region": obs.region or "centre"})

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            self._emit_health()

    def _emit_health(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._frames_since, 1e-6)
        data: dict[str, Any] = {"fps": round(self._frames / elapsed, 2)}
        self._frames, self._frames_since = 0, now
        latest = self._latest
        if latest is not None:
            h, w = latest.frame.shape[:2]
            data.update(width=int(w), height=int(h), last_frame_age_s=round(now - latest.at, 3))
        else:
            data["last_frame_age_s"] = round(now - self._started, 3)
        self.emit("camera.health", data, None, time.time())
