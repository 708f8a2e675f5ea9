"""A minimal asyncio MQTT v5 client for the city bench's simulated gateways.

Why not aiomqtt: the gateways are the load generator, not the system under test, and with
aiomqtt (paho) 3,000 connections at 1,500 events/s cost a full core of a 2-core box (paho's
misc loop wakes every client every second, its Python packet machinery, callbacks from
its socket handling into asyncio), which starved the collectors and PostgreSQL being
measured. This client is one `asyncio.Protocol` per connection, no threads, no per-client
task, and exactly what `bench._city_gateway.SimGateway` uses:

- CONNECT (v5, clean start, keepalive, optional user name and password) and its CONNACK,
  a refusal raised as `ConnectRefused` with the reason code and its name;
- SUBSCRIBE (one filter, QoS 0/1) awaiting its SUBACK (a failure code raised);
- PUBLISH QoS 0, or QoS 1 awaiting its PUBACK (a reason code >= 0x80: `PublishRefused`),
  at most the broker's Receive Maximum in flight (the rest wait for a slot);
- incoming PUBLISH QoS 0/1 handed to `on_message(topic, payload)` synchronously from
  the protocol (QoS 1: the PUBACK is sent right after);
- PINGREQ when nothing was sent for half the keepalive, one `loop.call_later` per client
  (at the bench's 60 s keepalive: 3,000 clients are ~70 timer callbacks/s); a broker
  silent for 1.5 keepalives is a lost connection, as for paho;
- DISCONNECT, which never waits (a broken socket cannot hang a teardown).

Frames are parsed defensively: the remaining length's variable byte integer is at most
four bytes, properties are skipped by their length, anything malformed or unexpected
closes the connection with `ProtocolError`, so a hostile or broken peer ends in an
exception on `closed()`, never in a hang (every wait here has a timeout) or a crash.
QoS 2, topic aliases, will, sessions and TLS are left out on purpose: the bench's
Mosquitto is plain and anonymous on 127.0.0.1, and its gateways use none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
_PINGREQ_FRAME, _DISCONNECT_FRAME = b"\xc0\x00", b"\xe0\x00"
#: the v5 property identifiers of CONNACK the client reads
_RECEIVE_MAXIMUM = 0x21

REASONS = {
    0x01: "unacceptable protocol version (an MQTT 3.1.1 broker)",
    0x02: "identifier rejected (an MQTT 3.1.1 broker)",
    0x04: "bad user name or password (an MQTT 3.1.1 broker)",
    0x05: "not authorized (an MQTT 3.1.1 broker)",
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
    0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy",
    0x8A: "banned", 0x8C: "bad authentication method", 0x8E: "session taken over",
    0x8F: "topic filter invalid", 0x90: "topic name invalid", 0x91: "packet identifier in use",
    0x93: "receive maximum exceeded", 0x95: "packet too large", 0x97: "quota exceeded",
    0x99: "payload format invalid", 0x9F: "connection rate exceeded",
}


def reason_name(code: int) -> str:
    return REASONS.get(code, "unknown reason")


class MqttError(Exception):
    """The connection is unusable (lost, refused, or the peer broke the protocol)."""


class ProtocolError(MqttError):
    """The peer sent something this client cannot parse or did not expect."""


class ConnectRefused(MqttError):
    """The broker's CONNACK refused the connection."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the broker refused the connection: 0x{code:02X} {reason_name(code)}")
        self.code = code


class PublishRefused(MqttError):
    """A PUBACK or SUBACK carried a failure reason code (>= 0x80)."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what} refused: 0x{code:02X} {reason_name(code)}")
        self.code = code


# ---------------------------------------------------------------------- encoding


def varint(n: int) -> bytes:
    """The MQTT variable byte integer (1-4 bytes, at most 268,435,455)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"{n} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def utf8(s: str) -> bytes:
    data = s.encode()
    if len(data) > 0xFFFF:
        raise ValueError("an MQTT string is at most 65,535 bytes")
    return struct.pack("!H", len(data)) + data


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def connect_frame(client_id: str, keepalive_s: int, username: str | None,
                  password: str | None) -> bytes:
    flags = 0x02  # clean start
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = utf8("MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive_s) + b"\x00"
    body += utf8(client_id)
    if username is not None:
        body += utf8(username)
    if password is not None:
        pw = password.encode()
        body += struct.pack("!H", len(pw)) + pw
    return frame(CONNECT, body)


def publish_frame(topic: str, payload: bytes, qos: int, packet_id: int) -> bytes:
    head = utf8(topic) + (struct.pack("!H", packet_id) if qos else b"") + b"\x00"
    return frame(PUBLISH | (qos << 1), head + payload)


# ---------------------------------------------------------------------- decoding


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, next position), or None when the buffer ends first; a fifth byte with the
    continuation bit set is malformed (the spec's limit), not something to wait for."""
    value, shift = 0, 0
    for i in range(4):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ProtocolError("a variable byte integer longer than 4 bytes")


def _properties(body: memoryview, pos: int) -> tuple[memoryview, int]:
    """The properties block at `pos` and the position after it (skipped by its length)."""
    got = read_varint(body, pos)
    if got is None:
        raise ProtocolError("truncated properties length")
    length, start = got
    if start + length > len(body):
        raise ProtocolError("properties longer than the packet")
    return body[start:start + length], start + length


def receive_maximum(props: memoryview) -> int | None:
    """The Receive Maximum in a CONNACK's properties, walking only the ones a broker sends
    (fixed-size, strings, binary, user properties); None when absent or unparseable."""
    sizes = {0x01: 1, 0x02: 4, 0x11: 4, 0x13: 2, 0x17: 1, 0x19: 1, 0x21: 2, 0x22: 2,
             0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}
    pos = 0
    while pos < len(props):
        ident = props[pos]
        pos += 1
        if ident == _RECEIVE_MAXIMUM and pos + 2 <= len(props):
            return int(struct.unpack_from("!H", props, pos)[0])
        if ident in sizes:
            pos += sizes[ident]
        elif ident in (0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F):  # str / bin
            if pos + 2 > len(props):
                return None
            pos += 2 + struct.unpack_from("!H", props, pos)[0]
        elif ident == 0x26:  # user property: two strings
            for _ in range(2):
                if pos + 2 > len(props):
                    return None
                pos += 2 + struct.unpack_from("!H", props, pos)[0]
        else:
            return None
    return None


# ---------------------------------------------------------------------- the client

OnMessage = Callable[[str, bytes], None]


class LeanClient(asyncio.Protocol):
    """One MQTT v5 connection. `await connect()`, then `subscribe`/`publish`; `closed()`
    finishes when the connection ends (raising `MqttError` unless `disconnect()` ended it).
    """

    def __init__(self, host: str, port: int, client_id: str, *, keepalive_s: int = 60,
                 username: str | None = None, password: str | None = None,
                 on_message: OnMessage | None = None, timeout_s: float = 10.0) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.keepalive_s, self.username, self.password = keepalive_s, username, password
        self.on_message = on_message
        self.timeout_s = timeout_s
        self.receive_max = 65535
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[int]] = {}  # packet id -> PUBACK/SUBACK code
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._next_id = 0
        self._writable: asyncio.Future[None] | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._last_sent = self._last_received = 0.0

    # ------------------------------------------------------------------ the session

    async def connect(self) -> None:
        """Open the connection and wait for a successful CONNACK (`timeout_s` in all)."""
        loop = self._loop = asyncio.get_running_loop()
        self._connack, self._closed = loop.create_future(), loop.create_future()
        async with asyncio.timeout(self.timeout_s):
            try:
                await loop.create_connection(lambda: self, self.host, self.port)
            except OSError as exc:
                self._fail(MqttError(f"cannot connect to {self.host}:{self.port}: {exc}"))
                raise MqttError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
            self._send(connect_frame(self.client_id, self.keepalive_s, self.username,
                                     self.password))
            try:
                await self._connack
            except BaseException:
                self.disconnect()
                raise
        if self.keepalive_s:
            self._ping_timer = loop.call_later(self.keepalive_s / 2, self._keepalive)

    async def closed(self) -> None:
        """Wait for the end of the connection; raises the reason unless we ended it."""
        assert self._closed is not None, "connect() first"
        await asyncio.shield(self._closed)

    def disconnect(self) -> None:
        """Send DISCONNECT (normal) and close; never waits, so nothing can hang on it."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_DISCONNECT_FRAME)
            transport.close()
        self._fail(None)

    # ------------------------------------------------------------------ requests

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Until the SUBACK (TimeoutError after `timeout_s`)."""
        pid = self._packet_id()
        body = struct.pack("!H", pid) + b"\x00" + utf8(topic_filter) + bytes((qos,))
        async with asyncio.timeout(self.timeout_s):
            code = await self._request(pid, frame(SUBSCRIBE, body))
        if code >= 0x80:
            raise PublishRefused(f"SUBSCRIBE {topic_filter}", code)

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """QoS 0: written; QoS 1: until the PUBACK (TimeoutError after `timeout_s`,
        counting the wait for an in-flight slot)."""
        if qos == 0:
            self._check_open()
            self._send(publish_frame(topic, payload, 0, 0))
            return
        if qos != 1:
            raise ValueError("this client publishes QoS 0 or 1")
        async with asyncio.timeout(self.timeout_s):
            while len(self._pending) >= self.receive_max:
                assert self._loop is not None
                slot = self._loop.create_future()
                self._slot_waiters.append(slot)
                try:
                    await slot
                finally:
                    with contextlib.suppress(ValueError):
                        self._slot_waiters.remove(slot)
            pid = self._packet_id()
            code = await self._request(pid, publish_frame(topic, payload, 1, pid))
        if code >= 0x80:
            raise PublishRefused(f"PUBLISH {topic}", code)

    async def _request(self, pid: int, data: bytes) -> int:
        self._check_open()
        assert self._loop is not None
        fut: asyncio.Future[int] = self._loop.create_future()
        self._pending[pid] = fut
        try:
            if self._writable is not None:  # the socket buffer is full: wait for it
                await asyncio.shield(self._writable)
            self._send(data)
            return await fut
        finally:
            if self._pending.get(pid) is fut:
                del self._pending[pid]
                self._free_slot()

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._pending:
                return self._next_id
        raise MqttError("no free packet identifier")

    def _free_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _check_open(self) -> None:
        if self._closed is None or self._transport is None:
            raise MqttError("not connected")
        if self._closed.done():
            exc = self._closed.exception() if not self._closed.cancelled() else None
            raise MqttError(f"connection closed: {exc}" if exc else "connection closed")

    def _send(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)
        self._last_sent = time.monotonic()

    # ------------------------------------------------------------------ keepalive

    def _keepalive(self) -> None:
        """Ping when nothing was sent for half the keepalive; a broker silent for 1.5×
        keepalive (not even a PINGRESP) is taken for dead."""
        if self._transport is None or self._transport.is_closing():
            return
        now = time.monotonic()
        if now - self._last_received > 1.5 * self.keepalive_s:
            self._abort(MqttError(f"no packet from the broker for {1.5 * self.keepalive_s} s"))
            return
        if now - self._last_sent >= self.keepalive_s / 2 - 0.01:
            self._send(_PINGREQ_FRAME)
        assert self._loop is not None
        self._ping_timer = self._loop.call_later(self.keepalive_s / 2, self._keepalive)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._last_received = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(MqttError(f"connection lost: {exc or 'closed by the broker'}"))

    def pause_writing(self) -> None:
        if self._loop is not None and self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    def data_received(self, data: bytes) -> None:
        self._last_received = time.monotonic()
        if self._buf:  # the rest of a frame that came in parts
            self._buf += data
            data = bytes(self._buf)
        view, pos = memoryview(data), 0  # over immutable bytes: slices stay valid
        try:
            while len(data) - pos >= 2:
                got = read_varint(data, pos + 1)
                if got is None:
                    break
                length, start = got
                end = start + length
                if end > len(data):
                    break
                self._packet(data[pos], view[start:end])
                pos = end
        except ProtocolError as exc:
            self._abort(exc)
            return
        self._buf = bytearray(data[pos:]) if pos < len(data) else bytearray()

    # ------------------------------------------------------------------ packets

    def _packet(self, first: int, body: memoryview) -> None:
        kind = first & 0xF0
        if kind == PUBLISH:
            self._on_publish(first, body)
        elif kind in (PUBACK, SUBACK):
            if len(body) < 2:
                raise ProtocolError(f"truncated {'PUBACK' if kind == PUBACK else 'SUBACK'}")
            pid = struct.unpack_from("!H", body)[0]
            if kind == PUBACK:
                code = body[2] if len(body) > 2 else 0
            else:
                _, pos = _properties(body, 2)
                if pos >= len(body):
                    raise ProtocolError("a SUBACK without a reason code")
                code = body[pos]
            fut = self._pending.get(pid)
            if fut is not None and not fut.done():
                fut.set_result(code)
        elif kind == CONNACK:
            self._on_connack(body)
        elif kind == PINGRESP:
            pass
        elif kind == DISCONNECT:
            code = body[0] if body else 0
            raise ProtocolError(f"the broker disconnected: 0x{code:02X} {reason_name(code)}")
        else:
            raise ProtocolError(f"unexpected packet type 0x{first:02X}")

    def _on_connack(self, body: memoryview) -> None:
        if self._connack is None or self._connack.done():
            raise ProtocolError("an unexpected CONNACK")
        if len(body) < 2:
            raise ProtocolError("truncated CONNACK")
        code = body[1]
        if code:  # a v3.1.1 broker answers with 2 bytes and its own codes (0x01 ...)
            self._connack.set_exception(ConnectRefused(code))
            return
        if len(body) > 2:
            props, _ = _properties(body, 2)
            self.receive_max = receive_maximum(props) or 65535
        self._connack.set_result(None)

    def _on_publish(self, first: int, body: memoryview) -> None:
        qos = (first >> 1) & 0x03
        if qos > 1:
            raise ProtocolError(f"an incoming PUBLISH with QoS {qos}")
        if len(body) < 2:
            raise ProtocolError("truncated PUBLISH")
        tlen = struct.unpack_from("!H", body)[0]
        pos = 2 + tlen
        if pos + (2 if qos else 0) > len(body):
            raise ProtocolError("truncated PUBLISH topic")
        try:
            topic = bytes(body[2:pos]).decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("a PUBLISH topic that is not UTF-8") from exc
        pid = 0
        if qos:
            pid = struct.unpack_from("!H", body, pos)[0]
            pos += 2
        _, pos = _properties(body, pos)
        payload = bytes(body[pos:])
        if qos:
            self._send(b"\x40\x02" + struct.pack("!H", pid))
        if self.on_message is not None:
            self.on_message(topic, payload)

    # ------------------------------------------------------------------ the end

    def _abort(self, exc: MqttError) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._fail(exc)

    def _fail(self, exc: MqttError | None) -> None:
        """End everything waiting: the CONNACK, the acks, `closed()` (with `exc`)."""
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        error = exc or MqttError("disconnected")
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(error)
        if self._closed is not None and not self._closed.done():
            if exc is None:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(exc)
        # nobody may await these (a failed connect, a fire-and-forget publish): retrieve
        done: list[asyncio.Future[Any] | None] = [self._connack, self._writable, self._closed,
                                                  *self._pending.values()]
        for each in done:
            if each is not None and each.done() and not each.cancelled():
                each.exception()
