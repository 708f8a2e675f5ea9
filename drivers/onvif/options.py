"""The `onvif` device options, validated completely before any I/O.

A camera entry names where the camera answers (`host`, `port`), who we are
(`username`, `password: {file: ...}`), which media profile to use, how events are
pulled (`events:`), when snapshots are taken (`snapshots:`) and the OpenCV video-health
settings (`video:`). Every cross-field mistake carries the location of its key, so
`edge-agent validate` reports it at file:line with the device id.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from edge_agent.contract.envelope import CATALOG
from edge_agent.sdk.config import DeviceConfig, SecretRef, host_problem

from .topics import CAMERA_EVENT_TYPES
from .video_options import VideoHealthOptions

__all__ = ["BackoffOptions", "EventOptions", "OnvifCamera", "SnapshotOptions"]

_TOKEN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

Loc = tuple[str | int, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackoffOptions(_Strict):
    """Wait between attempts after a failure: its bound doubles from `initial_s` up to
    `max_s` (edge_agent.contract.backoff: full jitter)."""

    initial_s: float = Field(default=1.0, gt=0, le=60, allow_inf_nan=False)
    max_s: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)


class EventOptions(_Strict):
    """The ONVIF PullPoint event channel."""

    enabled: bool = Field(default=True, description="pull the camera's ONVIF events")
    pull_timeout_s: float = Field(default=10.0, ge=1, le=60, allow_inf_nan=False,
                                  description="long-poll time of one PullMessages")
    message_limit: int = Field(default=64, ge=1, le=1024,
                               description="at most this many messages per pull")
    termination_s: float = Field(default=300.0, ge=10, le=86400, allow_inf_nan=False,
                                 description="subscription lifetime asked of the camera")
    renew_margin_s: float = Field(default=60.0, ge=1, le=3600, allow_inf_nan=False,
                                  description="renew this long before the subscription ends")
    liveness_s: float = Field(default=90.0, ge=2, le=86400, allow_inf_nan=False,
                              description="no successful pull this long: the channel is "
                                          "reported quiet (camera.events_lost) and re-created")


class SnapshotOptions(_Strict):
    """Snapshots on camera alarms, kept in the gateway's ring (`snapshots:` of the gateway)."""

    enabled: bool = True
    on: list[str] = Field(
        default_factory=lambda: ["camera.motion", "camera.tamper", "camera.intrusion",
                                 "camera.line_crossing"],
        max_length=16, description="catalog types whose raise (or record) gets a snapshot")
    wait_s: float = Field(default=2.0, ge=0.1, le=10, allow_inf_nan=False,
                          description="the alarm event waits at most this long for its "
                                      "snapshot, then goes without one")
    min_interval_s: float = Field(default=5.0, ge=0, le=3600, allow_inf_nan=False,
                                  description="at most one snapshot per camera this often")
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024,
                           description="a larger image is refused")
    stream_fallback: bool = Field(default=True, description="without a snapshot URI (or when "
                                  "it fails), use the last frame of the video-health sampler")


class ProcessOptions(_Strict):
    """The camera worker processes (drivers/onvif/host.py); the first camera's block
    applies to all cameras of the gateway."""

    cameras_per_worker: int = Field(default=8, ge=1, le=64,
                                    description="cameras per worker process")
    heartbeat_s: float = Field(default=2.0, ge=0.1, le=60, allow_inf_nan=False,
                               description="a worker says it is alive this often")
    heartbeat_timeout_s: float = Field(
        default=20.0, ge=1, le=600, allow_inf_nan=False,
        description="a worker silent this long is wedged: killed and restarted")
    restart_initial_s: float = Field(default=1.0, gt=0, le=600, allow_inf_nan=False,
                                     description="first pause before restarting a worker")
    restart_max_s: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False,
                                 description="longest pause between restarts")


class OnvifCamera(DeviceConfig):
    """An ONVIF camera (Profile S/T): events, snapshots and video health."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, max_length=253,
                      description="IP address or DNS name, without scheme or credentials")
    port: int = Field(default=80, ge=1, le=65535, description="HTTP port of the ONVIF service")
    username: str | None = Field(default=None, min_length=1, max_length=64)
    password: SecretRef | None = Field(default=None, description="{file: PATH} or {env: NAME}")
    adjust_time: bool = Field(default=True, description="correct WS-UsernameToken times for "
                              "the camera's clock (GetSystemDateAndTime)")
    pin_to_host: bool = Field(default=True, description="use `host` for every address the "
                              "camera advertises (services, subscriptions and snapshots: host "
                              "and port; stream: host only), so the agent talks to the "
                              "configured address and nothing else")
    profile: int | str = Field(default=0, description="media profile for snapshots and the "
                               "stream URI: index (0 = first, usually the main stream) or token")
    video_profile: int | str = Field(default=-1, description="media profile whose stream the "
                                     "video-health sampler reads: index (-1 = last, usually the "
                                     "sub stream) or token")
    timeout_s: float = Field(default=10.0, ge=0.5, le=120, allow_inf_nan=False,
                             description="time allowed for one SOAP operation")
    offline_after: int = Field(default=2, ge=1, le=100,
                               description="device.offline after this many failures in a row")
    backoff: BackoffOptions = Field(default_factory=BackoffOptions)
    events: EventOptions = Field(default_factory=EventOptions)
    snapshots: SnapshotOptions = Field(default_factory=SnapshotOptions)
    video: VideoHealthOptions = Field(default_factory=VideoHealthOptions)
    process: ProcessOptions = Field(default_factory=ProcessOptions)

    @model_validator(mode="after")
    def _check(self) -> OnvifCamera:
        issues = self._issues()
        if issues:
            raise ValidationError.from_exception_data("OnvifCamera", [
                InitErrorDetails(type="value_error", loc=loc, input=None,
                                 ctx={"error": ValueError(message)}) for loc, message in issues])
        return self

    def _issues(self) -> list[tuple[Loc, str]]:
        issues: list[tuple[Loc, str]] = []
        problem = host_problem(self.host)
        if problem:
            issues.append((("host",), problem))
        if self.username is not None and self.password is None:
            issues.append((("password",), "`username` is set but `password` is missing; add "
                                          "password: {file: /etc/edge-agent/secrets/NAME}"))
        if self.password is not None and self.username is None:
            issues.append((("username",), "`password` is set but `username` is missing"))
        for key in ("profile", "video_profile"):
            value = getattr(self, key)
            if isinstance(value, str) and not _TOKEN.match(value):
                issues.append(((key,), f"`{value}` is not a profile token (letters, digits, "
                                       "_ . : -) nor an index"))
            if isinstance(value, int) and not -16 <= value < 16:
                issues.append(((key,), "a profile index is between -16 and 15"))
        ev = self.events
        if ev.renew_margin_s >= ev.termination_s:
            issues.append((("events", "renew_margin_s"),
                           f"renew_margin_s ({ev.renew_margin_s:g}) must be less than "
                           f"termination_s ({ev.termination_s:g})"))
        if ev.liveness_s <= ev.pull_timeout_s:
            issues.append((("events", "liveness_s"),
                           f"liveness_s ({ev.liveness_s:g}) must exceed pull_timeout_s "
                           f"({ev.pull_timeout_s:g}): an empty pull takes that long"))
        pr = self.process
        if pr.heartbeat_timeout_s <= 2 * pr.heartbeat_s:
            issues.append((("process", "heartbeat_timeout_s"),
                           f"heartbeat_timeout_s ({pr.heartbeat_timeout_s:g}) must exceed twice "
                           f"heartbeat_s ({pr.heartbeat_s:g})"))
        if pr.restart_max_s < pr.restart_initial_s:
            issues.append((("process", "restart_max_s"),
                           "restart_max_s must not be less than restart_initial_s"))
        if self.backoff.max_s < self.backoff.initial_s:
            issues.append((("backoff", "max_s"), "max_s must not be less than initial_s"))
        for i, type_ in enumerate(self.snapshots.on):
            if type_ not in CAMERA_EVENT_TYPES:
                known = ", ".join(sorted(CAMERA_EVENT_TYPES))
                what = "not a catalog type" if type_ not in CATALOG else "not a camera alarm"
                issues.append((("snapshots", "on", i), f"`{type_}` is {what}; one of {known}"))
        return issues
