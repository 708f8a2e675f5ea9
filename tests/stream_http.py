"""A running stream API on 127.0.0.1 for the tests and the bench, and an SSE reader."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from collector.stream.api import StreamSettings, build_app
from collector.stream.cursor import CursorCodec
from collector.stream.reader import Reader
from tests.peers import free_port


@dataclass
class Served:
    """A real `edge-collector serve` process (see `serve_process`)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


def serve_process(tmp: Path, store_url: str, *, api: dict[str, Any] | None = None,
                  **config: Any) -> Served:
    """`edge-collector serve` on a free loopback port with a fresh cursor key; `api` adds
    to its `api:` section, `config` to the rest of its YAML. Returns once it listens."""
    key = tmp / "cursor.key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    port = free_port()
    cfg = tmp / "serve.yaml"
    cfg.write_text(yaml.safe_dump({
        "collector": {"id": "api"}, "store": store_url, "broker": {"url": "mqtt://127.0.0.1:1"},
        "api": {"listen": f"127.0.0.1:{port}", "cursor_key": {"file": str(key)},
                **(api or {})},
        **config}))
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "collector", "serve", "--config",
                                 str(cfg)], stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return Served(proc, port, log)
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


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
