"""The collector's managed Mosquitto (`broker: managed`), attacked on loopback.

Each attack is one the reviewers made work against the embedded amqtt broker this
replaces. Every test asserts the forged message never reached its victim by ordering,
not by waiting: the victim subscribes, the attack runs, then a legitimate marker goes the
same way; once the marker has arrived, anything forged would have arrived before it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
import yaml
from aiomqtt import ProtocolVersion
from paho.mqtt.client import topic_matches_sub

from collector import managed_broker
from collector.config import BrokerUser, ManagedBrokerConfig
from collector.ingest import Collector
from collector.managed_broker import ManagedBroker, ManagedBrokerError
from collector.mosquitto_files import CollectorAccount, mosquitto_hash
from collector.provisioning.plan import provisioning_acl
from collector.registry import GatewaysFile
from collector.store import Store, open_store
from edge_agent.config.models import SecretRef
from edge_agent.contract.logs import configure
from edge_agent.contract.settings import load_model
from edge_agent.contract.topics import (
    COLLECTOR_PRESENCE_FILTER,
    EVENTS_FILTER,
    TopicError,
    collector_presence_topic,
    parse_topic,
)
from edge_agent.contract.wire import Ack
from tests.harness import (
    Proc,
    agent,
    gateway_yaml,
    query,
    sim_devices,
    wait_for,
    wait_until,
    write_yaml,
)
from tests.harness import collector as collector_process
from tests.peers import FaultProxy, free_port, require_binary
from tests.test_collector_mqtt import FAST, acks_until, db_rows, running
from tests.test_collector_support import alarm, batch, new_epoch, reading, topics
from tests.test_uplink_security import make_certs

ROOT = Path(__file__).resolve().parent.parent
PASSWORDS = {"gw-a": "pw-a-7d1e", "gw-b": "pw-b-93c0", "collector-watch": "pw-w-11aa"}
SIZE_LIMIT = 64 * 1024


# ---------------------------------------------------------------------- harness


def managed_config(tmp: Path, **overrides: Any) -> ManagedBrokerConfig:
    users = []
    for name, password in PASSWORDS.items():
        (tmp / f"{name}.password").write_text(password + "\n")
        users.append(BrokerUser(username=name, password=SecretRef(file=tmp / f"{name}.password"),
                                role="collector" if name.startswith("collector") else "gateway"))
    fields: dict[str, Any] = {"listen": f"127.0.0.1:{free_port()}", "state_dir": tmp / "broker",
                              "users": users, "message_size_limit": SIZE_LIMIT,
                              "restart": {"initial_s": 0.1, "max_s": 0.5}}
    return ManagedBrokerConfig(**(fields | overrides))


@dataclass
class Site:
    """A managed broker with a collector (id `t1`) ingesting into a SQLite store."""

    broker: ManagedBroker
    collector: Collector
    store: Store
    url: str
    #: how often (10 ms checks) the collector was found without its subscription
    kicked: int = 0

    @property
    def port(self) -> int:
        return self.broker.cfg.port


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    require_binary("mosquitto")
    broker = ManagedBroker(managed_config(tmp_path), "t1")
    await broker.start()
    url = f"sqlite:///{tmp_path / 'district.db'}"
    store = open_store(url)
    collector = Collector(store, broker.endpoint(), client_id="_collector-t1", backoff=FAST,
                          collector_id="t1")
    s = Site(broker, collector, store, url)

    async def watch() -> None:
        while True:
            if not collector.subscribed.is_set():
                s.kicked += 1
            await asyncio.sleep(0.01)

    try:
        async with running(collector):
            watcher = asyncio.create_task(watch())
            try:
                yield s
            finally:
                watcher.cancel()
    finally:
        await broker.stop()
        store.close()


@contextlib.asynccontextmanager
async def client(where: Site | int, user: str, *, identifier: str | None = None,
                 clean: bool = True, **kw: Any) -> AsyncIterator[aiomqtt.Client]:
    port = where if isinstance(where, int) else where.port
    async with aiomqtt.Client("127.0.0.1", port, identifier=identifier or f"{user}-x",
                              username=user, password=PASSWORDS[user],
                              protocol=ProtocolVersion.V311, clean_session=clean, **kw) as c:
        yield c


async def drain(c: aiomqtt.Client, until: Any) -> list[aiomqtt.Message]:
    """Every message `c` receives up to and including the first for which `until` holds."""
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(15):
        async for message in c.messages:
            got.append(message)
            if until(message):
                return got
    raise AssertionError("message stream ended")


async def marker_batch(site: Site, gw: str) -> tuple[str, list[Ack]]:
    """A real batch from `gw` and the acks `gw` received until it was acked: proof that
    the collector is there and that anything sent before has been delivered."""
    epoch = new_epoch()
    async with client(site, gw) as c:
        await c.subscribe(topics(gw).ack, qos=1)
        await c.publish(topics(gw).events, batch([reading(gw, epoch, 1)]), qos=1)
        return epoch, await acks_until(c, {1})


# ---------------------------------------------------------------------- raw MQTT 3.1.1


def _utf8(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, body: bytes) -> bytes:
    n, length = len(body), b""
    while True:
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            return bytes([kind]) + length + body


def connect_packet(client_id: str, user: str | None = None, password: str | None = None,
                   will: tuple[str, bytes] | None = None) -> bytes:
    flags, payload = 0x02, _utf8(client_id)  # clean session
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
        payload += _utf8(will[0]) + _utf8(will[1])
    if user is not None:
        flags |= 0x80
        payload += _utf8(user)
    if password is not None:
        flags |= 0x40
        payload += _utf8(password)
    return _packet(0x10, _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + payload)


def publish_packet(topic: str, payload: bytes) -> bytes:
    return _packet(0x30, _utf8(topic) + payload)  # QoS 0


async def raw_connect(port: int, packet: bytes) -> tuple[int | None, asyncio.StreamWriter]:
    """Send a CONNECT; the CONNACK return code (None: the broker just closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(packet)
    await writer.drain()
    try:
        async with asyncio.timeout(10):
            connack = await reader.readexactly(4)
    except asyncio.IncompleteReadError:
        return None, writer
    return connack[3], writer


def abort(writer: asyncio.StreamWriter) -> None:
    """Drop the connection without DISCONNECT: a Will, if accepted, is published now."""
    writer.transport.abort()


# ---------------------------------------------------------------------- files


def test_password_hashes_are_the_ones_mosquitto_passwd_writes(tmp_path: Path) -> None:
    passwd = require_binary("mosquitto_passwd")
    pwfile = tmp_path / "passwd"
    pwfile.touch()
    subprocess.run([passwd, "-b", str(pwfile), "gw-a", "s3cret-ü"], check=True)
    theirs = pwfile.read_text().strip().split(":", 1)[1]
    salt = base64.b64decode(theirs.split("$")[3])
    assert mosquitto_hash("s3cret-ü", salt) == theirs


def test_shipped_mosquitto_files_use_the_generated_acl_and_bind_client_ids() -> None:
    shipped = (ROOT / "configs" / "mosquitto" / "acl").read_text()
    places = load_model(ROOT / "configs" / "gateways.example.yaml", GatewaysFile).gateways
    generated = provisioning_acl(places, [CollectorAccount("collector-c1", "c1"),
                                          CollectorAccount("collector-c2", "c2")])

    def rules(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    assert rules(shipped) == rules(generated)
    conf = (ROOT / "configs" / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    assert "use_username_as_clientid true" in conf


async def test_generated_files_hold_no_plaintext_and_only_the_owner_reads_them(
        site: Site) -> None:
    state = site.broker.cfg.state_dir
    assert state.stat().st_mode & 0o777 == 0o700
    for name in ("mosquitto.conf", "passwd", "acl"):
        path = state / name
        assert path.stat().st_mode & 0o777 == 0o600, name
        text = path.read_text()
        assert not any(pw in text for pw in PASSWORDS.values()), name
    conf = (state / "mosquitto.conf").read_text().splitlines()
    assert "use_username_as_clientid true" in conf and "allow_anonymous false" in conf
    acl = (state / "acl").read_text()
    assert "user _collector-t1\n" in acl and "user collector-watch\n" in acl
    assert f"topic write {collector_presence_topic('t1')}" in acl


# ---------------------------------------------------------------------- supervision


async def test_presence_online_will_offline_and_clean_stop(tmp_path: Path) -> None:
    require_binary("mosquitto")
    broker = ManagedBroker(managed_config(tmp_path), "t1")
    await broker.start()
    proxy = FaultProxy(broker.cfg.port)  # between the collector and its broker
    await proxy.start()
    store = open_store(f"sqlite:///{tmp_path / 'district.db'}")
    collector = Collector(store, replace(broker.endpoint(), port=proxy.port),
                          client_id="_collector-t1", backoff=FAST, collector_id="t1")
    try:
        async with client(broker.cfg.port, "gw-a") as gw:
            await gw.subscribe(COLLECTOR_PRESENCE_FILTER, qos=1)
            async with running(collector):
                [online] = await drain(gw, lambda m: True)
                assert (online.topic.value, online.payload, online.retain) == (
                    collector_presence_topic("t1"), b"online", False)  # live, not replayed
                proxy.cut()  # the collector's connection dies: its Will speaks
                got = await drain(gw, lambda m: m.payload == b"online")
                assert [m.payload for m in got] == [b"offline", b"online"]
            [stopped] = await drain(gw, lambda m: True)
            assert stopped.payload == b"offline"
        async with client(broker.cfg.port, "gw-b") as late:  # retained for who comes later
            await late.subscribe(COLLECTOR_PRESENCE_FILTER, qos=1)
            [kept] = await drain(late, lambda m: True)
            assert (kept.payload, kept.retain) == (b"offline", True)
    finally:
        await proxy.close()
        await broker.stop()
        store.close()


async def test_mosquitto_killed_is_restarted_and_ingest_resumes(site: Site) -> None:
    pid = site.broker._pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: site.broker.restarts == 1 and site.broker._pid() != pid, 10,
                     "mosquitto restarted")
    await wait_until(site.collector.subscribed.is_set, 10, "the collector back")
    epoch, acks = await marker_batch(site, "gw-a")
    assert acks == [Ack(epoch, [[1, 1]], [])]


async def test_every_failed_reload_is_answered_not_held_back_as_a_repeat(
        tmp_path: Path) -> None:
    """The operator's SIGHUP (`reload`) on broken files, twice: both failures are logged
    with the configured repeat limiter (it held the second back for 60 s)."""
    require_binary("mosquitto")
    broker = ManagedBroker(managed_config(tmp_path), "t1")
    await broker.start()
    stream = io.StringIO()
    try:
        configure(stream=stream)
        (tmp_path / "gw-b.password").unlink()
        broker.reload()
        (tmp_path / "gw-a.password").unlink()
        broker.reload()
    finally:
        structlog.reset_defaults()
        await broker.stop()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    failed = [x for x in lines if x["event"] == "managed_broker_reload_failed"]
    assert len(failed) == 2, lines
    assert "gw-b.password" in failed[0]["error"] and "gw-a.password" in failed[1]["error"]


async def test_a_missing_mosquitto_is_a_clear_error(tmp_path: Path) -> None:
    broker = ManagedBroker(managed_config(tmp_path, binary="no-such-mosquitto"), "t1")
    with pytest.raises(ManagedBrokerError) as err:
        await broker.start()
    assert "managed_broker.binary" in str(err.value)
    assert "apt-get install mosquitto" in str(err.value)


async def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    require_binary("mosquitto")
    cfg = managed_config(tmp_path)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", cfg.port)
    try:
        with pytest.raises(ManagedBrokerError) as err:
            await ManagedBroker(cfg, "t1").start()
    finally:
        server.close()
    assert f"did not start on {cfg.listen}" in str(err.value)
    assert "Address already in use" in str(err.value)


async def test_tls_listener_for_gateways_loopback_for_the_collector(tmp_path: Path) -> None:
    require_binary("mosquitto")
    ca, cert, key = make_certs(tmp_path / "certs")
    broker = ManagedBroker(managed_config(tmp_path, tls={"cert_file": cert, "key_file": key}),
                           "t1")
    await broker.start()
    store = open_store(f"sqlite:///{tmp_path / 'district.db'}")
    collector = Collector(store, broker.endpoint(), client_id="_collector-t1", backoff=FAST,
                          collector_id="t1")
    port = broker.cfg.port
    try:
        assert broker.endpoint().port != port
        async with running(collector):
            with pytest.raises(aiomqtt.MqttError):  # plain MQTT on the TLS listener
                async with aiomqtt.Client("127.0.0.1", port, username="gw-a",
                                          password=PASSWORDS["gw-a"], timeout=3):
                    pass
            ctx = ssl.create_default_context(cafile=str(ca))
            epoch = new_epoch()
            async with aiomqtt.Client("127.0.0.1", port, username="gw-a",
                                      password=PASSWORDS["gw-a"], tls_context=ctx) as gw:
                await gw.subscribe(topics("gw-a").ack, qos=1)
                await gw.publish(topics("gw-a").events, batch([reading("gw-a", epoch, 1)]),
                                 qos=1)
                assert await acks_until(gw, {1}) == [Ack(epoch, [[1, 1]], [])]
    finally:
        await broker.stop()
        store.close()


async def test_a_loopback_port_taken_before_mosquitto_binds_it_is_picked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS mode: the collector's loopback port is ours to pick; one found free and then
    taken by someone else (the race CI met in tests) costs a restart, not the start."""
    require_binary("mosquitto")
    ca, cert, key = make_certs(tmp_path / "certs")
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", free_port())
    taken_port = taken.sockets[0].getsockname()[1]
    picks = iter([taken_port, free_port()])
    monkeypatch.setattr(managed_broker, "_free_loopback_port", lambda: next(picks))
    broker = ManagedBroker(managed_config(tmp_path, tls={"cert_file": cert, "key_file": key}),
                           "t1")
    try:
        with structlog.testing.capture_logs() as logs:
            await broker.start()
        assert broker.endpoint().port not in (taken_port, broker.cfg.port)
        ctx = ssl.create_default_context(cafile=str(ca))
        async with aiomqtt.Client("127.0.0.1", broker.cfg.port, username="gw-a",
                                  password=PASSWORDS["gw-a"], tls_context=ctx):
            pass
    finally:
        await broker.stop()
        taken.close()
    said = [e for e in logs if e["event"] == "managed_broker_loopback_port_taken"]
    assert [(e["port"], e["attempt"]) for e in said] == [(taken_port, 1)]


async def test_a_taken_public_port_in_tls_mode_is_a_clear_error_not_a_port_hunt(
        tmp_path: Path) -> None:
    require_binary("mosquitto")
    _, cert, key = make_certs(tmp_path / "certs")
    cfg = managed_config(tmp_path, tls={"cert_file": cert, "key_file": key})
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", cfg.port)
    broker = ManagedBroker(cfg, "t1")
    loopback = broker.endpoint().port
    try:
        with pytest.raises(ManagedBrokerError, match="Address already in use"):
            await broker.start()
    finally:
        server.close()
    assert broker.endpoint().port == loopback  # the operator's port is theirs to free


async def test_bad_tls_files_name_the_key(tmp_path: Path) -> None:
    require_binary("mosquitto")
    broker = ManagedBroker(managed_config(tmp_path, tls={"cert_file": tmp_path / "no.pem",
                                                         "key_file": tmp_path / "no.key"}), "t1")
    with pytest.raises(ManagedBrokerError, match=r"^managed_broker\.tls: cannot load"):
        await broker.start()


# ---------------------------------------------------------------------- attacks


FORGED_ACK = Ack("forged-epoch", [[1, 10_000]], []).encode()


def _forged_alarm() -> bytes:
    return batch([alarm("gw-b", new_epoch(), 1)])


@pytest.mark.parametrize("creds", [None, ("gw-a", "wrong"), ("nobody", "x"), "gw-a"])
@pytest.mark.parametrize("target", ["ack", "events"])
async def test_a_will_cannot_forge_an_ack_or_an_alarm(
        site: Site, creds: Any, target: str) -> None:
    if isinstance(creds, str):
        user, password = creds, PASSWORDS[creds]
    else:
        user, password = creds or (None, None)
    will = (topics("gw-b").ack, FORGED_ACK) if target == "ack" else (
        topics("gw-b").events, _forged_alarm())
    async with client(site, "gw-b") as victim, client(site, "collector-watch") as watch:
        await victim.subscribe(topics("gw-b").ack, qos=1)
        await watch.subscribe("cd/v1/+/+/gw-b/events", qos=1)
        # Taking the collector's client id as well: the session must not be taken over.
        rc, writer = await raw_connect(site.port, connect_packet(
            "_collector-t1", user, password, will))
        if creds != "gw-a":
            assert rc != 0
        abort(writer)
        epoch = new_epoch()
        await victim.publish(topics("gw-b").events, batch([reading("gw-b", epoch, 1)]), qos=1)
        got = await drain(victim, lambda m: True)
        seen = await drain(watch, lambda m: True)
    assert [Ack.decode(m.payload) for m in got] == [Ack(epoch, [[1, 1]], [])]
    assert len(seen) == 1 and epoch.encode() in seen[0].payload
    assert db_rows(site.url, "SELECT type, epoch FROM events") == [("smoke.reading", epoch)]
    assert db_rows(site.url, "SELECT COUNT(*) FROM quarantine") == [(0,)]
    assert not site.kicked


@pytest.mark.parametrize("creds", [None, "gw-a"])
async def test_nobody_takes_over_the_collectors_session(site: Site, creds: str | None) -> None:
    user, password = (creds, PASSWORDS[creds]) if creds else (None, None)
    async with client(site, "gw-b") as observer:
        await observer.subscribe(COLLECTOR_PRESENCE_FILTER, qos=1)
        await observer.subscribe(topics("gw-b").ack, qos=1)
        assert [m.payload for m in await drain(observer, lambda m: True)] == [b"online"]
        for identifier in ("_collector-t1", "collector-t1"):
            rc, writer = await raw_connect(site.port, connect_packet(identifier, user, password))
            assert (rc == 0) == (creds is not None)
            await asyncio.sleep(0.2)  # hold the connection: a takeover would kick now
            abort(writer)
        epoch = new_epoch()
        await observer.publish(topics("gw-b").events, batch([reading("gw-b", epoch, 1)]), qos=1)
        got = await drain(observer, lambda m: m.topic.value == topics("gw-b").ack)
    # No `offline` Will of a kicked collector, no new `online`: only the ack it still sends.
    assert [m.topic.value for m in got] == [topics("gw-b").ack]
    assert not site.kicked


async def test_a_gateway_cannot_write_another_gateways_ack_or_events(site: Site) -> None:
    async with client(site, "gw-b") as victim, client(site, "collector-watch") as watch, \
            client(site, "gw-a") as attacker:
        await victim.subscribe(topics("gw-b").ack, qos=1)
        await watch.subscribe("cd/v1/+/+/gw-b/#", qos=1)
        await attacker.publish(topics("gw-b").ack, FORGED_ACK, qos=1)
        await attacker.publish(topics("gw-b").ack, FORGED_ACK, qos=1, retain=True)
        await attacker.publish(topics("gw-b").events, _forged_alarm(), qos=1)
        await attacker.publish(topics("gw-b").status, b"online", qos=1, retain=True)
        epoch = new_epoch()
        await victim.publish(topics("gw-b").events, batch([reading("gw-b", epoch, 1)]), qos=1)
        got = await drain(victim, lambda m: True)
        seen = await drain(watch, lambda m: True)
    assert [Ack.decode(m.payload) for m in got] == [Ack(epoch, [[1, 1]], [])]
    assert [m.topic.value for m in seen] == [topics("gw-b").events]
    assert epoch.encode() in seen[0].payload
    assert db_rows(site.url, "SELECT type, epoch FROM events") == [("smoke.reading", epoch)]


async def test_retained_and_queued_messages_obey_the_read_acl(site: Site) -> None:
    secret_ack = Ack(new_epoch(), [[1, 5]], []).encode()
    async with client(site, "gw-a", identifier="gw-a", clean=False) as spy:
        await spy.subscribe("cd/v1/#", qos=1)
        await spy.subscribe(topics("gw-b").ack, qos=1)
    async with client(site, "collector-watch") as collector:
        await collector.publish(topics("gw-b").ack, secret_ack, qos=1, retain=True)  # retained
        await collector.publish(topics("gw-b").ack, secret_ack, qos=1)  # queued for the spy
    async with client(site, "gw-a", identifier="gw-a", clean=False) as spy:
        await spy.subscribe("cd/v1/#", qos=1)
        await spy.subscribe(topics("gw-b").ack, qos=1)
        epoch = new_epoch()
        await spy.publish(topics("gw-a").events, batch([reading("gw-a", epoch, 1)]), qos=1)
        got = await drain(spy, lambda m: m.topic.value == topics("gw-a").ack)
    assert {m.topic.value for m in got} <= {topics("gw-a").ack, "cd/v1/_collectors/t1/status"}
    assert all(m.payload != secret_ack for m in got)


async def test_an_oversized_payload_never_reaches_the_collector(site: Site) -> None:
    async with client(site, "collector-watch") as watch:
        await watch.subscribe("cd/v1/+/+/+/events", qos=1)
        rc, writer = await raw_connect(site.port,
                                       connect_packet("gw-a", "gw-a", PASSWORDS["gw-a"]))
        assert rc == 0
        writer.write(publish_packet(topics("gw-a").events, b"[" + b" " * (SIZE_LIMIT + 4096)
                                    + b"]"))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        abort(writer)
        epoch, acks = await marker_batch(site, "gw-a")
        seen = await drain(watch, lambda m: True)
    assert acks == [Ack(epoch, [[1, 1]], [])]
    assert len(seen) == 1 and len(seen[0].payload) < SIZE_LIMIT
    assert db_rows(site.url, "SELECT COUNT(*) FROM quarantine") == [(0,)]


async def test_connections_that_never_send_connect_do_not_stop_the_site(site: Site) -> None:
    writers = []
    for i in range(100):
        _, writer = await asyncio.open_connection("127.0.0.1", site.port)
        if i % 2:  # half a CONNECT: the fixed header promises 32 bytes, 1 comes
            writer.write(b"\x10\x20\x00")
        writers.append(writer)
    try:
        epoch, acks = await marker_batch(site, "gw-a")
        assert acks == [Ack(epoch, [[1, 1]], [])]
        rc, w = await raw_connect(site.port, connect_packet("x", "gw-b", PASSWORDS["gw-b"]))
        assert rc == 0
        abort(w)
    finally:
        for writer in writers:
            abort(writer)
    assert not site.kicked


# ---------------------------------------------------------------------- as processes


def _managed_collector_yaml(tmp: Path, port: int) -> Path:
    (tmp / "gw-e2e.password").write_text("pw-e2e-5c1d\n")
    return write_yaml(tmp / "collector.yaml", {
        "collector": {"id": "e2e"}, "store": f"sqlite:///{tmp / 'district.db'}",
        "broker": "managed",
        "managed_broker": {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp / "broker"),
                           "users": [{"username": "gw-e2e",
                                      "password": {"file": str(tmp / "gw-e2e.password")}}]},
        "log_level": "info"})


def _mosquitto_pid(proc: Proc) -> int:
    started = [e for e in proc.log_events() if e.get("event") == "managed_broker_started"]
    return int(started[-1]["pid"]) if started else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is gone for our purpose
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    return False


def test_an_agent_delivers_through_the_managed_broker_and_nothing_outlives_the_collector(
        tmp_path: Path) -> None:
    require_binary("mosquitto")
    port = free_port()
    coll = collector_process(_managed_collector_yaml(tmp_path, port),
                             tmp_path / "collector.log").start()
    gw_cfg = gateway_yaml("gw-e2e", f"mqtt://127.0.0.1:{port}", tmp_path / "outbox.db",
                          devices=sim_devices(1, period_s=0.2, alarm_every_s=1.0),
                          uplink={"username": "gw-e2e",
                                  "password": {"file": str(tmp_path / "gw-e2e.password")}})
    gw = agent(write_yaml(tmp_path / "gateway.yaml", gw_cfg), tmp_path / "agent.log")
    db = tmp_path / "district.db"
    try:
        first = wait_for(lambda: _mosquitto_pid(coll), 20, "the managed broker")
        gw.start()
        wait_for(lambda: query(db, "SELECT COUNT(*) FROM events WHERE gateway = 'gw-e2e' "
                                   "AND type = 'smoke.alarm'") != [(0,)], 30, "an alarm stored")
        # SIGKILL: no SIGTERM handler runs, yet Mosquitto must not stay behind on the port.
        coll.kill()
        wait_for(lambda: not _alive(first), 15, "the orphaned mosquitto gone")
        coll.start()  # same port, fresh broker: the agent reconnects and goes on
        wait_for(lambda: _mosquitto_pid(coll) not in (0, first), 20, "a new managed broker")
        stored = query(db, "SELECT COUNT(*) FROM events")[0][0]
        wait_for(lambda: query(db, "SELECT COUNT(*) FROM events")[0][0] > stored, 30,
                 "more events after the collector's restart")
        assert gw.stop() == 0
        second = _mosquitto_pid(coll)
        assert coll.stop() == 0
        assert not _alive(second), "a clean stop leaves no mosquitto"
    finally:
        gw.kill()
        coll.kill()
    names = [e["event"] for e in coll.log_events()]
    assert names.count("managed_broker_started") == 2 and "managed_broker_stopped" in names
    # The agent's account worked on both brokers (a refused CONNECT would say "not authorised").
    assert not [e for e in gw.log_events() if "authori" in str(e.get("error", ""))]


def test_the_presence_topic_is_outside_every_gateway_topic() -> None:
    topic = collector_presence_topic("c1")
    assert topic == "cd/v1/_collectors/c1/status"
    assert topic_matches_sub(COLLECTOR_PRESENCE_FILTER, topic)
    assert not topic_matches_sub(EVENTS_FILTER, topic)
    with pytest.raises(TopicError):
        parse_topic(topic)
    with pytest.raises(TopicError):
        collector_presence_topic("c1/#")


def test_a_crash_looping_broker_is_restarted_with_back_off_and_logged_once(
        tmp_path: Path) -> None:
    """Mosquitto killed, then failing at once on every restart until the operator fixes it:
    restarts go on with back-off; the log says it once (RepeatLimiter), not per restart."""
    real = require_binary("mosquitto")
    broken = tmp_path / "broken"
    wrapper = tmp_path / "mosquitto-wrapper"
    wrapper.write_text(f"#!/bin/sh\nif [ -e {broken} ]; then echo 'Error: simulated crash' >&2;"
                       f" exit 3; fi\nexec {real} \"$@\"\n")
    wrapper.chmod(0o755)
    port = free_port()
    config = _managed_collector_yaml(tmp_path, port)
    text = yaml.safe_load(config.read_text())
    text["managed_broker"] |= {"binary": str(wrapper),
                               "restart": {"initial_s": 0.05, "max_s": 0.2}}
    config.write_text(yaml.safe_dump(text))
    coll = collector_process(config, tmp_path / "collector.log").start()
    try:
        first = wait_for(lambda: _mosquitto_pid(coll), 20, "the managed broker")
        wait_for(lambda: [e for e in coll.log_events() if e["event"] == "broker_connected"],
                 20, "the collector subscribed")
        broken.touch()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len([e for e in coll.log_events()
                              if e["event"] == "managed_broker_exited"]) >= 1, 10, "the crash")
        time.sleep(3)  # the crash loop: ~15 restarts at 0.05-0.2 s
        broken.unlink()
        restarted = wait_for(lambda: [e for e in coll.log_events()
                                      if e["event"] == "managed_broker_restarted"], 15,
                             "a restart that stays up")
        wait_for(lambda: [e for e in coll.log_events() if e["event"] == "broker_reconnected"],
                 15, "the collector back on its broker")
        assert coll.stop() == 0
    finally:
        coll.kill()
    assert restarted[0]["restarts"] >= 5, restarted
    events = coll.log_events()
    assert [e["event"] for e in events].count("managed_broker_exited") == 1
    crashes = [e for e in events if e.get("reason") == "Error: simulated crash"]
    assert len(crashes) == 1, crashes
    assert len(events) < 30, [e["event"] for e in events]
