"""`OnvifDriver`: one supervised coordinator task per camera.

A `CameraWorker` connects (clock, services, device information, profiles, stream URI),
runs the PullPoint `EventChannel` and, when `video.enabled`, one `VideoMonitor` on the
chosen profile's stream (credentials put into the URL in memory only). Every failure is
one precise `OnvifError`: counted (`report_poll_error`), logged with its reason, and
after `offline_after` in a row the device goes `offline` (unreachable) or `error` (wrong
password, SOAP faults, bad replies); retries back off up to `backoff.max_s`
(`edge_agent.contract.backoff`). The event channel's own losses are reported as
`camera.events_lost` raised/cleared (with `gap_s`).

A camera without an events service (GetServices/GetCapabilities list none) is said so
once (`camera_without_events`, and as the device's reason on the status page), stays
online and keeps video health and snapshots; it gets no `camera.events_lost`. Once a
camera is reported down, later failures with other reasons only update the reason shown
(no second `device.offline` before a `device.online`). Alarms open when the agent
stopped go on under their ids (`restored_alarms`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edge_agent.contract.backoff import Backoff
from edge_agent.contract.logs import get_logger
from edge_agent.sdk.api import DeviceState, EventSink, OpenAlarm, report_poll_error, restored_alarms
from edge_agent.sdk.config import DeviceConfig, SecretError, SnapshotsConfig
from edge_agent.sdk.supervise import supervise

from .alarms import CameraAlarms, SnapshotTaker
from .client import CameraClient, MediaProfile, with_credentials
from .errors import AuthError, OnvifError, SoapFault, SubscriptionLost, Unreachable
from .events import EventChannel
from .options import OnvifCamera
from .snapshots import SnapshotRing

if TYPE_CHECKING:
    from .video_monitor import VideoMonitor

__all__ = ["CameraWorker", "OnvifDriver", "pick_profile"]

log = get_logger("drivers.onvif.driver")

#: The device's reason on the status page for a camera without an events service.
NO_EVENTS_REASON = ("the camera has no ONVIF events service: no camera events, video "
                    "health and snapshots only")


def pick_profile(profiles: list[MediaProfile], choice: int | str) -> MediaProfile | None:
    if isinstance(choice, str):
        return next((p for p in profiles if p.token == choice), None)
    return profiles[choice] if -len(profiles) <= choice < len(profiles) else None


def _events_unsupported(fault: SoapFault) -> bool:
    """A camera that lists an events service but refuses to subscribe at all."""
    return fault.operation == "CreatePullPointSubscription" and (
        "ActionNotSupported" in fault.subcode or "not supported" in fault.text.lower())


def snapshot_settings(sink: EventSink) -> SnapshotsConfig:
    """The gateway's `snapshots:` section, as the agent's pipeline carries it."""
    return sink.snapshots or SnapshotsConfig()


class CameraWorker:
    def __init__(self, cfg: OnvifCamera, sink: EventSink, ring: SnapshotRing) -> None:
        self.cfg, self.sink = cfg, sink
        self.device = cfg.id
        self.failures = 0
        self.client: CameraClient | None = None
        self.channel: EventChannel | None = None
        self.video: VideoMonitor | None = None
        self._video_task: asyncio.Task[None] | None = None
        self._video_url = ""
        self._snapshot_token = ""
        self.taker = SnapshotTaker(self.device, cfg.snapshots, ring, None, self._video_frame)
        self.alarms = CameraAlarms(self.device, sink, cfg.snapshots,
                                   self.taker if cfg.snapshots.enabled else None,
                                   self._skew)
        #: the video monitor's alarms from before a restart (handed to the first one)
        self._video_restore: list[OpenAlarm] = self.alarms.restore(
            restored_alarms(sink, cfg.id))
        #: the state reported while down (kept until online again); None when up
        self._down: DeviceState | None = None
        #: False once the camera showed it has no events service
        self.has_events: bool | None = None

    def _skew(self) -> float:
        return self.client.clock_skew_s if self.client is not None else 0.0

    async def _video_frame(self) -> bytes | None:
        """The sampler's last frame as JPEG, encoded in the video pool (not on the loop)."""
        video = self.video
        return await video.pool.run(video.latest_jpeg) if video is not None else None

    async def run(self) -> None:
        """Until cancelled: connect, watch, and on any failure back off and reconnect."""
        backoff = Backoff(self.cfg.backoff.initial_s, self.cfg.backoff.max_s)
        me = asyncio.current_task()
        try:
            while True:
                if me is not None and me.cancelling():  # a swallowed cancel: stop anyway
                    raise asyncio.CancelledError
                try:
                    await self._session()
                except OnvifError as err:
                    self._failed(err)
                if self.failures <= 1:  # the session worked (or this is the first failure)
                    backoff.reset()
                await backoff.sleep()
        finally:
            await self._stop_video()
            if self.client is not None:
                await self.client.close()

    async def _session(self) -> None:
        cfg = self.cfg
        try:
            password = cfg.password.reveal().get_secret_value() if cfg.password else None
        except SecretError as exc:
            raise AuthError(self.device, "read password", str(exc),
                            "fix the `password:` secret of this camera") from None
        client = CameraClient(self.device, cfg.host, cfg.port, cfg.username, password,
                              adjust_time=cfg.adjust_time, timeout_s=cfg.timeout_s,
                              pin_to_host=cfg.pin_to_host)
        self.client = client
        try:
            await client.connect()
            info = await client.device_info()
            profiles = await client.profiles()
            main = self._profile(profiles, cfg.profile, "profile")
            self._snapshot_token = main.token
            self.taker.fetch = self._fetch_snapshot
            if cfg.video.enabled:
                sub = self._profile(profiles, cfg.video_profile, "video_profile")
                uri = await client.stream_uri(sub.token)
                self._start_video(with_credentials(uri, cfg.username, password), password)
            log.info("camera_connected", device=self.device, address=client.address,
                     manufacturer=info.manufacturer, model=info.model, firmware=info.firmware,
                     profiles=[p.token for p in profiles],
                     clock_skew_s=round(client.clock_skew_s, 1))
            if not cfg.events.enabled:
                self.alarms.drop_channel_loss("events.enabled is false")
                self._online()
                await self._watch_without_events(client)
                return
            if not client.has_events:
                self._without_events_service()
                await self._watch_without_events(client)
                return
            self.has_events = True
            self.channel = EventChannel(client, cfg.events, self.alarms.handle, self._channel_up,
                                        self.alarms.channel_lost)
            try:
                await self.channel.run()
            except SoapFault as fault:
                if not _events_unsupported(fault):
                    raise
                self.channel = None  # listed, but it cannot subscribe: the same as none
                self._without_events_service()
                await self._watch_without_events(client)
        except asyncio.CancelledError:
            await client.unsubscribe()  # a courtesy on shutdown, bounded (3 s)
            raise
        finally:
            self.taker.fetch = None
            await client.close()

    def _profile(self, profiles: list[MediaProfile], choice: int | str,
                 key: str) -> MediaProfile:
        found = pick_profile(profiles, choice)
        if found is None:
            from .errors import NotSupported

            known = ", ".join(p.token for p in profiles)
            raise NotSupported(self.device, "GetProfiles", f"no media profile {choice!r}",
                               f"set `{key}:` to an index or one of: {known}")
        return found

    async def _fetch_snapshot(self) -> bytes | None:
        client = self.client
        if client is None or not self._snapshot_token:
            return None
        return await client.snapshot(self._snapshot_token, self.cfg.snapshots.max_bytes,
                                     self.cfg.snapshots.wait_s)

    async def _watch_without_events(self, client: CameraClient) -> None:
        """Events off: check the camera answers (GetDeviceInformation) every liveness_s."""
        while True:
            await asyncio.sleep(self.cfg.events.liveness_s)
            await client.device_info()

    def _without_events_service(self) -> None:
        """The camera lists no events service: say so once, stay online without events."""
        reason = NO_EVENTS_REASON
        if self.has_events is not False:
            log.warning("camera_without_events", device=self.device, reason=reason,
                        hint="motion and tamper come only from video health (video.enabled);"
                             " set events.enabled: false to silence this")
        self.has_events = False
        self.alarms.drop_channel_loss(reason)
        self._online(reason)

    def _channel_up(self) -> None:
        self._online()
        self.alarms.channel_up()

    def _online(self, reason: str = "") -> None:
        if self.failures:
            log.info("camera_recovered", device=self.device, failures=self.failures)
        self.failures = 0
        self._down = None
        self.sink.device_state(self.device, DeviceState.ONLINE, reason)

    def _failed(self, err: OnvifError) -> None:
        self.failures += 1
        report_poll_error(self.sink, self.device, err.reason)
        log.warning("camera_error", device=self.device, kind=err.kind,
                    operation=err.operation, reason=err.detail, hint=err.hint,
                    failures=self.failures)
        # A channel that was up and is lost is a gap in the camera's events; one that never
        # came up is reported once the camera counts as failed.
        if self.cfg.events.enabled and self.has_events is not False and (
                self.channel is not None or isinstance(
                err, SubscriptionLost) or self.failures >= self.cfg.offline_after):
            self.alarms.channel_lost(err.reason)
        if self.failures >= self.cfg.offline_after:
            # Down is reported once: a later failure for another reason (unreachable,
            # then HTTP 503, then a fault) keeps the state and only updates its reason.
            state = self._down or (DeviceState.OFFLINE if isinstance(err, Unreachable)
                                   else DeviceState.ERROR)
            self._down = state
            self.sink.device_state(self.device, state, err.reason)

    # ------------------------------------------------------------------ video

    def _start_video(self, url: str, password: str | None) -> None:
        if self._video_task is not None and not self._video_task.done() \
                and url == self._video_url:
            return
        if self._video_task is not None:
            self._video_task.cancel()
        from .video_monitor import VideoMonitor

        self._video_url = url
        self.video = VideoMonitor(self.device, url, self.cfg.video, self.sink,
                                  secrets=(password,) if password else ())
        restore, self._video_restore = self._video_restore, []
        self.video.restore(restore)
        log.info("camera_video_started", device=self.device, stream=self.video.safe_url)
        self._video_task = asyncio.create_task(
            supervise(f"onvif-video:{self.device}", self.video.run))

    async def _stop_video(self) -> None:
        task, self._video_task = self._video_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class OnvifDriver:
    """All ONVIF cameras of a gateway; each camera is independent of the others."""

    def __init__(self, devices: Sequence[DeviceConfig], sink: EventSink, *,
                 snapshots: SnapshotsConfig | None = None) -> None:
        settings = snapshots or snapshot_settings(sink)
        self.ring = SnapshotRing(settings.dir, max_bytes=settings.max_bytes,
                                 max_files=settings.max_files)
        self.workers: dict[str, CameraWorker] = {}
        for dev in devices:
            assert isinstance(dev, OnvifCamera), "validated by the agent"
            self.workers[dev.id] = CameraWorker(dev, sink, self.ring)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for device, worker in self.workers.items():
                tg.create_task(supervise(f"onvif:{device}", worker.run))

    def worker(self, device: str) -> CameraWorker:
        return self.workers[device]

    def status(self) -> dict[str, Any]:
        return {d: {"failures": w.failures, "active_alarms": len(w.alarms.active)}
                for d, w in self.workers.items()}
