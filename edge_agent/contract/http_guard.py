"""Connection limits an aiohttp server lacks: a deadline for the request head, caps on
connections per address and in all.

aiohttp bounds a request's size but not its time, nor how many connections one client
holds: a client that opens connections and sends half a request head ("slowloris") keeps
each one open for minutes, until the process runs out of file descriptors (the agent
has 1,024 under systemd by default) and its other tasks fail. `GuardedSite` is a
`web.TCPSite` that puts `_Guarded` in front of each connection's aiohttp handler.

Invariants:
- a connection that has not sent a whole request head (up to the blank line) within
  `head_timeout_s` of connecting is closed;
- at most `per_address` connections from one address and `total` in all are open; a
  connection over either is closed at once, before aiohttp sees it;
- what a client sent is never logged (it may hold a token); the address and the limit are.
A connection that has sent its first head is a real client: keep-alive and streams are
aiohttp's and the application's to bound.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from edge_agent.contract.logs import get_logger

__all__ = ["ConnectionLimits", "GuardedSite"]

log = get_logger("edge_agent.contract.http_guard")

_END_OF_HEAD = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    per_address: int = 32
    total: int = 256
    head_timeout_s: float = 10.0


class _Gate:
    """Who is connected, per address and in all."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.by_address: Counter[str] = Counter()
        self.total = 0

    def admit(self, address: str) -> str:
        """"" if `address` may open one more connection (it is counted), else why not."""
        if self.total >= self.limits.total:
            return "total"
        if self.by_address[address] >= self.limits.per_address:
            return "per_address"
        self.by_address[address] += 1
        self.total += 1
        return ""

    def release(self, address: str) -> None:
        self.total -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]


class _Guarded(asyncio.Protocol):
    """Stands in front of one connection's aiohttp handler and passes everything on."""

    def __init__(self, inner: asyncio.Protocol, gate: _Gate, site: str) -> None:
        self.inner, self.gate, self.site = inner, gate, site
        self.address = "?"
        self.admitted = False
        self.transport: asyncio.BaseTransport | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.tail = b""  # the last bytes of a head not yet whole

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer: Any = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self.transport = transport
        refused = self.gate.admit(self.address)
        if refused:
            limit = getattr(self.gate.limits, refused)
            log.warning("http_connection_refused", site=self.site, address=self.address,
                        reason=refused, limit=limit,
                        hint="a client holds too many connections; if it is a reverse "
                             "proxy, raise the limit")
            _abort(transport)
            return
        self.admitted = True
        self.deadline = asyncio.get_running_loop().call_later(
            self.gate.limits.head_timeout_s, self._head_late)
        self.inner.connection_made(transport)

    def _head_late(self) -> None:
        self.deadline = None
        log.warning("http_request_head_late", site=self.site, address=self.address,
                    timeout_s=self.gate.limits.head_timeout_s,
                    hint="a client connected and did not send a whole request in time: "
                         "closed (a slow or hostile client)")
        if self.transport is not None:
            _abort(self.transport)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if self.deadline is not None:
            seen = self.tail + data[:65536]
            if _END_OF_HEAD in seen or len(data) > 65536:
                self.deadline.cancel()
                self.deadline = None
                self.tail = b""
            else:
                self.tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if not self.admitted:
            return
        self.admitted = False
        self.gate.release(self.address)
        self.inner.connection_lost(exc)


def _abort(transport: asyncio.BaseTransport) -> None:
    abort = getattr(transport, "abort", None)
    if callable(abort):
        abort()
    else:
        transport.close()


class GuardedSite(web.TCPSite):
    """`web.TCPSite` with `ConnectionLimits` on every connection it accepts."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 limits: ConnectionLimits, name: str, ssl_context: ssl.SSLContext | None = None,
                 reuse_address: bool | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context,
                         reuse_address=reuse_address)
        self.limits, self.label = limits, name
        self.gate = _Gate(limits)

    async def start(self) -> None:
        self._runner._reg_site(self)  # what web.BaseSite.start does
        server = self._runner.server
        assert server is not None
        gate, label = self.gate, self.label
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guarded(server(), gate, label), self._host, self._port,
            ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
