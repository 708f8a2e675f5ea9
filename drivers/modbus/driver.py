"""The Modbus driver: builds links, pollers and rules from validated device entries.

One `Link` per TCP device, one per TCP-to-RTU gateway (`tcp.gateway`) and one per
serial port; each link's loop runs under
`edge_agent.sdk.supervise.supervise`, so a loop that crashes (a bug) is restarted with its
devices' state intact. Devices that cannot share a bus (`check_buses`) are refused here
with a ValueError listing every problem.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus.device import ModbusDevice, check_buses
from drivers.modbus.poller import DevicePoller, SerialBusLoop, TcpDeviceLoop, tcp_slots
from drivers.modbus.profile import Profile, load_profile
from drivers.modbus.tcp_link import TcpLink
from drivers.modbus.transport import Link
from edge_agent.sdk.api import EventSink, credential_salt
from edge_agent.sdk.config import DeviceConfig
from edge_agent.sdk.rules import DeviceRules
from edge_agent.sdk.supervise import supervise

__all__ = ["DeviceHandle", "ModbusDriver"]


@dataclass(frozen=True)
class DeviceHandle:
    """What the driver holds for one device (writes.py uses it)."""

    cfg: ModbusDevice
    profile: Profile
    poller: DevicePoller
    link: Link


class ModbusDriver:
    def __init__(self, devices: Sequence[DeviceConfig], sink: EventSink, *,
                 salt: bytes | None = None) -> None:
        salt = credential_salt(sink) if salt is None else salt
        mine = [d for d in devices if isinstance(d, ModbusDevice)]
        problems = check_buses(mine)
        if problems:
            raise ValueError("modbus: these devices cannot share their bus:\n  "
                             + "\n  ".join(problems))
        self.sink = sink
        self.tcp_loops: list[TcpDeviceLoop] = []
        self.bus_loops: list[SerialBusLoop] = []
        self.devices: dict[str, DeviceHandle] = {}
        buses: dict[str, list[tuple[ModbusDevice, Profile, DevicePoller]]] = defaultdict(list)
        gateways: dict[tuple[str, int], list[tuple[ModbusDevice, Profile, DevicePoller]]] = \
            defaultdict(list)
        tcp = [cfg for cfg in mine if cfg.tcp is not None and not cfg.tcp.gateway]
        phases = dict(zip((cfg.id for cfg in tcp),
                          tcp_slots([cfg.period_s for cfg in tcp], time.monotonic()),
                          strict=True))
        for index, cfg in enumerate(mine):
            profile = load_profile(cfg.profile_path())
            poller = DevicePoller(cfg, profile.plan(cfg.limits, cfg.link_cost()),
                                  DeviceRules(cfg.id, profile.events, sink, salt=salt,
                                              kind=profile.device_kind, units=profile.units(),
                                              every_poll=cfg.forward_every_reading), sink)
            if cfg.tcp is not None and cfg.tcp.gateway:
                poller.next_due += cfg.period_s * index / max(1, len(mine))
                gateways[(cfg.tcp.host.lower(), cfg.tcp.port)].append((cfg, profile, poller))
            elif cfg.tcp is not None:
                # TCP polls go in bursts (poller.tcp_slots); a bus spreads its own polls.
                poller.next_due = phases[cfg.id]
                link: Link = TcpLink(cfg.tcp.host, cfg.tcp.port, cfg.timeout_s)
                self.tcp_loops.append(TcpDeviceLoop(poller, link, phase=phases[cfg.id]))
                self.devices[cfg.id] = DeviceHandle(cfg, profile, poller, link)
            elif cfg.rtu is not None:
                # a bus takes one request at a time: spread its first polls over a period
                poller.next_due += cfg.period_s * index / max(1, len(mine))
                buses[cfg.rtu.port].append((cfg, profile, poller))
        for (host, port), group in gateways.items():
            # a TCP-to-RTU gateway is a bus: one connection, one request at a time
            link = TcpLink(host, port, max(cfg.timeout_s for cfg, _, _ in group))
            self.bus_loops.append(SerialBusLoop([poller for _, _, poller in group], link))
            for cfg, profile, poller in group:
                self.devices[cfg.id] = DeviceHandle(cfg, profile, poller, link)
        if buses:  # pymodbus (and its serial stack) only for a config with an RTU bus
            from drivers.modbus.rtu_link import RtuLink
        for group in buses.values():
            rtu = group[0][0].rtu
            assert rtu is not None
            link = RtuLink.for_port(rtu.settings(), max(cfg.timeout_s for cfg, _, _ in group),
                                    pause_s=rtu.settings().frame_gap_s() + rtu.pause_ms / 1000)
            self.bus_loops.append(SerialBusLoop([poller for _, _, poller in group], link))
            for cfg, profile, poller in group:
                self.devices[cfg.id] = DeviceHandle(cfg, profile, poller, link)

    def device(self, device_id: str) -> DeviceHandle:
        """The device called `device_id` (KeyError if this driver has none)."""
        return self.devices[device_id]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for loop in self.tcp_loops:
                tg.create_task(supervise(f"modbus:{loop.poller.cfg.id}", loop.run))
            for bus in self.bus_loops:
                tg.create_task(supervise(f"modbus-bus:{bus.link.name}", bus.run))
