"""The stream API's routes (aiohttp), documented in `openapi.yaml`.

- `GET /v1/events`: one page of events after a cursor, JSON;
- `GET /v1/events/stream`: server-sent events, `id:` = the cursor after that event.

Every route needs `Authorization: Bearer <token>`; the consumer's scope is ANDed with the
request's filters (`Filter.narrowed`), and every response is audited with the number of
events it carried. Errors are JSON `{"error": …, "parameter": …}`. The token is never
logged (aiohttp's access log is off; the API logs the consumer's name only).

An open stream checks its token again (`ConsumersLike.check`, cached) before each
delivery and every `recheck_s` while idle, and ends with `event: revoked`/`expired`/
`scope_changed`/`unavailable` once it no longer reads as it did when it opened. A cursor
beyond the store's end (a store replaced since it was issued) is a 400, as a forged one.
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
    #: how often an idle stream re-checks its token (it is checked before each delivery too)
    recheck_s: float = 1.0


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


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _consumer(request: web.Request) -> ConsumerLike | web.Response:
    token = _bearer(request)
    challenge = {"WWW-Authenticate": 'Bearer realm="events"'}
    if token is None:
        return error(401, "a bearer token is required (Authorization: Bearer <token>)",
                     headers=challenge)
    try:
        consumer = request.app[CONSUMERS].authenticate(token)
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


#: A signed cursor past the store's end: the store was replaced or restored since.
BEYOND_END = ("cursor is beyond the end of this store (was the store replaced or restored?): "
              "read again without it, from the beginning (with `since` to skip older events)")


async def _start(request: web.Request, query: Query, resume: str | None = None) -> Position:
    """Where a read starts: the beginning, or a cursor this server issued for a position
    this store has reached. The end is read after decoding (a cursor issued a moment ago
    for the newest row is valid); the head task's position, which lags by `poll_s`, spares
    that read for every cursor it has passed already."""
    reader = request.app[READER]
    text = resume if resume is not None else query.after
    if text is None:
        return Position.start(reader.kind)
    param = "Last-Event-ID" if resume is not None else "after"
    try:
        pos = request.app[CODEC].decode(text, reader.kind)
    except CursorError as exc:
        raise ParamError(param, str(exc)) from None
    if pos > request.app[HEAD].position and pos > await asyncio.to_thread(reader.end):
        raise ParamError(param, BEYOND_END)
    return pos


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
        after = await _start(request, query)
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
        pos = await _start(request, query, resume if resume else None)
    flt = query.filter.narrowed(consumer.scope)
    app = request.app
    reader, codec, settings, head = app[READER], app[CODEC], app[SETTINGS], app[HEAD]
    token = _bearer(request)
    assert token is not None  # `_consumer` answered 401 otherwise
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    sent = 0
    ended: str | None = None
    loop = asyncio.get_running_loop()
    beat_at = loop.time() + settings.heartbeat_s
    check_at = loop.time() + settings.recheck_s
    try:
        await resp.write(b"retry: 1000\n\n")
        while not app[STOPPING].is_set():
            changed = head.waiter()
            page = await asyncio.to_thread(reader.read, pos, flt, query.limit)
            if page.events:
                ended = _refusal(app[CONSUMERS], token, consumer)  # before each delivery
                if ended is not None:
                    break
                check_at = loop.time() + settings.recheck_s
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
            # Idle: wait for new events; re-check the token every `recheck_s` meanwhile.
            while not changed.is_set() and not app[STOPPING].is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(beat_at, check_at) - loop.time())):
                        await changed.wait()
                if loop.time() >= check_at:
                    ended = _refusal(app[CONSUMERS], token, consumer)
                    check_at = loop.time() + settings.recheck_s
                    if ended is not None:
                        break
                if loop.time() >= beat_at:
                    if not await _write(resp, b": heartbeat\n\n", settings.behind_after_s):
                        return resp
                    beat_at = loop.time() + settings.heartbeat_s
                    break  # read again after a heartbeat, as before a wake-up
            if ended is not None:
                break
        if ended is not None:
            note = json.dumps({"cursor": codec.encode(pos), "reason": ended,
                               "error": _ENDED[ended]})
            event = "revoked" if ended == "unknown" else ended
            await _write(resp, f"event: {event}\ndata: {note}\n\n".encode(), 1.0)
            log.info("stream_ended", consumer=consumer.name, reason=ended, events=sent)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        route = "/v1/events/stream" + (f" (ended: {ended})" if ended else "")
        app[CONSUMERS].audit(consumer.name, route, consumer.scope, sent)
    return resp


#: Why an open stream ended for its token (the `error` of its last event).
_ENDED = {
    "revoked": "the token was revoked: resume from the cursor with another token "
               "(edge-collector consumers token)",
    "unknown": "the token is no longer known (was the store replaced?): resume with a valid "
               "token",
    "expired": "the token expired: resume from the cursor with another token "
               "(edge-collector consumers token)",
    "scope_changed": "the consumer's scope changed: open a new stream, which reads with the "
                     "new scope",
    "unavailable": "the consumers' store cannot be read just now, so the token cannot be "
                   "checked: resume from the cursor in a few seconds",
}


def _refusal(consumers: ConsumersLike, token: str, consumer: ConsumerLike) -> str | None:
    """None while `token` still reads as `consumer` did when its stream opened; else why
    not (a key of `_ENDED`). Cached by `collector.consumers` (a lookup at most every 2 s
    a token), so cheap before every delivery."""
    try:
        found = consumers.check(token)
    except StoreUnavailable:
        log.warning("consumers_unavailable", route="/v1/events/stream",
                    hint="the store holding the consumers cannot be read; see its log")
        return "unavailable"
    if isinstance(found, str):
        return found if found in _ENDED else "unknown"
    if found.name != consumer.name or found.scope != consumer.scope:
        return "scope_changed"
    return None


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
