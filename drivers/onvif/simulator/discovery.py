"""A WS-Discovery responder on a loopback UDP port: answers Probes for the simulators."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast
from urllib.parse import quote

from drivers.onvif.wsdiscovery import build_probe_matches, parse_probe
from edge_agent.contract.logs import get_logger

from .app import HOST, OnvifSimulator

__all__ = ["DiscoveryResponder"]

log = get_logger("drivers.onvif.simulator.discovery")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: DiscoveryResponder) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        message_id = parse_probe(data)
        if message_id is None or self.transport is None:
            self.owner.ignored += 1
            return
        self.owner.probes += 1
        for reply in self.owner.replies(message_id):
            self.transport.sendto(reply, addr)


class DiscoveryResponder:
    """Answers every Probe with one ProbeMatches per registered simulator (or raw bytes
    given in `extra`, e.g. a hostile reply for tests)."""

    def __init__(self, sims: list[OnvifSimulator], port: int = 0) -> None:
        self.sims, self.port = sims, port
        self.extra: list[bytes] = []
        self.probes = self.ignored = 0
        self._endpoints = {id(s): f"urn:uuid:{uuid.uuid4()}" for s in sims}
        self._transport: asyncio.DatagramTransport | None = None

    def replies(self, message_id: str) -> list[bytes]:
        out = [build_probe_matches(
            message_id, self._endpoints[id(sim)], sim.url("/onvif/device_service"),
            [f"onvif://www.onvif.org/name/{quote(sim.model)}", "onvif://www.onvif.org/hardware/SIM-1",
             "onvif://www.onvif.org/type/video_encoder"]) for sim in self.sims]
        return out + self.extra

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(HOST, self.port))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        log.info("ws_discovery_responder_started", address=f"{HOST}:{self.port}")

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> DiscoveryResponder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
