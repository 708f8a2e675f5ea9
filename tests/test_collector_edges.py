"""The collector at the edges of its resources, run as a real process (managed Mosquitto):
a flood from one gateway holds memory at the configured bound, nothing acked is lost; a
store file deleted under it acks nothing more and stops it; a failed transaction names
its store and a hint by kind."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import aiomqtt
import paho.mqtt.client as mqtt
import psycopg
import pytest
import structlog
from aiomqtt import ProtocolVersion

from collector.store import open_store
from collector.store.pg_migrate import migrate_url
from collector.store.postgres import PostgresStore
from edge_agent.contract.wire import Ack
from tests.harness import peak_rss, wait_until
from tests.peers import Mosquitto, Postgres, free_port, require_binary, wait_port
from tests.test_collector_cli import publish_and_wait, start, write_config
from tests.test_collector_flow import FailingStore
from tests.test_collector_mqtt import Broker, gateway, make_collector, running
from tests.test_collector_support import batch, new_epoch, reading, topics

MIB = 1024 * 1024


def wait_log(log: Path, text: str, timeout_s: float = 15, *, count: int = 1) -> None:
    deadline = time.monotonic() + timeout_s
    while log.read_text().count(text) < count:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def flood(port: int, count: int, size: int) -> None:
    """As gw-a: `count` QoS 1 payloads of `size` bytes, as fast as the broker takes them."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-a-flood",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set("gw-a", "secret-a")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    body = b'{"x":"' + b"a" * size + b'"}'
    infos = [client.publish("cd/v1/371312/371312001001/gw-a/events", body, qos=1)
             for _ in range(count)]
    for info in infos:
        info.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()


def test_a_flood_from_one_gateway_holds_memory_at_the_bound(tmp_path: Path) -> None:
    """1,200 x 300 KB (360 MB) at a collector whose inbox holds 16 MiB: its peak RSS stays
    far below the flood (it was ~ the flood's size: aiomqtt's queue was unbounded), and
    the events acked before and after it are all stored."""
    require_binary("mosquitto")
    port = free_port()
    config = write_config(tmp_path, port, ingest={"max_queued_bytes": "16MiB"})
    log = tmp_path / "collector.log"
    proc = start(config, log)
    epoch = new_epoch()
    try:
        wait_port(port)
        wait_log(log, "broker_connected")
        asyncio.run(publish_and_wait(port, [batch([reading("gw-a", epoch, 1)])], {1}))
        flood(port, 1200, 300_000)
        asyncio.run(publish_and_wait(port, [batch([reading("gw-a", epoch, 2)])], {2}))
        peak = peak_rss(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, log.read_text()[-3000:]
    print("peak RSS MiB", peak / MIB)
    assert peak < 200 * MIB, f"peak RSS {peak / MIB:.0f} MiB"
    store = open_store(f"sqlite:///{tmp_path / 'var' / 'district.db'}")
    try:
        assert store.stats().events == 2
    finally:
        store.close()


async def publish_until_exit(port: int, payload: bytes, proc: subprocess.Popen[bytes]) -> set[int]:
    """As gw-a: publish `payload`, collect acks until the collector process exits."""
    acked: set[int] = set()
    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier="gw-a", username="gw-a",
                                  password="secret-a", protocol=ProtocolVersion.V311) as gw:
            await gw.subscribe(topics("gw-a").ack, qos=1)
            await gw.publish(topics("gw-a").events, payload, qos=1)
            async with asyncio.timeout(20):
                async for message in gw.messages:
                    assert isinstance(message.payload, bytes)
                    acked |= Ack.decode(message.payload).seqs()
    except (aiomqtt.MqttError, TimeoutError):
        pass  # the managed broker went with the collector (or it never stopped: checked)
    return acked


def test_a_deleted_store_file_acks_nothing_more_and_stops_the_collector(
        tmp_path: Path) -> None:
    """`rm district.db*` under a running collector: the next group is committed into the
    deleted file, so it must not be acked; the collector says so, naming the file, and
    exits (systemd restarts it); restarted, it creates the file anew and stores the resend."""
    require_binary("mosquitto")
    port = free_port()
    config = write_config(tmp_path, port)
    db = tmp_path / "var" / "district.db"
    log = tmp_path / "collector.log"
    proc = start(config, log)
    epoch = new_epoch()
    second = batch([reading("gw-a", epoch, 2)])
    try:
        wait_port(port)
        wait_log(log, "broker_connected")
        asyncio.run(publish_and_wait(port, [batch([reading("gw-a", epoch, 1)])], {1}))
        for f in db.parent.glob("district.db*"):
            f.unlink()
        acked = asyncio.run(publish_until_exit(port, second, proc))
        code = proc.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail("the collector kept running on a deleted store file")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert 2 not in acked, "acked into a deleted file"
    assert code != 0
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    lost = [r for r in records if r["event"] == "store_lost"]
    assert lost and str(db) in lost[0]["error"] and "was deleted" in lost[0]["error"], records

    # restarted (as systemd does): a new file; the gateway's resend is stored and acked
    proc = start(config, log)
    try:
        wait_port(port)
        wait_log(log, "broker_connected", count=2)
        asyncio.run(publish_and_wait(port, [second], {2}))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    store = open_store(f"sqlite:///{db}")
    try:
        assert store.stats().events == 1
    finally:
        store.close()


async def one_failure(mosquitto: Mosquitto, store: FailingStore | PostgresStore) -> dict[str, str]:
    """A collector on `store`, a payload from gw-01 whose transaction fails: the first
    `store_failed` record."""
    broker = Broker("mosquitto", mosquitto.port, ProtocolVersion.V5, {})
    collector = make_collector(broker, store)
    with structlog.testing.capture_logs() as logs:
        async with running(collector), gateway(broker, "gw-01") as gw:
            await gw.publish(topics("gw-01").events, batch([reading("gw-01", new_epoch(), 1)]),
                             qos=1)
            await wait_until(lambda: any(r["event"] == "store_failed" for r in logs), 30,
                             "store_failed")
    assert collector.counters.acks_sent == 0
    return next(r for r in logs if r["event"] == "store_failed")


async def test_a_full_disk_names_the_store_and_says_what_to_do(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    db = tmp_path / "district.db"
    store = FailingStore(open_store(f"sqlite:///{db}"), until_failed=1)
    try:
        record = await one_failure(mosquitto, store)
    finally:
        store.inner.close()
    assert record["store"] == f"sqlite:{db}"
    assert "disk" in record["hint"] and "free space" in record["hint"]


async def test_an_unreachable_postgresql_names_the_store_and_says_what_to_do(
        mosquitto: Mosquitto, postgres: Postgres) -> None:
    url = postgres.new_database()
    migrate_url(url)
    name = url.rsplit("/", 1)[1]
    store = PostgresStore(url, wait_connection_s=1.0)
    store.open()
    try:
        with psycopg.connect(postgres.url(), autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))
        record = await one_failure(mosquitto, store)
    finally:
        store.close()
    assert record["store"] == f"postgresql://postgres@127.0.0.1:{postgres.port}/{name}"
    assert "PostgreSQL running" in record["hint"]
    assert "password" not in json.dumps(record)
