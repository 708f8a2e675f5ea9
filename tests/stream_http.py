"""A running stream API on 127.0.0.1 for the tests and the bench, and an SSE reader."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from collector.stream.api import StreamSettings, build_app
from collector.stream.cursor import CursorCodec
from collector.stream.reader import Reader


@dataclass
class Api:
    base: str
    codec: CursorCodec


@contextlib.asynccontextmanager
async def running_api(reader: Reader, consumers: Any,
                      settings: StreamSettings | None = None) -> AsyncIterator[Api]:
    codec = CursorCodec(secrets.token_bytes(32))
    app = build_app(reader, codec, consumers, settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Api(f"http://127.0.0.1:{port}", codec)
    finally:
        await runner.cleanup()


@dataclass
class SseMessage:
    event: str
    id: str | None
    data: str


async def sse_messages(resp: aiohttp.ClientResponse) -> AsyncIterator[SseMessage | str]:
    """Messages as they arrive; a comment line comes as its text (e.g. ': heartbeat')."""
    event, ident, data = "message", None, []
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            yield line
        elif line == "":
            if data:
                yield SseMessage(event, ident, "\n".join(data))
            event, ident, data = "message", None, []
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "id":
                ident = value
            elif field == "data":
                data.append(value)
