"""`GET /v1/fleet` (JSON) and `GET /fleet` (the page) on the stream API's listener.

The JSON needs the same bearer token as the event routes; the consumer's scope decides
what it holds: gateways whose district, street or community is one of the scope's areas
(`""` = all), and of the alarms and each device's last event only the types the scope's
patterns match. Every answer is audited (the number of gateways it showed).

The page and its assets need no token (they hold no data); the page asks for the token
once and keeps it in `sessionStorage`, then polls the JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from importlib import resources

from aiohttp import web

from collector.fleet.model import Gateway, Thresholds
from collector.fleet.projector import FleetSettings, Projector
from collector.stream.api import CONSUMERS, READER, _consumer, error
from edge_agent.contract.logs import get_logger

log = get_logger("collector.fleet")
PROJECTOR = web.AppKey("fleet_projector", Projector)
_TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("fleet_task")
_ASSETS = {"app.js": "application/javascript", "app.css": "text/css", "page.css": "text/css",
           "zh-CN.json": "application/json", "en.json": "application/json"}


def type_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """A scope's type patterns (`*` = any run of characters) as one predicate."""
    if "*" in patterns:
        return lambda _type: True
    regex = re.compile("|".join(".*".join(map(re.escape, p.split("*"))) for p in patterns))
    return lambda type_: regex.fullmatch(type_) is not None


def area_matcher(areas: tuple[str, ...]) -> Callable[[Gateway], bool]:
    if "" in areas:
        return lambda _gw: True
    wanted = frozenset(areas)
    return lambda gw: not wanted.isdisjoint((gw.district, gw.street, gw.community))


async def fleet_json(request: web.Request) -> web.StreamResponse:
    consumer = _consumer(request)
    if isinstance(consumer, web.Response):
        return consumer
    projector = request.app[PROJECTOR]
    if not projector.ready:
        return error(503, "the fleet view is being rebuilt from the store; try again shortly",
                     headers={"Retry-After": "2"})
    scope = consumer.scope
    with projector.lock:
        body = projector.fleet.view(projector.clock(),
                                    Thresholds(projector.settings.heartbeat_s), projector.gaps,
                                    area_matcher(tuple(scope.areas)),
                                    type_matcher(tuple(scope.types)))
    shown = sum(len(c["gateways"]) for d in body["districts"] for s in d["streets"]
                for c in s["communities"])
    request.app[CONSUMERS].audit(consumer.name, "/v1/fleet", scope, shown)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def _asset(name: str) -> bytes:
    if name == "page.css":  # the gateway page's look, shared through the contract
        return resources.files("edge_agent.contract").joinpath("static/page.css").read_bytes()
    return resources.files("collector.fleet").joinpath(f"static/{name}").read_bytes()


async def page(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_asset("index.html"), content_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=_asset(name), content_type=_ASSETS[name],
                        headers={"Cache-Control": "no-store"})


def add_fleet_routes(app: web.Application, store_url: str, settings: FleetSettings) -> None:
    """The hook `collector.stream.server` calls: the routes, and the projector that runs
    (from the app's reader) while the app does."""
    app[PROJECTOR] = Projector(app[READER], store_url, settings)

    async def start(app: web.Application) -> None:
        app[_TASK] = asyncio.create_task(app[PROJECTOR].run(), name="fleet-projector")

    async def stop(app: web.Application) -> None:
        task = app[_TASK]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    app.router.add_get("/v1/fleet", fleet_json)
    app.router.add_get("/fleet", page)
    app.router.add_get("/fleet/static/{name}", asset)
