"""The collector against real brokers: Mosquitto (v5, $share) and the collector's managed Mosquitto.

A fake gateway publishes batches with aiomqtt and waits for the collector's acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import pytest
from aiomqtt import ProtocolVersion
from pydantic import SecretStr

from collector.config import BrokerUser, ManagedBrokerConfig
from collector.ingest import Collector
from collector.managed_broker import ManagedBroker
from collector.mosquitto_files import GatewayAccount, gateway_block
from collector.store import IngestResult, Payload, Store, open_store
from collector.validate import Limits
from edge_agent.config.models import BackoffConfig, SecretRef
from edge_agent.contract.mqtt import Endpoint
from edge_agent.contract.topics import COLLECTOR_PRESENCE_FILTER
from edge_agent.contract.wire import Ack
from tests.peers import Mosquitto, free_port, require_binary
from tests.test_collector_support import (
    alarm,
    as_dict,
    batch,
    data_loss,
    dumps,
    new_epoch,
    reading,
    topics,
)

FAST = BackoffConfig(initial_s=0.05, max_s=0.5)


# ---------------------------------------------------------------------- harness


@dataclass
class Broker:
    """Where a test's gateways and collectors connect."""

    kind: str
    port: int
    protocol: ProtocolVersion
    passwords: dict[str, str]
    managed: ManagedBroker | None = None

    def collector_endpoint(self) -> Endpoint:
        if self.managed is not None:
            return self.managed.endpoint()
        return Endpoint("127.0.0.1", self.port, protocol="auto")


class SlowStore:
    """A store that takes its time before committing: an early ack would be caught."""

    def __init__(self, inner: Store, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.entered = threading.Event()

    def ingest_many(self, items: Sequence[Payload]) -> list[IngestResult]:
        self.entered.set()
        time.sleep(self.delay_s)
        return self.inner.ingest_many(items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def managed_config(port: int, users: dict[str, str], tmp: Path) -> ManagedBrokerConfig:
    entries = []
    for name, password in users.items():
        (tmp / f"{name}.password").write_text(password + "\n")
        role: Literal["gateway", "collector"] = (
            "collector" if name.startswith("collector") else "gateway")
        entries.append(BrokerUser(username=name, role=role,
                                  password=SecretRef(file=tmp / f"{name}.password")))
    return ManagedBrokerConfig(listen=f"127.0.0.1:{port}", state_dir=tmp / "broker",
                               users=entries)


@contextlib.asynccontextmanager
async def managed_broker(tmp: Path) -> AsyncIterator[Broker]:
    require_binary("mosquitto")
    passwords = {"gw-a": "pw-a", "gw-b": "pw-b", "collector-x": "pw-x"}
    port = free_port()
    managed = ManagedBroker(managed_config(port, passwords, tmp), "t")
    await managed.start()
    try:
        yield Broker("managed", port, ProtocolVersion.V5, passwords, managed)
    finally:
        await managed.stop()


@pytest.fixture(params=["mosquitto", "managed"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    if request.param == "mosquitto":
        mq: Mosquitto = request.getfixturevalue("mosquitto")
        yield Broker("mosquitto", mq.port, ProtocolVersion.V5, {})
        return
    async with managed_broker(tmp_path) as b:
        yield b


@contextlib.asynccontextmanager
async def running(collector: Collector) -> AsyncIterator[Collector]:
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        async with asyncio.timeout(10):
            await collector.subscribed.wait()
        yield collector
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


def make_collector(broker: Broker, store: Store, cid: str = "c1",
                   share_group: str | None = "collectors", **kw: Any) -> Collector:
    client_id = broker.managed.username if broker.managed else f"collector-{cid}"
    return Collector(store, broker.collector_endpoint(), client_id=client_id,
                     share_group=share_group, backoff=FAST, **kw)


@contextlib.asynccontextmanager
async def gateway(broker: Broker, gw: str, *, password: str | None = None,
                  ack_of: str | None = None) -> AsyncIterator[aiomqtt.Client]:
    user = gw if broker.passwords else None
    pw = password if password is not None else broker.passwords.get(gw)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"{gw}-fake",
                              username=user, password=pw, protocol=broker.protocol) as client:
        await client.subscribe(topics(ack_of or gw).ack, qos=1)
        yield client


async def acks_until(client: aiomqtt.Client, seqs: set[int]) -> list[Ack]:
    """Collect acks until every seq in `seqs` was acknowledged (committed or rejected)."""
    got: list[Ack] = []
    async with asyncio.timeout(15):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            got.append(Ack.decode(message.payload))
            if seqs <= set().union(*(a.seqs() for a in got)):
                return got
    raise AssertionError("message stream ended")


def db_rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------------- tests


async def test_ack_comes_only_after_the_rows_are_committed(broker: Broker, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'district.db'}"
    store = open_store(url)
    epoch = new_epoch()
    events = [reading("gw-a", epoch, s) for s in range(1, 200)] + [alarm("gw-a", epoch, 200)]
    slow = make_collector(broker, SlowStore(store, 0.3))
    async with running(slow), gateway(broker, "gw-a") as gw:
        await gw.publish(topics("gw-a").events, batch(events), qos=1)
        [ack] = await acks_until(gw, set(range(1, 201)))
        # The moment the ack is here, another connection must already see every row.
        stored = db_rows(url, "SELECT seq FROM events WHERE gateway = 'gw-a' AND epoch = ? "
                              "ORDER BY seq", epoch)
        assert [s for (s,) in stored] == list(range(1, 201))
        assert ack == Ack(epoch, [[1, 200]], [])
        # A resend of the same batch is acked again and stored nowhere twice.
        await gw.publish(topics("gw-a").events, batch(events[:50]), qos=1)
        [again] = await acks_until(gw, set(range(1, 51)))
        assert again == Ack(epoch, [[1, 50]], [])
    store.close()
    assert db_rows(url, "SELECT COUNT(*) FROM events") == [(200,)]


async def test_stopping_mid_batch_still_commits_and_acks_it(
        broker: Broker, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'district.db'}"
    slow = SlowStore(open_store(url), 0.5)
    collector = make_collector(broker, slow)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    epoch = new_epoch()
    async with asyncio.timeout(10):
        await collector.subscribed.wait()
    async with gateway(broker, "gw-a") as gw:
        await gw.publish(topics("gw-a").events,
                         batch([reading("gw-a", epoch, s) for s in (1, 2)]), qos=1)
        await asyncio.to_thread(slow.entered.wait, 10)
        stop.set()  # SIGTERM while the transaction is open
        assert await acks_until(gw, {1, 2}) == [Ack(epoch, [[1, 2]], [])]
    async with asyncio.timeout(10):
        await task
    slow.inner.close()
    assert db_rows(url, "SELECT COUNT(*) FROM events") == [(2,)]


async def test_garbage_is_quarantined_and_good_events_still_flow(
        broker: Broker, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'district.db'}"
    store = open_store(url)
    epoch = new_epoch()
    bad_schema = as_dict(alarm("gw-a", epoch, 1))
    bad_schema["data"]["state"] = "on fire"
    impostor = as_dict(reading("gw-b", epoch, 2))  # claims gw-b, sent on gw-a's topic
    collector = make_collector(broker, store, limits=Limits(max_payload_bytes=64 * 1024))
    async with running(collector), gateway(broker, "gw-a") as gw:
        t = topics("gw-a").events
        await gw.publish(t, b"\x00garbage, not JSON", qos=1)
        await gw.publish(t, dumps([bad_schema]), qos=1)
        await gw.publish(t, b"[" + b" " * 70_000 + b"]", qos=1)
        await gw.publish(t, dumps([impostor]), qos=1)
        await gw.publish(t, batch([reading("gw-a", epoch, s) for s in (3, 4, 5)]), qos=1)
        acks = await acks_until(gw, {1, 2, 3, 4, 5})
    store.close()
    assert Ack(epoch, [], [[1, 1]]) in acks and Ack(epoch, [], [[2, 2]]) in acks
    assert Ack(epoch, [[3, 5]], []) in acks
    assert db_rows(url, "SELECT seq FROM events ORDER BY seq") == [(3,), (4,), (5,)]
    quarantined = db_rows(url, "SELECT reason, raw_size, gateway_from_topic, event_id "
                               "FROM quarantine ORDER BY id")
    reasons = [q[0] for q in quarantined]
    assert len(reasons) == 4, reasons
    assert reasons[0].startswith(f"v1 batch on {t} (gateway gw-a): payload is not")
    assert "data.state must be one of ['raised', 'cleared']" in reasons[1]
    assert "exceeds ingest.max_payload_bytes" in reasons[2] and quarantined[2][1] == 70_002
    assert "gateway 'gw-b' differs from the topic's 'gw-a'" in reasons[3]
    assert {q[2] for q in quarantined} == {"gw-a"}
    assert quarantined[3][3] == impostor["id"]
    assert collector.counters.quarantined == 4 and collector.counters.inserted == 3


async def test_mixed_epochs_get_one_ack_each(broker: Broker, tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'district.db'}")
    old, new = new_epoch(), new_epoch()
    events = [reading("gw-a", old, 7), reading("gw-a", old, 8), data_loss("gw-a", new, 3, [[1, 2]])]
    async with running(make_collector(broker, store)), gateway(broker, "gw-a") as gw:
        await gw.publish(topics("gw-a").events, batch(events), qos=1)
        acks = await acks_until(gw, {7, 8, 3})
    assert sorted(acks, key=lambda a: a.epoch != old) == [Ack(old, [[7, 8]], []),
                                                          Ack(new, [[3, 3]], [])]
    gaps = [(g.epoch, g.from_seq, g.to_seq, g.explained) for g in store.gaps()]
    assert gaps == sorted([(old, 1, 6, False), (new, 1, 2, True)])
    store.close()


async def test_two_collectors_share_the_load_exactly_once(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'district.db'}"
    b = Broker("mosquitto", mosquitto.port, ProtocolVersion.V5, {})
    s1, s2 = open_store(url), open_store(url)
    c1, c2 = make_collector(b, s1, "c1"), make_collector(b, s2, "c2")
    gateways = [f"gw-{i}" for i in range(4)]
    epochs = {g: new_epoch() for g in gateways}
    async with running(c1), running(c2), contextlib.AsyncExitStack() as stack:
        clients = {g: await stack.enter_async_context(gateway(b, g)) for g in gateways}
        for n in range(10):
            for g in gateways:
                evs = [reading(g, epochs[g], n * 20 + i) for i in range(1, 21)]
                await clients[g].publish(topics(g).events, batch(evs), qos=1)
        await asyncio.gather(*(acks_until(clients[g], set(range(1, 201))) for g in gateways))
    for s in (s1, s2):
        s.close()
    assert c1.counters.messages > 0 and c2.counters.messages > 0, "the $share group did not split"
    assert c1.counters.messages + c2.counters.messages == 40
    assert c1.counters.inserted + c2.counters.inserted == 800
    assert c1.counters.duplicates + c2.counters.duplicates == 0
    assert db_rows(url, "SELECT COUNT(*), COUNT(DISTINCT id) FROM events") == [(800, 800)]
    assert db_rows(url, "SELECT gateway, received, contiguous_through FROM streams "
                        "ORDER BY gateway") == [(g, 200, 200) for g in gateways]


async def test_a_shared_member_that_left_gets_no_more_batches(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    """On a shared subscription a collector keeps no broker session: once it is gone,
    every batch goes to the members still there (a persistent session would keep taking
    its share for the hour the session lives, unacked)."""
    url = f"sqlite:///{tmp_path / 'district.db'}"
    b = Broker("mosquitto", mosquitto.port, ProtocolVersion.V5, {})
    s1, s2 = open_store(url), open_store(url)
    c1, c2 = make_collector(b, s1, "c1"), make_collector(b, s2, "c2")
    epoch = new_epoch()
    async with running(c2), gateway(b, "gw-a") as gw:
        async with running(c1):
            pass  # c1 subscribed to the group, then left
        for n in range(10):
            await gw.publish(topics("gw-a").events,
                             batch([reading("gw-a", epoch, n * 5 + i) for i in range(1, 6)]),
                             qos=1)
        await acks_until(gw, set(range(1, 51)))  # no resend: every batch reached c2
    for s in (s1, s2):
        s.close()
    assert (c1.counters.messages, c2.counters.messages) == (0, 10)


async def test_collector_reconnects_after_a_broker_restart(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    b = Broker("mosquitto", mosquitto.port, ProtocolVersion.V5, {})
    store = open_store(f"sqlite:///{tmp_path / 'district.db'}")
    epoch = new_epoch()
    collector = make_collector(b, store)
    async with running(collector):
        mosquitto.stop()
        await asyncio.sleep(0.5)
        assert not collector.subscribed.is_set()
        mosquitto.start()
        async with asyncio.timeout(10):
            await collector.subscribed.wait()
        async with gateway(b, "gw-a") as gw:
            await gw.publish(topics("gw-a").events, batch([reading("gw-a", epoch, 1)]), qos=1)
            assert await acks_until(gw, {1}) == [Ack(epoch, [[1, 1]], [])]
    store.close()


# ---------------------------------------------------------------------- managed broker


@pytest.fixture
async def managed(tmp_path: Path) -> AsyncIterator[Broker]:
    async with managed_broker(tmp_path) as b:
        yield b


@pytest.mark.parametrize(("user", "password"), [("gw-a", "wrong"), (None, None), ("nobody", "x")])
async def test_managed_broker_refuses_bad_credentials(
        managed: Broker, user: str | None, password: str | None) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", managed.port, username=user, password=password,
                                  protocol=ProtocolVersion.V311, timeout=5):
            pass


async def test_collector_sessions_queue_while_it_is_away(managed: Broker, tmp_path: Path) -> None:
    """A lone collector (no shared group, as with `broker: managed`): Mosquitto keeps QoS 1
    for its persistent session (its own account) while it is away."""
    store = open_store(f"sqlite:///{tmp_path / 'district.db'}")
    epoch = new_epoch()
    async with running(make_collector(managed, store, share_group=None)):
        pass
    async with gateway(managed, "gw-a") as gw:
        await gw.publish(topics("gw-a").events,
                         batch([reading("gw-a", epoch, s) for s in (1, 2)]), qos=1)
        async with running(make_collector(managed, store, share_group=None)):
            assert await acks_until(gw, {1, 2}) == [Ack(epoch, [[1, 2]], [])]
    store.close()


# ---------------------------------------------------------------------- the example Mosquitto ACL


@pytest.fixture
def district_mosquitto(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, str]]]:
    """Mosquitto with password auth, configs/mosquitto/acl as shipped, and blocks for the
    hand-configured gateways gw-a and gw-b (`+` for their codes: these tests send under
    foreign codes on purpose, to see what the collector itself refuses)."""
    passwd = require_binary("mosquitto_passwd")
    users = {"collector-c1": "pw-c", "gw-a": "pw-a", "gw-b": "pw-b"}
    # Mosquitto started as root reads its files as user `mosquitto`: not from tmp_path (0700).
    shared = Path(tempfile.mkdtemp(prefix="collector-acl-"))
    shared.chmod(0o755)
    pwfile = shared / "passwd"
    pwfile.touch()
    for name, password in users.items():
        subprocess.run([passwd, "-b", str(pwfile), name, password], check=True)
    pwfile.chmod(0o644)
    acl = shared / "acl"
    shipped = (Path(__file__).resolve().parent.parent / "configs" / "mosquitto" / "acl")
    acl.write_text(shipped.read_text() + "\n" + "".join(
        "\n".join(gateway_block(GatewayAccount(gw))) + "\n\n" for gw in ("gw-a", "gw-b")))
    acl.chmod(0o644)
    mq = Mosquitto(tmp_path / "mq", extra_conf=(
        f"allow_anonymous false\nuse_username_as_clientid true\npassword_file {pwfile}\n"
        f"acl_file {acl}\n"))
    try:
        mq.start()
        yield mq, users
    finally:
        mq.stop()
        shutil.rmtree(shared)


async def test_example_mosquitto_acl_keeps_a_gateway_to_its_own_topics(
        district_mosquitto: tuple[Mosquitto, dict[str, str]], tmp_path: Path) -> None:
    mq, users = district_mosquitto
    b = Broker("mosquitto", mq.port, ProtocolVersion.V5, users)
    url = f"sqlite:///{tmp_path / 'district.db'}"
    store = open_store(url)
    ep = Endpoint("127.0.0.1", mq.port, username="collector-c1", password=SecretStr("pw-c"))
    collector = Collector(store, ep, client_id="collector-c1", share_group="collectors",
                          backoff=FAST, collector_id="c1")
    epoch = new_epoch()
    async with running(collector), gateway(b, "gw-a") as gw_a:
        await gw_a.publish(topics("gw-b").events, batch([reading("gw-b", epoch, 1)]), qos=1)
        await gw_a.publish(topics("gw-a").events, batch([reading("gw-a", epoch, 1)]), qos=1)
        assert await acks_until(gw_a, {1}) == [Ack(epoch, [[1, 1]], [])]
        # Mosquitto grants the subscription to gw-b's acks but never delivers them to gw-a.
        await gw_a.subscribe(topics("gw-b").ack, qos=1)
        async with gateway(b, "gw-b") as gw_b:
            await gw_b.publish(topics("gw-b").events, batch([reading("gw-b", epoch, 2)]), qos=1)
            assert await acks_until(gw_b, {2}) == [Ack(epoch, [[2, 2]], [])]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await anext(aiter(gw_a.messages))
        # Every gateway may read the collectors' presence (the shipped ACL lets c1 write it).
        await gw_a.subscribe(COLLECTOR_PRESENCE_FILTER, qos=1)
        presence = await anext(aiter(gw_a.messages))
        assert (presence.topic.value, presence.payload) == ("cd/v1/_collectors/c1/status",
                                                            b"online")
    store.close()
    assert db_rows(url, "SELECT gateway, seq FROM events ORDER BY gateway") == [
        ("gw-a", 1), ("gw-b", 2)]
