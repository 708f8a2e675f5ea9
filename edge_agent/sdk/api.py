"""The surface a driver sees. Drivers know devices and nothing of MQTT or the outbox.

A driver package exposes `DRIVER: DriverSpec` and registers it under the
`edge_agent.drivers` entry-point group (pyproject.toml). The agent validates each
device entry with `DriverSpec.options` (a pydantic model deriving from
`DeviceConfig`) before any I/O, then calls `DriverSpec.build()` once with all the
devices of that driver, so a driver can group devices (e.g. one queue per bus).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from edge_agent.config.models import ChatterConfig, DeviceConfig, SnapshotsConfig
from edge_agent.contract.envelope import Severity

__all__ = ["DeviceState", "Driver", "DriverSpec", "EventSink", "NullSink", "OpenAlarm",
           "credential_salt", "report_poll_error", "restored_alarms"]


@dataclass(frozen=True)
class OpenAlarm:
    """One alarm left open when the agent stopped (`edge_agent.pipeline.open_alarms`): its
    type, id and the raise's plain data fields (a zone...)."""

    type: str
    alarm_id: str
    data: dict[str, str | int | float | bool]


class DeviceState(StrEnum):
    UNKNOWN = "unknown"
    ONLINE = "online"
    OFFLINE = "offline"
    ERROR = "error"


class EventSink(Protocol):
    """Where drivers hand their observations; never blocks, never raises for a device.

    The complete surface a driver may use: `edge_agent.pipeline.Pipeline` implements it in
    the agent and `edge_agent.sdk.testing.RecordingSink` (or a subclass of `NullSink`) in
    tests; mypy checks both against this class, so a rename cannot silently stop a report.
    """

    @property
    def credential_salt(self) -> bytes:
        """The gateway's salt for hashing access credentials (`gateway.credential_salt`);
        b"" when none is set."""
        ...

    @property
    def snapshots(self) -> SnapshotsConfig | None:
        """The gateway's `snapshots:` section (camera drivers); None: the defaults."""
        ...

    @property
    def alarm_chatter(self) -> ChatterConfig | None:
        """The gateway's `alarm_chatter:` section (chatter control); None: the defaults."""
        ...

    def emit(
        self,
        device: str,
        type_: str,
        data: dict[str, Any],
        *,
        severity: Severity | None = None,
        observed_at: float | None = None,
    ) -> None:
        """One event of the catalog (`docs/events.md`) observed on `device`."""

    def device_state(self, device: str, state: DeviceState, reason: str = "") -> None:
        """The device's state; a change becomes `device.online` / `device.offline`."""

    def restored_alarms(self, device: str) -> list[OpenAlarm]:
        """Alarms of `device` still open when the agent last stopped, oldest first
        (edge_agent.pipeline.open_alarms); each is handed out once."""
        ...

    def poll_error(self, device: str, reason: str) -> None:
        """One failed poll/read of `device` (status page, `/metrics`); `reason` must hold
        no secret. Counted, not an event."""

    def chatter_toggles(self, device: str, suppressed: int) -> None:
        """Alarm toggles of `device` that chatter control counted instead of sending."""


def credential_salt(sink: EventSink) -> bytes:
    """The gateway's salt for hashing credentials (`gateway.credential_salt`); b"" if none."""
    return sink.credential_salt


def restored_alarms(sink: EventSink, device: str) -> list[OpenAlarm]:
    """Alarms of `device` still open when the agent last stopped, oldest first
    (edge_agent.pipeline.open_alarms): a driver goes on with them (same `alarm_id`) instead of
    raising anew."""
    return sink.restored_alarms(device)


def report_poll_error(sink: EventSink, device: str, reason: str) -> None:
    """Count one failed poll/read of `device` (status page, `/metrics`). `reason` must hold
    no secret."""
    sink.poll_error(device, reason)


class Driver(Protocol):
    async def run(self) -> None:
        """Run until cancelled. Must survive anything a device or network does."""


def _no_cross_checks(devices: Sequence[DeviceConfig]) -> list[tuple[int, str]]:
    return []


@dataclass(frozen=True)
class DriverSpec:
    name: str
    options: type[DeviceConfig]
    build: Callable[[Sequence[DeviceConfig], EventSink], Driver]
    summary: str = ""
    #: Checks across this driver's devices (e.g. one serial port, one line setting), run by
    #: `edge-agent validate` after each device validated alone: (index in `devices`, message).
    check_devices: Callable[[Sequence[DeviceConfig]], list[tuple[int, str]]] = _no_cross_checks


class NullSink:
    """A complete EventSink that keeps nothing (no salt, default settings, no restored
    alarms); derive a test's sink from it and override what the test looks at."""

    credential_salt: bytes = b""
    snapshots: SnapshotsConfig | None = None
    alarm_chatter: ChatterConfig | None = None

    def emit(self, device: str, type_: str, data: dict[str, Any], *,
             severity: Severity | None = None, observed_at: float | None = None) -> None:
        pass

    def device_state(self, device: str, state: DeviceState, reason: str = "") -> None:
        pass

    def restored_alarms(self, device: str) -> list[OpenAlarm]:
        return []

    def poll_error(self, device: str, reason: str) -> None:
        pass

    def chatter_toggles(self, device: str, suppressed: int) -> None:
        pass
