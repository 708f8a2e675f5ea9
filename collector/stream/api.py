"""The stream API's routes (aiohttp), documented in `openapi.yaml`.

- `GET /v1/events`: one page of events after a cursor, JSON;
- `GET /v1/events/stream`: server-sent events, `id:` = the cursor after that event.

Every route needs `Authorization: Bearer <token>`; the consumer's scope is ANDed with the
request's filters (`Filter.narrowed`), and every response is audited with the number of
events it carried. Errors are JSON `{"error": …, "parameter": …}`. The token is never
logged (aiohttp's access log is off; the API logs the consumer's name only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from collector.consumers.errors import StoreUnavailable
from collector.stream.access import ConsumerLike, ConsumersLike
from collector.stream.cursor import CursorCodec, CursorError
from collector.stream.head import Head
from collector.stream.params import MAX_QUERY_CHARS, ParamError, Query, parse_query
from collector.stream.position import Position
from collector.stream.reader import Reader
from edge_agent.contract.logs import get_logger

log = get_logger("collector.stream")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class StreamSettings:
    heartbeat_s: float = 15.0
    #: how often the server looks for new events (SSE)
    poll_s: float = 0.1
    #: a stream whose client has not taken what was written within this is told it is behind
    behind_after_s: float = 30.0


READER: web.AppKey[Reader] = web.AppKey("reader", Reader)
CODEC = web.AppKey("codec", CursorCodec)
CONSUMERS: web.AppKey[ConsumersLike] = web.AppKey("consumers", ConsumersLike)
SETTINGS = web.AppKey("settings", StreamSettings)
HEAD = web.AppKey("head", Head)
STOPPING = web.AppKey("stopping", asyncio.Event)


def error(status: int, message: str, parameter: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if len(request.query_string) > MAX_QUERY_CHARS:
        return error(414, f"query string longer than {MAX_QUERY_CHARS} characters")
    try:
        return await handler(request)
    except ParamError as exc:
        return error(400, exc.message, exc.param)


def _consumer(request: web.Request) -> ConsumerLike | web.Response:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="events"'}
    if scheme.lower() != "bearer" or not token.strip():
        return error(401, "a bearer token is required (Authorization: Bearer <token>)",
                     headers=challenge)
    try:
        consumer = request.app[CONSUMERS].authenticate(token.strip())
    except StoreUnavailable:
        log.warning("consumers_unavailable", route=request.path,
                    hint="the store holding the consumers cannot be read; see its log")
        return error(503, "the consumers' store is unavailable just now; try again",
                     headers={"Retry-After": "5"})
    if consumer is None:
        return error(401, "the token is unknown, revoked or expired", headers=challenge)
    if not consumer.scope.areas or not consumer.scope.types:
        return error(403, f"consumer {consumer.name!r} has an empty scope: it may read nothing")
    return consumer


def _start(request: web.Request, query: Query, resume: str | None = None) -> Position:
    reader = request.app[READER]
    text = resume if resume is not None else query.after
    if text is None:
        return Position.start(reader.kind)
    try:
        return request.app[CODEC].decode(text, reader.kind)
    except CursorError as exc:
        raise ParamError("Last-Event-ID" if resume is not None else "after", str(exc)) from None


@contextlib.contextmanager
def _audited_refusal(request: web.Request, consumer: ConsumerLike, route: str) -> Iterator[None]:
    """A request refused for its parameters is audited too (0 events), then answered 400."""
    try:
        yield
    except ParamError:
        request.app[CONSUMERS].audit(consumer.name, route, consumer.scope, 0)
        raise


async def events(request: web.Request) -> web.StreamResponse:
    consumer = _consumer(request)
    if isinstance(consumer, web.Response):
        return consumer
    with _audited_refusal(request, consumer, "/v1/events"):
        query = parse_query(request.query.items())
        after = _start(request, query)
    reader, codec = request.app[READER], request.app[CODEC]
    page = await asyncio.to_thread(reader.read, after, query.filter.narrowed(consumer.scope),
                                   query.limit)
    request.app[CONSUMERS].audit(consumer.name, "/v1/events", consumer.scope, len(page.events))
    body = (b'{"events":[' + b",".join(e for _, e in page.events) + b'],"next":'
            + json.dumps(codec.encode(page.next)).encode() + b',"more":'
            + (b"true" if page.more else b"false") + b"}")
    return web.Response(body=body, content_type="application/json")


async def _write(resp: web.StreamResponse, chunk: bytes, within_s: float) -> bool:
    """False when the client did not take the chunk within `within_s` (it is behind)."""
    try:
        async with asyncio.timeout(within_s):
            await resp.write(chunk)
    except TimeoutError:
        return False
    return True


async def stream(request: web.Request) -> web.StreamResponse:
    consumer = _consumer(request)
    if isinstance(consumer, web.Response):
        return consumer
    with _audited_refusal(request, consumer, "/v1/events/stream"):
        query = parse_query(request.query.items())
        resume = request.headers.get("Last-Event-ID")
        pos = _start(request, query, resume if resume else None)
    flt = query.filter.narrowed(consumer.scope)
    app = request.app
    reader, codec, settings, head = app[READER], app[CODEC], app[SETTINGS], app[HEAD]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    sent = 0
    loop = asyncio.get_running_loop()
    beat_at = loop.time() + settings.heartbeat_s
    try:
        await resp.write(b"retry: 1000\n\n")
        while not app[STOPPING].is_set():
            changed = head.waiter()
            page = await asyncio.to_thread(reader.read, pos, flt, query.limit)
            if page.events:
                chunk = b"".join(b"id: " + codec.encode(p).encode() + b"\ndata: " + body
                                 + b"\n\n" for p, body in page.events)
                last = codec.encode(page.events[-1][0])
                if not await _write(resp, chunk, settings.behind_after_s):
                    note = json.dumps({"cursor": last, "error": "this consumer fell behind: "
                                       "resume from the cursor (paging or a new stream)"})
                    await _write(resp, f"event: behind\ndata: {note}\n\n".encode(), 1.0)
                    log.info("stream_behind", consumer=consumer.name)
                    break
                sent += len(page.events)
                beat_at = loop.time() + settings.heartbeat_s
            pos = page.next
            if page.more:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, beat_at - loop.time())):
                    await changed.wait()
            if loop.time() >= beat_at:
                if not await _write(resp, b": heartbeat\n\n", settings.behind_after_s):
                    break
                beat_at = loop.time() + settings.heartbeat_s
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        app[CONSUMERS].audit(consumer.name, "/v1/events/stream", consumer.scope, sent)
    return resp


def build_app(reader: Reader, codec: CursorCodec, consumers: ConsumersLike,
              settings: StreamSettings | None = None) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=4096)
    app[READER] = reader
    app[CODEC] = codec
    app[CONSUMERS] = consumers
    app[SETTINGS] = settings or StreamSettings()
    app[STOPPING] = asyncio.Event()
    app[HEAD] = Head(reader, app[SETTINGS].poll_s)

    async def startup(app: web.Application) -> None:
        app[HEAD].start()

    async def shutdown(app: web.Application) -> None:
        app[STOPPING].set()
        await app[HEAD].stop()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/v1/events/stream", stream)
    return app
