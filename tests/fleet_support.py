"""Helpers for the fleet view tests: real envelopes through the collector's validator,
and the stream API app with the fleet routes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from collector.fleet.projector import FleetSettings
from collector.fleet.routes import add_fleet_routes
from collector.model import EventRow
from collector.store import Origin, Store
from collector.stream.api import build_app
from collector.stream.cursor import CursorCodec
from collector.stream.reader import open_reader
from collector.validate import check_payload
from edge_agent.contract.envelope import Hierarchy, new_event
from edge_agent.contract.topics import GatewayTopics
from edge_agent.contract.wire import encode_batch

DISTRICT, STREET = "371312", "371312001"
EAST, WEST = "371312001001", "371312001002"


class Gw:
    """One gateway's stream: stamps seqs in order, validates like the collector does."""

    def __init__(self, gateway: str, community: str = EAST) -> None:
        self.gateway, self.community = gateway, community
        self.hierarchy = Hierarchy(district=DISTRICT, street=STREET, community=community,
                                   gateway=gateway)
        self.epoch = secrets.token_hex(8)
        self.seq = 0

    def rows(self, *specs: tuple[str, str, dict[str, Any]]) -> list[EventRow]:
        """(device, type, data) each -> validated rows (the validator must accept all)."""
        events = []
        for device, type_, data in specs:
            self.seq += 1
            events.append(new_event(self.hierarchy, device, type_, data)
                          .stamped(self.epoch, self.seq))
        verdict = check_payload(encode_batch(e.to_json() for e in events),
                                GatewayTopics(DISTRICT, self.community, self.gateway))
        assert not verdict.rejected, verdict.rejected
        return list(verdict.accepted)

    def cloud_events(self, *specs: tuple[str, str, dict[str, Any]]) -> list[dict[str, Any]]:
        return [json.loads(r.envelope_json()) for r in self.rows(*specs)]

    def ingest(self, store: Store, *specs: tuple[str, str, dict[str, Any]]) -> None:
        origin = Origin(f"cd/v1/{DISTRICT}/{self.community}/{self.gateway}/events",
                        self.gateway)
        store.ingest(origin, self.rows(*specs), [])

    def heartbeat(self, **data: Any) -> tuple[str, str, dict[str, Any]]:
        return (self.gateway, "gateway.heartbeat", {"uptime_s": 10, **data})


@contextlib.asynccontextmanager
async def running_fleet(store_url: str, consumers: Any,
                        settings: FleetSettings) -> AsyncIterator[str]:
    """The stream API app with the fleet hook, as `serve_api` builds it; yields its URL."""
    reader = open_reader(store_url)
    app = build_app(reader, CursorCodec(secrets.token_bytes(32)), consumers)
    add_fleet_routes(app, store_url, settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        reader.close()
