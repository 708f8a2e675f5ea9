"""Collector ingest throughput: validation, the store, and end to end over MQTT.

    .venv/bin/python bench/collector_ingest.py [--batches 100] [--batch 200] [--inflight 8]
        [--gateways 1] [--store sqlite|postgresql|postgresql://…] [--disk-events 200000]
        [--collectors 1] [--group 16] [--no-local] [--wire v1|v2]

`--store postgresql` starts its own PostgreSQL (as Debian ships it: fsync on) in a temp
dir on 127.0.0.1; a `postgresql://` URL uses that server (a fresh, migrated database).
PostgreSQL also gets a `disk` round: `--disk-events` events stored (many gateways, one
day), then every relation's bytes per event (`bench/pg_disk.py`'s `measure`; that bench
loads a city mix instead of one kind of reading).

Rounds (one JSON line each, then `{"summary": ...}`):
- `validate`: `check_payload` on batches of `--batch` smoke.reading events;
- `store`: `SqliteStore.ingest` of already validated rows, one transaction per batch
  (WAL, synchronous=FULL: the production settings);
- `handler`: both, as the collector's worker thread runs them, one payload per transaction;
- `group`: the same with every `--group` payloads in one transaction (`ingest_many`, the
  collector's group commit);
- `mosquitto` / `managed`: `--gateways` fake gateways (one MQTT connection publishing on
  each gateway's topic, the batches dealt round-robin) publish `--batches` batches in all,
  each gateway with up to `--inflight` unacknowledged at a time (the uplink's default is
  8), and wait for every ack; events/s (and payloads/s) count acknowledged events, latency
  is publish -> ack per batch. The fake gateways run in a process of their own. Many
  gateways with small batches (`--batch 1 --gateways 3000 --inflight 1`) is the city's
  traffic: ~one event per payload. `--collectors 2`
  runs two collectors on one shared subscription into the same store.
  `managed` is the collector's own supervised Mosquitto (`broker: managed`: passwords,
  ACL, client id bound to the user name).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
import click
from aiomqtt import ProtocolVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import Timer, emit, rate, summary  # noqa: E402
from bench._stores import STORE_HELP, stores  # noqa: E402
from bench.pg_disk import measure  # noqa: E402
from collector.config import BrokerUser, ManagedBrokerConfig  # noqa: E402
from collector.ingest import Collector, PayloadHandler  # noqa: E402
from collector.managed_broker import ManagedBroker  # noqa: E402
from collector.store import Origin, open_store  # noqa: E402
from collector.validate import Limits, check_payload  # noqa: E402
from edge_agent.config.models import BackoffConfig, SecretRef  # noqa: E402
from edge_agent.contract import batch_v2  # noqa: E402
from edge_agent.contract.envelope import Hierarchy, new_event  # noqa: E402
from edge_agent.contract.logs import configure  # noqa: E402
from edge_agent.contract.mqtt import Endpoint  # noqa: E402
from edge_agent.contract.topics import GatewayTopics  # noqa: E402
from edge_agent.contract.wire import Ack, encode_batch  # noqa: E402
from tests.peers import Mosquitto, free_port  # noqa: E402

HIER = Hierarchy(district="371312", street="371312001", community="371312001001", gateway="gw-b1")
TOPICS = GatewayTopics(HIER.district, HIER.community, HIER.gateway)


def payloads(batches: int, size: int, epoch: str, hier: Hierarchy = HIER,
             first_seq: int = 1, wire: str = "v1") -> list[bytes]:
    """`batches` batches of `size` smoke readings of one gateway, seqs from `first_seq`,
    in wire format `wire` (v2: `contract.batch_v2`, as the agent sends it by default)."""
    out = []
    for b in range(batches):
        seq = first_seq + b * size
        events = [new_event(hier, f"sd{(seq + i) % 700}", "smoke.reading",
                            {"density_db_m": 0.012, "temperature_c": 21.5, "battery_pct": 88})
                  .stamped(epoch, seq + i).to_json() for i in range(size)]
        out.append(batch_v2.encode(events) if wire == "v2" else encode_batch(events))
    return out


@dataclass(frozen=True)
class Batch:
    """One payload of one fake gateway: where it goes, and the seq its ack starts with."""

    gateway: int
    topics: GatewayTopics
    first_seq: int
    payload: bytes


def fleet(batches: int, size: int, epoch: str, gateways: int, wire: str = "v1") -> list[Batch]:
    """`batches` batches dealt round-robin over `gateways` gateways (one stream each)."""
    out: list[Batch] = []
    per_gateway = [batches // gateways + (g < batches % gateways) for g in range(gateways)]
    by_gateway = []
    for g, n in enumerate(per_gateway):
        name = HIER.gateway if gateways == 1 else f"gw-{g:05d}"
        hier = Hierarchy(district=HIER.district, street=HIER.street,
                         community=HIER.community, gateway=name)
        t = GatewayTopics(hier.district, hier.community, name)
        by_gateway.append([Batch(g, t, 1 + b * size, p)
                           for b, p in enumerate(payloads(n, size, epoch, hier, wire=wire))])
    for b in range(max(per_gateway)):
        out.extend(batches_of[b] for batches_of in by_gateway if b < len(batches_of))
    return out


def bench_local(batches: list[Batch], size: int, group: int,
                new_store: Callable[[str], str]) -> dict[str, Any]:
    events = len(batches) * size
    with Timer() as t:
        verdicts = [(b.topics, check_payload(b.payload, b.topics)) for b in batches]
    emit({"round": "validate", "events": events, "events_per_s": rate(events, t.seconds),
          "us_per_event": round(t.seconds / events * 1e6, 2)})
    store = open_store(new_store("store"))
    with Timer() as t:
        for topics, v in verdicts:
            store.ingest(Origin(topics.events, topics.gateway), v.accepted, [])
    store_rate = rate(events, t.seconds)
    emit({"round": "store", "events": events, "events_per_s": store_rate,
          "ms_per_batch": round(t.seconds / len(batches) * 1000, 2)})
    store.close()
    handler = PayloadHandler(open_store(new_store("handler")), Limits())
    with Timer() as t:
        for b in batches:
            handler([(b.topics.events, b.payload)])
    handler_rate = rate(events, t.seconds)
    emit({"round": "handler", "events": events, "events_per_s": handler_rate,
          "ms_per_batch": round(t.seconds / len(batches) * 1000, 2)})
    handler.store.close()
    handler = PayloadHandler(open_store(new_store("group")), Limits())
    with Timer() as t:
        for i in range(0, len(batches), group):
            handler([(b.topics.events, b.payload) for b in batches[i:i + group]])
    group_rate = rate(events, t.seconds)
    emit({"round": "group", "events": events, "events_per_s": group_rate,
          "payloads_per_s": rate(len(batches), t.seconds), "group": group})
    handler.store.close()
    return {"store_events_per_s": store_rate, "handler_events_per_s": handler_rate,
            "group_events_per_s": group_rate}


async def publish_all(port: int, protocol: ProtocolVersion, batches: list[Batch], inflight: int,
                      user: str | None, password: str | None) -> tuple[float, list[float]]:
    """Publish every batch, at most `inflight` unacked per gateway; return (seconds, ack
    latencies)."""
    gateways = max(b.gateway for b in batches) + 1
    slots = [asyncio.Semaphore(inflight) for _ in range(gateways)]
    sent: dict[tuple[str, int], tuple[int, float]] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-gw", username=user,
                              password=password, protocol=protocol,
                              max_inflight_messages=1000,
                              socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
                              ) as gw:
        gw.pending_calls_threshold = len(batches)  # thousands of gateways publish at once
        ack_filter = (batches[0].topics.ack if gateways == 1
                      else f"cd/v1/{HIER.district}/{HIER.community}/+/ack")
        await gw.subscribe(ack_filter, qos=1)

        async def reader() -> None:
            async for m in gw.messages:
                assert isinstance(m.payload, bytes)
                for first, _last in Ack.decode(m.payload).committed:
                    g, at = sent.pop((m.topic.value, first))
                    latencies.append(time.perf_counter() - at)
                    slots[g].release()
                if len(latencies) == len(batches):
                    done.set()
                    return

        async def one_gateway(mine: list[Batch]) -> None:
            for b in mine:
                await slots[b.gateway].acquire()
                sent[(b.topics.ack, b.first_seq)] = (b.gateway, time.perf_counter())
                await gw.publish(b.topics.events, b.payload, qos=1)

        mine: list[list[Batch]] = [[] for _ in range(gateways)]
        for b in batches:
            mine[b.gateway].append(b)
        task = asyncio.create_task(reader())
        start = time.perf_counter()
        await asyncio.gather(*(one_gateway(m) for m in mine))
        await asyncio.wait_for(done.wait(), 300)
        seconds = time.perf_counter() - start
        task.cancel()
        return seconds, latencies


async def publish(port: int, batches: list[Batch], inflight: int, user: str | None,
                  password: str | None) -> tuple[float, list[float]]:
    """`publish_all` in a process of its own, so the fake gateways do not share the
    collector's GIL (a collector runs alone in production)."""
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await loop.run_in_executor(pool, publisher, port, batches, inflight, user,
                                          password)


def publisher(port: int, batches: list[Batch], inflight: int, user: str | None,
              password: str | None) -> tuple[float, list[float]]:
    return asyncio.run(publish_all(port, ProtocolVersion.V5, batches, inflight, user,
                                   password))


@contextlib.asynccontextmanager
async def collector_running(store_url: str, ep: Endpoint, client_id: str = "bench-collector",
                            collectors: int = 1) -> AsyncIterator[None]:
    """`collectors` collectors on one shared subscription, each with its own store handle."""
    stores = [open_store(store_url) for _ in range(collectors)]
    running = [Collector(s, ep, client_id=client_id if i == 0 else f"{client_id}-{i}",
                         share_group="bench", backoff=BackoffConfig(initial_s=0.05, max_s=0.5))
               for i, s in enumerate(stores)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in running]
    for c in running:
        await asyncio.wait_for(c.subscribed.wait(), 15)
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for s in stores:
            s.close()


def report(kind: str, seconds: float, lat: list[float], batches: int,
           events: int) -> dict[str, Any]:
    lat_ms = sorted(x * 1000 for x in lat)
    row = {"round": kind, "events": events, "events_per_s": rate(events, seconds),
           "payloads_per_s": rate(batches, seconds),
           "ack_ms_p50": round(statistics.median(lat_ms), 1),
           "ack_ms_p99": round(lat_ms[int(len(lat_ms) * 0.99) - 1], 1)}
    emit(row)
    return row


async def bench_mqtt(batches: list[Batch], size: int, inflight: int, collectors: int,
                     tmp: Path, new_store: Callable[[str], str]) -> dict[str, Any]:
    events = len(batches) * size
    out: dict[str, Any] = {}
    mq = Mosquitto(tmp / "mosquitto")
    mq.start()
    try:
        async with collector_running(new_store("mq"),
                                     Endpoint("127.0.0.1", mq.port, protocol="auto"),
                                     collectors=collectors):
            seconds, lat = await publish(mq.port, batches, inflight, None, None)
        row = report("mosquitto", seconds, lat, len(batches), events)
        out["mosquitto_events_per_s"] = row["events_per_s"]
        out["mosquitto_payloads_per_s"] = row["payloads_per_s"]
    finally:
        mq.stop()
    if len({b.gateway for b in batches}) > 1:
        return out  # the managed broker's ACL binds one user to its gateway's topics
    (tmp / "gw.pw").write_text("pw\n")
    port = free_port()
    broker = ManagedBroker(ManagedBrokerConfig(
        listen=f"127.0.0.1:{port}", state_dir=tmp / "managed", users=[
            BrokerUser(username=HIER.gateway, password=SecretRef(file=tmp / "gw.pw"))]), "bench")
    await broker.start()
    try:
        async with collector_running(new_store("managed"), broker.endpoint(),
                                     broker.username):
            seconds, lat = await publish(port, batches, inflight, HIER.gateway, "pw")
        out["managed_events_per_s"] = report("managed", seconds, lat, len(batches),
                                             events)["events_per_s"]
    finally:
        await broker.stop()
    return out


@click.command(help=__doc__.splitlines()[0])
@click.option("--batches", type=int, default=100)
@click.option("--batch", type=int, default=200)
@click.option("--inflight", type=int, default=8, help="unacked batches per gateway")
@click.option("--gateways", type=int, default=1, show_default=True,
              help="fake gateways the batches are dealt to (MQTT rounds)")
@click.option("--collectors", type=int, default=1, show_default=True,
              help="collectors on one shared subscription (Mosquitto round)")
@click.option("--group", type=int, default=16, show_default=True,
              help="payloads per transaction in the `group` round")
@click.option("--wire", type=click.Choice(["v1", "v2"]), default="v1", show_default=True,
              help="batch format: v1 JSON array, v2 shared fields + zstd (docs/wire.md)")
@click.option("--local/--no-local", default=True, show_default=True,
              help="the in-process rounds (validate, store, handler)")
@click.option("--store", "store", default="sqlite", show_default=True,
              help=STORE_HELP)
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
        batches = fleet(args.batches, args.batch, epoch, args.gateways, args.wire)
        figures = (bench_local(batches, args.batch, args.group, new_store) if args.local
                   else {})
        figures |= asyncio.run(bench_mqtt(batches, args.batch, args.inflight, args.collectors,
                                          tmp, new_store))
        if args.store != "sqlite" and args.disk_events:
            figures |= bench_disk(new_store("disk"), args.disk_events, args.batch)
    summary({"bench": "collector_ingest", "store": args.store.split("://")[0],
             "wire": args.wire, "batch": args.batch, "batches": args.batches,
             "inflight": args.inflight,
             "gateways": args.gateways, "collectors": args.collectors,
             **figures})


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
