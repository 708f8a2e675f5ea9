"""A Modbus device entry in the gateway YAML: which profile, where, how often.

    - id: smoke-b1-01
      driver: modbus
      profile: smoke-detector          # drivers/modbus/profiles/smoke-detector.yaml
      unit_id: 3
      rtu: {port: /dev/ttyUSB0, baudrate: 9600}    # or  tcp: {host: 127.0.0.1, port: 502}
      period_s: 2
      forward_every_reading: false     # true: every poll's readings are sent (no deadband)

Validated completely before any I/O, each mistake at its own key: the profile must
load, the device's `limits` may only lower the profile's (and must still fit every
point in one read), `allow_writes` may name only writable points of the profile, and
unit id 0 (broadcast) is refused on RTU. Devices sharing a serial port must agree on
its line settings and use distinct unit ids (checked across devices by `check_buses`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from drivers.modbus.planner import DEFAULT_LINK, DeviceLimits, LinkCost, oversized
from drivers.modbus.points import raise_issues
from drivers.modbus.profile import Profile, ProfileName, find_profile, load_profile
from drivers.modbus.transport import SerialSettings
from edge_agent.sdk.config import DeviceConfig, host_problem

__all__ = ["ModbusDevice", "RtuTarget", "TcpTarget", "check_buses"]

Issue = tuple[tuple[str | int, ...], str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TcpTarget(_Strict):
    host: str = Field(min_length=1, description="IP address or host name of the device")

    @field_validator("host")
    @classmethod
    def _an_address(cls, value: str) -> str:
        problem = host_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    port: int = Field(default=502, ge=1, le=65535)
    gateway: bool = Field(default=False, description="the address is a TCP-to-RTU gateway "
                          "(an RS-485 bus behind one address): its devices share one "
                          "connection and are polled one at a time, like a serial bus")


class RtuTarget(_Strict):
    port: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    pause_ms: float = Field(default=0.0, ge=0, le=10000,
                            description="extra silence between requests on this bus, beyond "
                                        "the 3.5 character times Modbus RTU requires")

    def settings(self) -> SerialSettings:
        return SerialSettings(self.port, self.baudrate, self.bytesize, self.parity, self.stopbits)


class ModbusDevice(DeviceConfig):
    profile: ProfileName = Field(description="device profile name (a shipped or site profile)")
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (slave) id")
    tcp: TcpTarget | None = None
    rtu: RtuTarget | None = None
    period_s: float = Field(default=1.0, gt=0, le=3600, description="seconds between polls")
    timeout_s: float = Field(default=1.0, gt=0, le=60, description="reply timeout per request")
    offline_after: int = Field(default=3, ge=1, le=100,
                               description="consecutive failed polls before device.offline")
    max_backoff_s: float = Field(default=30.0, gt=0, le=3600,
                                 description="longest wait between polls of a failing device")
    limits: DeviceLimits | None = Field(default=None,
                                        description="lower the profile's request limits")
    allow_writes: list[str] = Field(default_factory=list,
                                    description="points the write API may change (audited)")
    forward_every_reading: bool = Field(
        default=False, description="every reading rule of the profile sends every poll's "
        "values (as `report: every_poll`), not only changes beyond the deadband")

    #: the profile's file, found when the entry was validated (with the YAML's `profiles:`)
    _profile_file: Path | None = PrivateAttr(default=None)

    def profile_path(self) -> Path:
        """The profile's file as found at validation (the search path may differ later)."""
        return self._profile_file or find_profile(self.profile)

    @model_validator(mode="after")
    def _consistent(self) -> ModbusDevice:
        issues: list[Issue] = []
        if (self.tcp is None) == (self.rtu is None):
            issues.append(((), "give exactly one of `tcp: {host, port}` or "
                               "`rtu: {port, baudrate}`"))
        if self.rtu is not None and self.unit_id == 0:
            issues.append((("unit_id",), "unit id 0 is the broadcast address on RTU: no "
                                         "device answers it; use the device's id (1..247)"))
        self._profile_file = find_profile(self.profile)
        profile = load_profile(self._profile_file)  # loads: the field validator checked it
        issues += _limit_issues(self.limits, profile)
        issues += _write_issues(self.allow_writes, profile)
        raise_issues("ModbusDevice", issues)
        return self

    def link_cost(self) -> LinkCost:
        """What a request costs on this device's link (the planner's gap fill): TCP a round
        trip; RTU wire time at the bus's settings; a TCP-to-RTU gateway's bus, whose baud
        rate the agent does not know, RS-485 at 9,600 baud."""
        if self.rtu is not None:
            serial = self.rtu.settings()
            bits = round(serial.char_time_s() * serial.baudrate)
            return LinkCost.rtu(serial.baudrate, bits, self.rtu.pause_ms / 1000)
        if self.tcp is not None and not self.tcp.gateway:
            return LinkCost.tcp()
        return DEFAULT_LINK


def _limit_issues(limits: DeviceLimits | None, profile: Profile) -> list[Issue]:
    """Each key above the profile's, and each point that no longer fits one read."""
    if limits is None:
        return []
    issues: list[Issue] = []
    for key, value in limits.model_dump(exclude_none=True).items():
        try:
            profile.limits.lowered(DeviceLimits.model_validate({key: value}))
        except ValueError as exc:
            issues.append((("limits", key), f"{exc} (profile `{profile.name}`)"))
    if issues:
        return issues
    effective = profile.limits.lowered(limits)
    for point, message in oversized(profile.points, effective):
        key = "max_bits" if point.table.is_bits else "max_registers"
        issues.append((("limits", key), message))
    return issues


def _write_issues(names: Sequence[str], profile: Profile) -> list[Issue]:
    known = [p.name for p in profile.points]
    writable = [p.name for p in profile.points if p.writable]
    listed = ", ".join(writable) if writable else "none"
    issues: list[Issue] = []
    seen: set[str] = set()
    for index, name in enumerate(names):
        loc = ("allow_writes", index)
        if name in seen:
            issues.append((loc, f"`{name}` is listed twice"))
            continue
        seen.add(name)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"writable points: {listed}"
            issues.append((loc, f"profile `{profile.name}` has no point `{name}`; {hint}"))
        elif name not in writable:
            point = profile.point(name)
            issues.append((loc, f"point `{name}` ({point.span()}) is not writable in profile "
                                f"`{profile.name}` (writable points: {listed})"))
    return issues


def check_buses(devices: Sequence[ModbusDevice]) -> list[str]:
    """Problems across devices: one serial port, one set of line settings; unit ids unique
    per serial port and per TCP address (a TCP-to-RTU gateway is a bus too)."""
    return [f"device {devices[i].id}: {message}" for i, message in bus_problems(devices)]


def bus_problems(devices: Sequence[DeviceConfig]) -> list[tuple[int, str]]:
    """`check_buses` as (index in `devices`, message): the DriverSpec cross-device hook."""
    problems: list[tuple[int, str]] = []
    lines: dict[str, tuple[ModbusDevice, RtuTarget]] = {}
    units: dict[tuple[str, int], str] = {}
    gateways: dict[str, tuple[ModbusDevice, bool]] = {}
    for index, dev in enumerate(devices):
        if not isinstance(dev, ModbusDevice):
            continue
        if dev.rtu is not None:
            bus = dev.rtu.port
            first = lines.setdefault(bus, (dev, dev.rtu))
            if _line(first[1]) != _line(dev.rtu):
                problems.append((index, f"serial port {bus} is already used by "
                                        f"{first[0].id} with other line settings "
                                        f"({_describe(first[1])}, here {_describe(dev.rtu)}); "
                                        "one bus, one setting"))
        elif dev.tcp is not None:
            bus = f"tcp://{dev.tcp.host.lower()}:{dev.tcp.port}"
            kind = gateways.setdefault(bus, (dev, dev.tcp.gateway))
            if kind[1] != dev.tcp.gateway:
                problems.append((index, f"{bus} is {'' if kind[1] else 'not '}a gateway for "
                                        f"{kind[0].id} (`tcp.gateway`) but "
                                        f"{'' if dev.tcp.gateway else 'not '}for this device; "
                                        "all devices at one address must agree"))
        else:  # pragma: no cover - the model requires one transport
            continue
        other = units.setdefault((bus, dev.unit_id), dev.id)
        if other != dev.id:
            problems.append((index, f"unit id {dev.unit_id} on {bus} is already {other}'s; "
                                    "every device on a bus needs its own unit id"))
    return problems


def _line(rtu: RtuTarget) -> tuple[SerialSettings, float]:
    return rtu.settings(), rtu.pause_ms


def _describe(rtu: RtuTarget) -> str:
    text = f"{rtu.baudrate} {rtu.bytesize}{rtu.parity}{rtu.stopbits}"
    return text + (f" pause_ms {rtu.pause_ms:g}" if rtu.pause_ms else "")
