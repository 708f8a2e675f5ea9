"""Slow and greedy HTTP clients against the agent's status page and the collector's API
(edge_agent/contract/http_guard.py): half-sent request heads are closed after a deadline,
connections beyond a per-address and a total cap are closed at once, and a malformed
request never puts what it carried (a token) into the log.

Found by attacking the running agent: 1,100 connections each sending half a request head
took the agent (1,024 file descriptors under systemd) down to `Too many open files`: its
drivers task crashed in a loop and /healthz stopped answering.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edge_agent.contract import logs
from edge_agent.contract.http_guard import ConnectionLimits, GuardedSite
from tests.harness import Proc, gateway_yaml, sim_devices, wait_for, write_yaml
from tests.peers import free_port, self_signed

HALF_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    for _ in range(30):
        await resp.write(b"tick\n")
        await asyncio.sleep(0.1)
    return resp


async def _site(limits: ConnectionLimits, ctx: ssl.SSLContext | None = None
                ) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/", _hello)
    app.router.add_get("/stream", _stream)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await GuardedSite(runner, "127.0.0.1", port, limits=limits, name="test",
                      ssl_context=ctx).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the server closes the connection within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_half_sent_heads_are_closed_and_greedy_clients_capped() -> None:
    limits = ConnectionLimits(per_address=3, total=10, head_timeout_s=0.8)
    async for port in _site(limits):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, writer in held:
            writer.write(HALF_HEAD)
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed_within(reader, 1.0), "a 4th connection from one address"
        writer.close()
        assert not await _closed_within(held[0][0], 0.3), "closed before its deadline"
        for reader, _ in held:  # the deadline: 0.8 s after connecting
            assert await _closed_within(reader, 2.0)
        for _, writer in held:
            writer.close()
        # the slots are free again, and a whole request is served as ever
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/") as r:
            assert r.status == 200 and await r.text() == "hello"


async def test_a_client_that_sent_its_head_is_not_timed_out() -> None:
    """A stream lasts longer than the head deadline; a head sent in pieces within it counts."""
    async for port in _site(ConnectionLimits(per_address=3, total=10, head_timeout_s=0.5)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for piece in (b"GET /stream HTTP/1.1\r\n", b"Host: 127.0.0.1\r\nConnection: close\r",
                      b"\n\r", b"\n"):
            writer.write(piece)  # the blank line split across packets
            await asyncio.sleep(0.05)
        body = b""
        while chunk := await reader.read(4096):
            body += chunk
        writer.close()
        assert body.count(b"tick") == 30  # 3 s of stream, long past the head deadline


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path / "tls")


async def test_the_limits_hold_over_tls(certs: tuple[Path, Path]) -> None:
    cert, key = certs
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    async for port in _site(ConnectionLimits(per_address=2, total=10, head_timeout_s=0.8),
                            server):
        async with aiohttp.ClientSession() as s, s.get(f"https://127.0.0.1:{port}/",
                                                       ssl=client) as r:
            assert r.status == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.write(HALF_HEAD)
        assert await _closed_within(reader, 3.0)
        writer.close()


async def test_a_malformed_request_logs_no_token_and_no_traceback(
        tmp_path: Path) -> None:
    """aiohttp logged a request line too long as an error with a traceback quoting the
    line: a consumer token in its query string went into the collector's log in clear."""
    token = "cdt_" + "x" * 43
    buf = io.StringIO()
    logs.configure("info", stream=buf)
    try:
        async for port in _site(ConnectionLimits()):
            url = f"http://127.0.0.1:{port}/?access_token={token}&type={'a' * 9000}"
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                assert r.status in (400, 414)
            await asyncio.sleep(0.2)
    finally:
        logs.configure("info")
    text = buf.getvalue()
    assert token not in text and "xxxxxxxx" not in text
    assert "Traceback" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["event"].startswith("http_bad_request: LineTooLong") and
               line["level"] == "warning" for line in lines), lines


def _still_open(sockets: list[socket.socket]) -> int:
    """How many of the flood's connections the server has not closed yet."""
    count = 0
    for s in sockets:
        try:
            count += s.recv(1) != b""
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


@pytest.mark.timeout(120)
def test_an_agent_under_a_slow_connection_flood_keeps_working(tmp_path: Path) -> None:
    """The real agent with systemd's default 1,024 file descriptors and 1,100 connections
    sending half a head: it refuses what is over its caps, closes the rest after the
    head deadline, and its devices never stop being polled."""
    port = free_port()
    cfg = gateway_yaml("gw-flood", f"mqtt://127.0.0.1:{free_port()}", tmp_path / "outbox.db",
                       devices=sim_devices(2, period_s=0.2))
    cfg["status_page"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
    log_path = tmp_path / "agent.log"
    proc = Proc([sys.executable, "-c", "import resource, sys; resource.setrlimit("
                 "resource.RLIMIT_NOFILE, (1024, 1024)); from edge_agent.cli import main; "
                 "sys.argv = ['edge-agent', 'run', '--config', sys.argv[1]]; main()",
                 str(write_yaml(tmp_path / "gw.yaml", cfg))], log_path).start()
    flood: list[socket.socket] = []
    try:
        wait_for(lambda: any(e.get("event") == "status_page_listening"
                             for e in proc.log_events()), 30, "the status page")
        for _ in range(1100):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(HALF_HEAD)
            except OSError:
                s.close()
                continue
            flood.append(s)
        for s in flood:
            s.setblocking(False)
        wait_for(lambda: _still_open(flood) == 0, 30,
                 "every half-sent connection closed (the 10 s head deadline)")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 ")
        events = proc.log_events()
        names = {e.get("event") for e in events}
        assert "http_connection_refused" in names and "http_request_head_late" in names
        assert not any("Too many open files" in json.dumps(e) for e in events)
        assert not any(e.get("event") == "task_crashed" for e in events), \
            [e for e in events if e.get("level") == "error"][:3]
    finally:
        for s in flood:
            s.close()
        proc.stop()
