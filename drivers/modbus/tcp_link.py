"""A Modbus TCP link on a plain asyncio protocol: one connection, one request at a time.

Why not pymodbus' client here: its transaction layer costs about as much CPU per request
as everything else the agent does for a poll (issue 3: 100-500 devices polled every
second on a gateway box). This link sends one MBAP frame (`mbap.read_request`), waits for
the frame with the same transaction id and checks it (`mbap.parse_read_reply`); pymodbus
still drives RTU buses (`rtu_link.py`) and plays the devices in tests and the simulator.

Late replies: a request that times out or gets a garbled reply drops the connection,
so nothing that arrives late can be read as the answer to a later request; within a
connection a reply must carry the transaction id of the request in flight. Frames with
another transaction id are dropped (a stray late reply is harmless), but when the
timeout expires and only such frames came, the error names both ids (a device or gateway
that does not echo the transaction id answers, it is not silent).

Peers that close the connection after every reply (cheap gateways): a request that
fails because the peer closed a connection on which an exchange already completed,
before any byte of its reply, is sent once more on a fresh connection. Only once: the
fresh connection has no completed exchange, so a device that is really down fails the
request and the poller backs off as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import cast

from drivers.modbus import mbap
from drivers.modbus.points import Table
from drivers.modbus.transport import (
    EXCEPTION_NAMES,
    Link,
    ModbusConnectionError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusProtocolError,
    ModbusTimeout,
)

__all__ = ["TcpLink"]

#: A request's bytes for a transaction id.
_Build = Callable[[int], bytes]


class _Connection(asyncio.Protocol):
    """Frames in, the reply to the request in flight out; knows nothing of registers."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = mbap.FrameReader()
        self.waiting: tuple[int, asyncio.Future[mbap.Frame]] | None = None
        self.lost: Exception | None = None
        self.garbage = b""  # bytes that could not be framed, for the error message
        self.completed = 0  # exchanges answered on this connection
        self.heard = False  # a byte arrived while the current request was in flight
        self.stray: int | None = None  # the transaction id of a frame nobody waited for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass)
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.waiting is not None:
            self.heard = True
        try:
            frames = self.reader.feed(data)
        except mbap.FrameError as exc:
            self.garbage = self.reader.pending()
            self._fail(exc)
            return
        for frame in frames:
            waiting = self.waiting
            if waiting is None or waiting[1].done():
                continue  # answers a request nobody waits for any more: dropped
            if frame.transaction == waiting[0]:
                self.completed += 1
                waiting[1].set_result(frame)
            else:  # a stray late reply, or a peer that does not echo the id: dropped
                self.stray = frame.transaction

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(exc or ConnectionResetError("the device closed the connection"))

    def _fail(self, exc: Exception) -> None:
        self.lost = exc
        if self.waiting is not None and not self.waiting[1].done():
            self.waiting[1].set_exception(exc)
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class TcpLink(Link):
    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        super().__init__(f"tcp://{host}:{port}", timeout_s)
        self.host, self.port = host, port
        self._conn: _Connection | None = None
        self._transaction = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.transport is not None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
            conn.transport = None

    async def read_locked(self, table: Table, start: int, count: int, unit: int, *,
                          timeout_s: float | None = None) -> list[int] | list[bool]:
        what = f"{self.name} unit {unit}: read {table.value} {start}..{start + count - 1}"
        function = table.read_function
        frame = await self._exchange(
            what, lambda tid: mbap.read_request(tid, unit, function, start, count),
            unit, timeout_s)
        try:
            return mbap.parse_read_reply(frame.pdu, function, count)
        except mbap.ExceptionReply as exc:
            raise _refused(what, exc.code) from None
        except mbap.ReplyError as exc:
            raise self._garbled(what, str(exc)) from None

    async def write_locked(self, table: Table, start: int,
                           values: Sequence[int] | Sequence[bool], unit: int, *,
                           timeout_s: float | None = None) -> int:
        fc, what = self.write_plan(table, start, values, unit)
        single = len(values) == 1
        frame = await self._exchange(
            what, lambda tid: mbap.write_request(tid, unit, fc, start, values), unit, timeout_s)
        try:
            address, echo = mbap.parse_write_reply(frame.pdu, fc)
        except mbap.ExceptionReply as exc:
            raise _refused(what, exc.code) from None
        except mbap.ReplyError as exc:
            raise self._garbled(what, str(exc)) from None
        expected = ((0xFF00 if values[0] else 0) if fc == 5 else int(values[0])) if single \
            else len(values)
        if address != start or echo != expected:
            raise self._garbled(what, f"the device's echo (address {address}) does not "
                                      "match the request")
        return fc

    # ------------------------------------------------------------------ internals

    async def _exchange(self, what: str, build: _Build, unit: int,
                        timeout_s: float | None) -> mbap.Frame:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        conn = await self._connected(what)
        try:
            return await self._send(conn, what, build, unit, timeout)
        except _PeerClosed as closed:
            if not closed.retry:
                raise ModbusConnectionError(str(closed)) from None
        # the peer closed a connection that had served a reply (gateways that close after
        # every reply): once more on a fresh one, which cannot qualify for another retry
        try:
            return await self._send(await self._connected(what), what, build, unit, timeout)
        except _PeerClosed as closed:
            raise ModbusConnectionError(str(closed)) from None

    async def _send(self, conn: _Connection, what: str, build: _Build, unit: int,
                    wait_s: float) -> mbap.Frame:
        assert conn.transport is not None
        self._transaction = tid = (self._transaction + 1) & 0xFFFF
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[mbap.Frame] = loop.create_future()
        conn.waiting = (tid, reply)
        conn.heard, conn.stray = False, None
        timer = loop.call_later(wait_s, _expire, reply)
        try:
            conn.transport.write(build(tid))
            frame = await reply
        except TimeoutError:
            if conn.stray is not None:
                raise self._garbled(
                    what, f"no reply with transaction id {tid} within {wait_s:g}s, only one "
                    f"with transaction id {conn.stray} (the device or gateway does not echo "
                    "the transaction id)") from None
            self.close()
            raise ModbusTimeout(f"{what}: no reply within {wait_s:g}s") from None
        except mbap.FrameError:
            self.close()
            raise ModbusProtocolError(
                f"{what}: no valid reply within {wait_s:g}s, only {_preview(conn.garbage)} "
                "(CRC error, framing garbage or a reply from another unit)") from None
        except OSError as exc:
            self.close()
            raise _PeerClosed(f"{what}: connection lost: {exc}",
                              retry=conn.completed > 0 and not conn.heard) from None
        finally:
            timer.cancel()
            conn.waiting = None
        if unit and frame.unit != unit:
            raise self._garbled(what, f"the reply comes from unit {frame.unit}")
        return frame

    async def _connected(self, what: str) -> _Connection:
        if self._conn is not None and self._conn.transport is not None:
            return self._conn
        self.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s + 1.0):
                _, conn = await loop.create_connection(_Connection, self.host, self.port)
        except (TimeoutError, OSError):
            raise ModbusConnectionError(
                f"{what}: cannot connect: no Modbus TCP server answers at {self.name} within "
                f"{self.timeout_s + 1.0:g}s (refused, unreachable or filtered)") from None
        self._conn = conn
        return conn

    def _garbled(self, what: str, detail: str) -> ModbusProtocolError:
        """A reply that does not answer the request: `garbled reply` on the status page."""
        self.close()  # whatever else is on this connection can no longer be trusted
        return ModbusProtocolError(f"{what}: garbled reply: {detail}")


class _PeerClosed(Exception):
    """The connection failed during a request; `retry`: on a fresh one (see the module)."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def _expire(reply: asyncio.Future[mbap.Frame]) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError())


def _refused(what: str, code: int) -> ModbusError:
    name = EXCEPTION_NAMES.get(code, "unknown exception code")
    return ModbusExceptionResponse(f"{what}: exception {code} ({name})", code)


def _preview(data: bytes) -> str:
    return f"{data[:16].hex(' ')}{' ...' if len(data) > 16 else ''}" if data else "nothing"
