"""The city bench's lean MQTT client (bench/_mqtt_lean.py) against a real Mosquitto, and
against fake servers that refuse, break frames or send garbage: it must raise a clear
error, never hang or crash."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from bench._mqtt_lean import (
    ConnectRefused,
    LeanClient,
    MqttError,
    ProtocolError,
    PublishRefused,
    read_varint,
    varint,
)
from tests.peers import Mosquitto, require_binary

CONNACK_OK = b"\x20\x03\x00\x00\x00"


def client(port: int, name: str, **kwargs: object) -> LeanClient:
    return LeanClient("127.0.0.1", port, name, timeout_s=5.0, **kwargs)  # type: ignore[arg-type]


def test_variable_byte_integers_round_trip_and_a_fifth_byte_is_malformed() -> None:
    for n in (0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455):
        data = varint(n)
        assert read_varint(data, 0) == (n, len(data))
        assert read_varint(data[:-1], 0) is None  # incomplete: wait for more
    with pytest.raises(ValueError):
        varint(268_435_456)
    with pytest.raises(ProtocolError):
        read_varint(b"\xff\xff\xff\xff\x01", 0)


async def test_publish_qos1_to_itself_subscribe_receive_and_puback_accounting(
        mosquitto: Mosquitto) -> None:
    got: list[tuple[str, bytes]] = []
    arrived = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        got.append((topic, payload))
        if len(got) == 300:
            arrived.set()

    c = client(mosquitto.port, "lean-self", on_message=on_message)
    await c.connect()
    await c.subscribe("lean/#", qos=1)
    payloads = [f"m{i}".encode() * (1 + i % 7) for i in range(299)] + [b"x" * 200_000]
    await asyncio.gather(*(c.publish(f"lean/{i % 3}", p, qos=1) for i, p in enumerate(payloads)))
    assert not c._pending  # every PUBACK arrived and was accounted for
    await asyncio.wait_for(arrived.wait(), 5)
    assert sorted(p for _, p in got) == sorted(payloads)  # big frames come in parts
    assert {t for t, _ in got} == {"lean/0", "lean/1", "lean/2"}
    await c.publish("lean/q0", b"qos0", qos=0)
    c.disconnect()
    await c.closed()  # our own DISCONNECT: no error
    with pytest.raises(MqttError):
        await c.publish("lean/after", b"x")


async def test_more_in_flight_than_the_brokers_receive_maximum_waits_for_a_slot(
        tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq", extra_conf="max_inflight_messages 5\n")
    broker.start()
    try:
        c = client(broker.port, "lean-window")
        await c.connect()
        assert c.receive_max in (5, 65535)  # Mosquitto may or may not announce it
        c.receive_max = 3
        await asyncio.gather(*(c.publish("lean/w", b"%d" % i) for i in range(50)))
        assert not c._pending and not c._slot_waiters
        c.disconnect()
    finally:
        broker.stop()


@pytest.fixture
def password_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    passwd = require_binary("mosquitto_passwd")
    shared = Path(tempfile.mkdtemp(prefix="lean-pw-"))  # readable by user mosquitto
    shared.chmod(0o755)
    pwfile = shared / "passwd"
    pwfile.touch()
    subprocess.run([passwd, "-b", str(pwfile), "gw", "right"], check=True)
    pwfile.chmod(0o644)
    broker = Mosquitto(tmp_path / "mq",
                       extra_conf=f"allow_anonymous false\npassword_file {pwfile}\n")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(shared)


async def test_bad_credentials_are_a_clear_refusal_and_good_ones_connect(
        password_mosquitto: Mosquitto) -> None:
    bad = client(password_mosquitto.port, "lean-bad", username="gw", password="wrong")
    with pytest.raises(ConnectRefused) as refused:
        await bad.connect()
    # Mosquitto 2.0 answers a wrong password with 0x87 "not authorized" (0x86 in the spec)
    assert refused.value.code in (0x86, 0x87)
    assert "refused the connection: 0x8" in str(refused.value)
    anonymous = client(password_mosquitto.port, "lean-anon")
    with pytest.raises(ConnectRefused):
        await anonymous.connect()
    good = client(password_mosquitto.port, "lean-good", username="gw", password="right")
    await good.connect()
    await good.publish("lean/ok", b"1")
    good.disconnect()


async def test_keepalive_pings_keep_an_idle_connection_past_one_and_a_half_keepalives(
        mosquitto: Mosquitto) -> None:
    got: list[bytes] = []
    listener = client(mosquitto.port, "lean-idle", keepalive_s=1,
                      on_message=lambda _t, p: got.append(p))
    await listener.connect()
    await listener.subscribe("lean/idle", qos=1)
    # Mosquitto drops a client silent for 1.5 keepalives, checking every few seconds (the
    # test below: ~5 s with a keepalive of 1 s); six keepalives later it is still here
    await asyncio.sleep(6)
    closed = asyncio.ensure_future(listener.closed())
    await asyncio.sleep(0)
    assert not closed.done()
    other = client(mosquitto.port, "lean-talker")
    await other.connect()
    await other.publish("lean/idle", b"still here")
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.05)
    assert got == [b"still here"]
    listener.disconnect()
    other.disconnect()
    await closed


async def test_a_client_that_never_pings_is_dropped_by_mosquitto(mosquitto: Mosquitto) -> None:
    """The counter-check of the keepalive test: without PINGREQs the broker gives up."""
    c = client(mosquitto.port, "lean-mute", keepalive_s=1)
    await c.connect()
    assert c._ping_timer is not None
    c._ping_timer.cancel()
    with pytest.raises(MqttError, match="connection lost"):
        await asyncio.wait_for(c.closed(), 12)


# ---------------------------------------------------------------------- fake servers

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def replies(*chunks: bytes, close: bool = True, after_connack: bytes = b"") -> Handler:
    """A server that reads the CONNECT, writes `chunks`, then (if `after_connack` is
    given) waits for the next packet and writes that; then closes or stays silent."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        if after_connack:
            await reader.read(1024)
            writer.write(after_connack)
            await writer.drain()
        if close:
            writer.close()
        else:  # silent until the client closes
            while await reader.read(1024):
                pass
    return handle


@pytest.mark.parametrize(("chunks", "close", "error"), [
    ((b"\x20\x03\x00",), True, "connection lost"),  # truncated CONNACK, then EOF
    ((b"\x20\x03\x00",), False, None),  # truncated CONNACK, then silence: the timeout
    ((b"\x20\x02\x00\x01",), True, "0x01 unacceptable protocol version"),  # a 3.1.1 broker
    ((b"\x20\x03\x00\x84\x00",), True, "0x84 unsupported protocol version"),
    ((b"\x20\xff\xff\xff\xff\x7f",), False, "longer than 4 bytes"),  # garbage length
    ((b"\xf0\x00",), False, "unexpected packet type"),  # AUTH-like garbage
    ((b"\x20\x01\x00",), False, "truncated CONNACK"),
    ((b"\x20\x05\x00\x00\x09\x21\x00",), False, "properties longer"),
    ((b"",), True, "connection lost"),  # accepted, then closed
])
async def test_a_broken_or_refusing_server_gives_an_error_not_a_hang(
        chunks: tuple[bytes, ...], close: bool, error: str | None) -> None:
    server, port = await serve(replies(*chunks, close=close))
    c = LeanClient("127.0.0.1", port, "lean-fake", timeout_s=1.0)
    try:
        async with asyncio.timeout(3):  # the test's own bound: a hang fails here
            if error is None:
                with pytest.raises(TimeoutError):
                    await c.connect()
            else:
                with pytest.raises(MqttError, match=error):
                    await c.connect()
    finally:
        c.disconnect()
        server.close()


@pytest.mark.parametrize(("after", "error"), [
    (b"\x40\x01\x00", "truncated PUBACK"),
    (b"\x34\x03\x00\x01\x41", "QoS 2"),
    (b"\x30\x04\x00\x09ab", "truncated PUBLISH topic"),
    (b"\x30\x04\x00\x01\xff\x00", "not UTF-8"),
    (b"\xe0\x01\x8b", "0x8B"),  # server DISCONNECT: shutting down
    (b"\x40\x04\x00\x01", None),  # half a frame, then silence: the publish timeout
])
async def test_garbage_after_the_connack_ends_the_session_cleanly(
        after: bytes, error: str | None) -> None:
    server, port = await serve(replies(CONNACK_OK, close=False, after_connack=after))
    received: list[bytes] = []
    c = LeanClient("127.0.0.1", port, "lean-fake", timeout_s=1.0,
                   on_message=lambda _t, p: received.append(p))
    try:
        async with asyncio.timeout(3):
            await c.connect()
            if error is None:
                with pytest.raises(TimeoutError):
                    await c.publish("t", b"x")
            else:
                with pytest.raises(MqttError, match=error):
                    await c.publish("t", b"x")
                with pytest.raises(MqttError):
                    await c.closed()
        assert not received
    finally:
        c.disconnect()
        server.close()


async def test_a_puback_with_a_failure_reason_fails_that_publish_only() -> None:
    server, port = await serve(replies(CONNACK_OK, close=False,
                                       after_connack=b"\x40\x03\x00\x01\x87"))
    c = LeanClient("127.0.0.1", port, "lean-fake", timeout_s=1.0)
    try:
        await c.connect()
        with pytest.raises(PublishRefused, match="PUBLISH t refused: 0x87 not authorized"):
            await c.publish("t", b"x")
        assert not c._pending
        await c.publish("t", b"y", qos=0)  # the session goes on
    finally:
        c.disconnect()
        server.close()


async def test_nobody_listening_is_an_mqtt_error() -> None:
    server, port = await serve(replies())
    server.close()
    await server.wait_closed()
    with pytest.raises(MqttError, match="cannot connect"):
        await LeanClient("127.0.0.1", port, "lean-none", timeout_s=1.0).connect()
