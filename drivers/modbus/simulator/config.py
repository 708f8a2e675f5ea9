"""What `edge-agent simulate` serves: a YAML file, a gateway config, or command-line flags.

    # simulate.yaml
    servers:
      - tcp: {host: 127.0.0.1, port: 15021}          # bind address: 127.0.0.1 by default
        units:
          - {unit: 1, profile: smoke-detector, device: smoke-b1-01}
          - {unit: 2, profile: smoke-detector, device: smoke-b2-01, values: {battery: 41}}
      - rtu: {port: /tmp/ttySIM0, baudrate: 9600, pace: true}   # a serial port or pty
        units:
          - {unit: 5, profile: water-sensor}
    scenarios:
      - {scenario: fire, devices: [smoke-b1-01]}     # by device id ...
      - {scenario: silent-device, units: [5], loop: false}   # ... or by unit id
    log_level: info

A scenario without `devices`/`units` runs on every served unit of its profile. The
whole file is checked before anything listens: profiles load, initial values fit their
points, addresses and unit ids are unique, scenarios load and their targets exist.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.modbus.decode import Value
from drivers.modbus.points import raise_issues
from drivers.modbus.profile import Profile, load_profile
from drivers.modbus.simulator.scenario import (
    Scenario,
    encode_problem,
    load_scenario,
    profile_problem,
)
from edge_agent.sdk.config import SEGMENT, ConfigError

__all__ = [
    "RtuListen",
    "ScenarioRef",
    "ServerSpec",
    "SimulateConfig",
    "TcpListen",
    "UnitSpec",
    "parse_scalar",
    "parse_scenario_ref",
    "parse_tcp",
    "parse_units",
]

Loc = tuple[str | int, ...]
DEFAULT_HOST = "127.0.0.1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TcpListen(_Strict):
    host: str = Field(default=DEFAULT_HOST, min_length=1,
                      description="address to bind; 127.0.0.1 unless you mean otherwise")
    port: int = Field(ge=1, le=65535)

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class RtuListen(_Strict):
    port: str = Field(min_length=1, description="serial device or pty, e.g. /tmp/ttySIM0")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    pace: bool = Field(default=False,
                       description="delay each reply by the frames' time on the wire at "
                                   "baudrate (a pty transfers instantly)")

    @property
    def address(self) -> str:
        return f"rtu://{self.port}"

    @property
    def bits_per_char(self) -> int:
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits


class UnitSpec(_Strict):
    unit: int = Field(ge=0, le=247, description="Modbus unit (slave) id")
    profile: str = Field(min_length=1, description="profile name, or a profile file path")
    device: str | None = Field(default=None, pattern=SEGMENT,
                               description="device id, for scenarios and logs")
    values: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description="initial values by point name (scaled units)")

    @model_validator(mode="after")
    def _loads(self) -> UnitSpec:
        profile, problem = profile_problem(self.profile)
        if profile is None:
            raise_issues("UnitSpec", [(("profile",), problem)])
            return self
        issues: list[tuple[Loc, str]] = []
        names = {p.name for p in profile.points}
        for name, value in self.values.items():
            if name not in names:
                issues.append((("values", name), f"profile `{profile.name}` has no point "
                                                 f"`{name}`"))
            elif message := encode_problem(profile.point(name), value):
                issues.append((("values", name), message))
        raise_issues("UnitSpec", issues)
        return self

    def load(self) -> Profile:
        return load_profile(self.profile)


class ServerSpec(_Strict):
    tcp: TcpListen | None = None
    rtu: RtuListen | None = None
    units: list[UnitSpec] = Field(min_length=1, max_length=248)

    @model_validator(mode="after")
    def _consistent(self) -> ServerSpec:
        issues: list[tuple[Loc, str]] = []
        if (self.tcp is None) == (self.rtu is None):
            issues.append(((), "give exactly one of `tcp: {host, port}` or `rtu: {port}`"))
        seen: dict[int, int] = {}
        for index, unit in enumerate(self.units):
            if unit.unit in seen:
                issues.append((("units", index, "unit"),
                               f"unit id {unit.unit} is already units[{seen[unit.unit]}]; "
                               "one server, one unit per id"))
            seen.setdefault(unit.unit, index)
        raise_issues("ServerSpec", issues)
        return self

    @property
    def address(self) -> str:
        listen = self.tcp or self.rtu
        assert listen is not None
        return listen.address


class ScenarioRef(_Strict):
    scenario: str = Field(min_length=1, description="scenario name or file path")
    devices: list[str] = Field(default_factory=list, description="run on these device ids")
    units: list[int] = Field(default_factory=list,
                             description="run on these unit ids (of every server)")
    loop: bool | None = Field(default=None, description="override the scenario's `loop`")

    @model_validator(mode="after")
    def _loads(self) -> ScenarioRef:
        try:
            load_scenario(self.scenario)
        except ConfigError as exc:
            lines = "\n    ".join(str(issue) for issue in exc.issues)
            raise_issues("ScenarioRef", [(("scenario",), f"scenario `{self.scenario}` cannot "
                                                         f"be used:\n    {lines}")])
        return self

    def load(self) -> Scenario:
        return load_scenario(self.scenario)


class SimulateConfig(_Strict):
    servers: list[ServerSpec] = Field(min_length=1)
    scenarios: list[ScenarioRef] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _consistent(self) -> SimulateConfig:
        issues: list[tuple[Loc, str]] = []
        addresses = Counter(server.address for server in self.servers)
        devices: dict[str, tuple[int, int]] = {}
        for i, server in enumerate(self.servers):
            if addresses[server.address] > 1:
                key = "tcp" if server.tcp is not None else "rtu"
                issues.append((("servers", i, key), f"{server.address} is served twice; "
                                                   "put its units in one server entry"))
                addresses[server.address] = 0  # report once
            for j, unit in enumerate(server.units):
                if unit.device is None:
                    continue
                if unit.device in devices:
                    a, b = devices[unit.device]
                    issues.append((("servers", i, "units", j, "device"),
                                   f"device id `{unit.device}` is already servers[{a}]."
                                   f"units[{b}]"))
                devices.setdefault(unit.device, (i, j))
        for k, ref in enumerate(self.scenarios):
            issues += [(("scenarios", k, *loc), message)
                       for loc, message in self._target_issues(ref, devices)]
        raise_issues("SimulateConfig", issues)
        return self

    def _target_issues(self, ref: ScenarioRef, devices: dict[str, tuple[int, int]]
                       ) -> list[tuple[Loc, str]]:
        scenario = ref.load()
        issues: list[tuple[Loc, str]] = []
        for j, device in enumerate(ref.devices):
            if device not in devices:
                listed = ", ".join(devices) or "none have a device id"
                issues.append((("devices", j), f"no served unit is device `{device}` "
                                               f"(devices: {listed})"))
                continue
            a, b = devices[device]
            unit = self.servers[a].units[b]
            if not scenario.fits(unit.load()):
                issues.append((("devices", j), f"device `{device}` serves profile "
                                               f"`{unit.load().name}`; scenario "
                                               f"`{ref.scenario}` is for `{scenario.profile}`"))
        served_units = {u.unit for s in self.servers for u in s.units
                        if scenario.fits(u.load())}
        for j, unit_id in enumerate(ref.units):
            if unit_id not in served_units:
                issues.append((("units", j), f"no served unit {unit_id} has profile "
                                             f"`{scenario.profile}`"))
        if not ref.devices and not ref.units and not served_units:
            issues.append((("scenario",), f"scenario `{ref.scenario}` is for profile "
                                          f"`{scenario.profile}`, which no server serves"))
        return issues


# --------------------------------------------------------------------------- flags


def parse_units(text: str) -> list[int]:
    """`1-4,7` -> [1, 2, 3, 4, 7]; ValueError with the reason."""
    units: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(f"`{part}` is not a unit id or range (write e.g. 1-4,7)")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if last < first or last > 247:
            raise ValueError(f"`{part}`: unit ids are 0..247, ranges low-high")
        units += range(first, last + 1)
    if len(set(units)) != len(units):
        raise ValueError(f"`{text}` names a unit id twice")
    return units


def parse_tcp(text: str) -> list[TcpListen]:
    """`[HOST:]PORT[-LAST]` -> one listen address per port (HOST defaults to 127.0.0.1)."""
    host, _, ports = text.rpartition(":")
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", ports)
    if not match:
        raise ValueError(f"`{text}` is not [HOST:]PORT or [HOST:]FIRST-LAST")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"`{text}`: ports are 1..65535, ranges low-high")
    return [TcpListen(host=host or DEFAULT_HOST, port=port) for port in range(first, last + 1)]


def parse_scalar(text: str) -> Value:
    """A command-line value: true/false, an integer, a number, else text."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_scenario_ref(text: str, loop: bool | None) -> ScenarioRef:
    """`NAME[@TARGET,...]`: targets are unit ids or ranges (digits) or device ids."""
    name, _, targets = text.partition("@")
    devices: list[str] = []
    units: list[int] = []
    for target in filter(None, (t.strip() for t in targets.split(","))):
        if re.fullmatch(r"\d+(-\d+)?", target):
            units += parse_units(target)
        else:
            devices.append(target)
    return ScenarioRef(scenario=name, devices=devices, units=units, loop=loop)


def from_gateway(path: Path) -> tuple[list[ServerSpec], list[str]]:
    """Servers for every enabled Modbus TCP device of a gateway config, and what was skipped.

    Devices on one host:port share one server (one unit each), as behind a Modbus
    TCP gateway. RTU devices are skipped: their port is the agent's end of the line;
    serve the other end with a simulate YAML file (`rtu: {port: ...}`).
    """
    from drivers.modbus.device import ModbusDevice
    from edge_agent.sdk.config import load_gateway_config

    cfg = load_gateway_config(path)
    grouped: dict[tuple[str, int], list[UnitSpec]] = {}
    skipped: list[str] = []
    for dev in cfg.devices:
        if not isinstance(dev, ModbusDevice) or not dev.enabled:
            continue
        if dev.tcp is None:
            skipped.append(dev.id)
            continue
        grouped.setdefault((dev.tcp.host, dev.tcp.port), []).append(
            UnitSpec(unit=dev.unit_id, profile=str(dev.profile_path()), device=dev.id))
    servers = [ServerSpec(tcp=TcpListen(host=host, port=port), units=units)
               for (host, port), units in grouped.items()]
    return servers, skipped
