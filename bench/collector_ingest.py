"""Collector ingest throughput: validation, the store, and end to end over MQTT.

    .venv/bin/python bench/collector_ingest.py [--batches 100] [--batch 200] [--inflight 8]
        [--store sqlite|postgresql|postgresql://…] [--disk-events 200000]

`--store postgresql` starts its own PostgreSQL (as Debian ships it: fsync on) in a temp
dir on 127.0.0.1; a `postgresql://` URL uses that server (a fresh, migrated database).
PostgreSQL also gets a `disk` round: `--disk-events` events stored (many gateways, one
day), then every relation's bytes per event (`bench/pg_disk.py`'s `measure`; that bench
loads a city mix instead of one kind of reading).

Rounds (one JSON line each, then `{"summary": ...}`):
- `validate`: `check_payload` on batches of `--batch` smoke.reading events;
- `store`: `SqliteStore.ingest` of already validated rows, one transaction per batch
  (WAL, synchronous=FULL: the production settings);
- `handler`: both, as the collector's worker thread runs them;
- `mosquitto` / `managed`: a fake gateway publishes `--batches` batches with up to
  `--inflight` unacknowledged at a time (the uplink's default is 8) and waits for every
  ack; events/s counts acknowledged events, latency is publish -> ack per batch.
  `managed` is the collector's own supervised Mosquitto (`broker: managed`: passwords,
  ACL, client id bound to the user name).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
import click
import psycopg
from aiomqtt import ProtocolVersion
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import Timer, emit, rate, summary  # noqa: E402
from bench.pg_disk import measure  # noqa: E402
from collector.config import BrokerUser, ManagedBrokerConfig  # noqa: E402
from collector.ingest import Collector, PayloadHandler  # noqa: E402
from collector.managed_broker import ManagedBroker  # noqa: E402
from collector.store import Origin, migrate_store, open_store  # noqa: E402
from collector.validate import Limits, check_payload  # noqa: E402
from edge_agent.config.models import BackoffConfig, SecretRef  # noqa: E402
from edge_agent.contract.envelope import Hierarchy, new_event  # noqa: E402
from edge_agent.contract.logs import configure  # noqa: E402
from edge_agent.contract.mqtt import Endpoint  # noqa: E402
from edge_agent.contract.topics import GatewayTopics  # noqa: E402
from edge_agent.contract.wire import Ack, encode_batch  # noqa: E402
from tests.peers import Mosquitto, Postgres, free_port  # noqa: E402

HIER = Hierarchy(district="371312", street="371312001", community="371312001001", gateway="gw-b1")
TOPICS = GatewayTopics(HIER.district, HIER.community, HIER.gateway)


def payloads(batches: int, size: int, epoch: str) -> list[bytes]:
    out = []
    for b in range(batches):
        events = [new_event(HIER, f"sd{(b * size + i) % 700}", "smoke.reading",
                            {"density_db_m": 0.012, "temperature_c": 21.5, "battery_pct": 88})
                  .stamped(epoch, b * size + i + 1).to_json() for i in range(size)]
        out.append(encode_batch(events))
    return out


def bench_local(batches: list[bytes], size: int, new_store: Callable[[str], str]
                ) -> dict[str, Any]:
    events = len(batches) * size
    with Timer() as t:
        verdicts = [check_payload(p, TOPICS) for p in batches]
    emit({"round": "validate", "events": events, "events_per_s": rate(events, t.seconds),
          "us_per_event": round(t.seconds / events * 1e6, 2)})
    store = open_store(new_store("store"))
    origin = Origin(TOPICS.events, HIER.gateway)
    with Timer() as t:
        for v in verdicts:
            store.ingest(origin, v.accepted, [])
    store_rate = rate(events, t.seconds)
    emit({"round": "store", "events": events, "events_per_s": store_rate,
          "ms_per_batch": round(t.seconds / len(batches) * 1000, 2)})
    store.close()
    handler = PayloadHandler(open_store(new_store("handler")), Limits())
    with Timer() as t:
        for p in batches:
            handler(TOPICS.events, p)
    handler_rate = rate(events, t.seconds)
    emit({"round": "handler", "events": events, "events_per_s": handler_rate,
          "ms_per_batch": round(t.seconds / len(batches) * 1000, 2)})
    handler.store.close()
    return {"store_events_per_s": store_rate, "handler_events_per_s": handler_rate}


async def publish_all(port: int, protocol: ProtocolVersion, batches: list[bytes], inflight: int,
                      user: str | None, password: str | None) -> tuple[float, list[float]]:
    """Publish every batch, at most `inflight` unacked; return (seconds, ack latencies)."""
    slots = asyncio.Semaphore(inflight)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    size = len(batches[0].split(b'"seq":')) - 1
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-gw", username=user,
                              password=password, protocol=protocol) as gw:
        await gw.subscribe(TOPICS.ack, qos=1)

        async def reader() -> None:
            async for m in gw.messages:
                assert isinstance(m.payload, bytes)
                for first, _last in Ack.decode(m.payload).committed:
                    latencies.append(time.perf_counter() - sent.pop((first - 1) // size))
                    slots.release()
                if len(latencies) == len(batches):
                    return

        task = asyncio.create_task(reader())
        start = time.perf_counter()
        for i, p in enumerate(batches):
            await slots.acquire()
            sent[i] = time.perf_counter()
            await gw.publish(TOPICS.events, p, qos=1)
        await asyncio.wait_for(task, 120)
        return time.perf_counter() - start, latencies


@contextlib.asynccontextmanager
async def collector_running(store_url: str, ep: Endpoint,
                            client_id: str = "bench-collector") -> AsyncIterator[None]:
    store = open_store(store_url)
    c = Collector(store, ep, client_id=client_id, share_group="bench",
                  backoff=BackoffConfig(initial_s=0.05, max_s=0.5))
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    await asyncio.wait_for(c.subscribed.wait(), 15)
    try:
        yield
    finally:
        stop.set()
        await task
        store.close()


def report(kind: str, seconds: float, lat: list[float], events: int) -> dict[str, Any]:
    lat_ms = sorted(x * 1000 for x in lat)
    row = {"round": kind, "events": events, "events_per_s": rate(events, seconds),
           "ack_ms_p50": round(statistics.median(lat_ms), 1),
           "ack_ms_p99": round(lat_ms[int(len(lat_ms) * 0.99) - 1], 1)}
    emit(row)
    return row


async def bench_mqtt(batches: list[bytes], size: int, inflight: int,
                     tmp: Path, new_store: Callable[[str], str]) -> dict[str, Any]:
    events = len(batches) * size
    out: dict[str, Any] = {}
    mq = Mosquitto(tmp / "mosquitto")
    mq.start()
    try:
        async with collector_running(new_store("mq"),
                                     Endpoint("127.0.0.1", mq.port, protocol="auto")):
            seconds, lat = await publish_all(mq.port, ProtocolVersion.V5, batches, inflight,
                                             None, None)
        out["mosquitto_events_per_s"] = report("mosquitto", seconds, lat, events)["events_per_s"]
    finally:
        mq.stop()
    (tmp / "gw.pw").write_text("pw\n")
    port = free_port()
    broker = ManagedBroker(ManagedBrokerConfig(
        listen=f"127.0.0.1:{port}", state_dir=tmp / "managed", users=[
            BrokerUser(username=HIER.gateway, password=SecretRef(file=tmp / "gw.pw"))]), "bench")
    await broker.start()
    try:
        async with collector_running(new_store("managed"), broker.endpoint(),
                                     broker.username):
            seconds, lat = await publish_all(port, ProtocolVersion.V5, batches, inflight,
                                             HIER.gateway, "pw")
        out["managed_events_per_s"] = report("managed", seconds, lat, events)["events_per_s"]
    finally:
        await broker.stop()
    return out


@click.command(help=__doc__.splitlines()[0])
@click.option("--batches", type=int, default=100)
@click.option("--batch", type=int, default=200)
@click.option("--inflight", type=int, default=8)
@click.option("--store", "store", default="sqlite", show_default=True,
              help="sqlite, postgresql (a server of its own) or a postgresql:// URL")
@click.option("--disk-events", type=int, default=200_000, show_default=True,
              help="PostgreSQL: events stored for the bytes-per-event round")
def main(**options: Any) -> None:
    args = SimpleNamespace(**options)
    configure("warning")
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as d, \
            contextlib.ExitStack() as stack:
        tmp = Path(d)
        new_store = stack.enter_context(stores(args.store, tmp))
        epoch = "0123456789abcdef"
        batches = payloads(args.batches, args.batch, epoch)
        figures = bench_local(batches, args.batch, new_store)
        figures |= asyncio.run(bench_mqtt(batches, args.batch, args.inflight, tmp, new_store))
        if args.store != "sqlite":
            figures |= bench_disk(new_store("disk"), args.disk_events, args.batch)
    summary({"bench": "collector_ingest", "store": args.store.split("://")[0],
             "batch": args.batch, "batches": args.batches, "inflight": args.inflight,
             **figures})


@contextlib.contextmanager
def stores(kind: str, tmp: Path) -> Iterator[Callable[[str], str]]:
    """A function giving a fresh, ready store URL per name."""
    if kind == "sqlite":
        yield lambda name: f"sqlite:///{tmp / (name + '.db')}"
        return
    server: Postgres | None = None
    if kind == "postgresql":
        workdir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        server = Postgres(workdir, durable=True)
        server.start()
        base = server.url()
    else:
        base = kind

    def fresh(name: str) -> str:
        db = f"bench_{name}_{os.getpid()}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(db)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        url = base.split("?")[0].rsplit("/", 1)[0] + "/" + db  # same server, that database
        migrate_store(url)
        return url

    try:
        yield fresh
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)


def bench_disk(url: str, events: int, size: int) -> dict[str, Any]:
    """Store `events` events of 3,000 gateways (one day), then bytes per event on disk."""
    store = open_store(url)
    validated = []
    gateways = 3000
    for g in range(0, events, size):
        gw = f"gw-{(g // size) % gateways:04d}"
        hier = Hierarchy(district=HIER.district, street=HIER.street, community=HIER.community,
                         gateway=gw)
        evs = [new_event(hier, f"sd{i % 50}", "smoke.reading",
                         {"density_db_m": 0.012, "temperature_c": 21.5, "battery_pct": 88})
               .stamped("0123456789abcdef", g + i + 1).to_json() for i in range(size)]
        verdict = check_payload(encode_batch(evs), GatewayTopics(hier.district, hier.community,
                                                                 gw))
        validated.append((Origin("t", gw), verdict.accepted))
    with Timer() as t:
        for origin, rows in validated:
            store.ingest(origin, rows, [])
    store.close()
    n = sum(len(rows) for _, rows in validated)
    disk = measure(url, n)  # a JSON line per relation
    emit({"round": "disk", "events": n, "events_per_s": rate(n, t.seconds),
          "bytes_per_event": disk["bytes_per_event"]})
    return {"disk_bytes_per_event": disk["bytes_per_event"],
            "disk_round_events_per_s": rate(n, t.seconds)}

if __name__ == "__main__":
    main()
