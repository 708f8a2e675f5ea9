"""Collector ingest throughput: validation, the SQLite store, and end to end over MQTT.

    .venv/bin/python bench/_collector_ingest.py [--batches 100] [--batch 200] [--inflight 8]

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
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
import click
from aiomqtt import ProtocolVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import Timer, emit, rate, summary  # noqa: E402
from collector.config import BrokerUser, ManagedBrokerConfig  # noqa: E402
from collector.ingest import Collector, PayloadHandler  # noqa: E402
from collector.managed_broker import ManagedBroker  # noqa: E402
from collector.store import Origin, open_store  # noqa: E402
from collector.validate import Limits, check_payload  # noqa: E402
from edge_agent.config.models import BackoffConfig, SecretRef  # noqa: E402
from edge_agent.contract.envelope import Hierarchy, new_event  # noqa: E402
from edge_agent.contract.logs import configure  # noqa: E402
from edge_agent.contract.mqtt import Endpoint  # noqa: E402
from edge_agent.contract.topics import GatewayTopics  # noqa: E402
from edge_agent.contract.wire import Ack, encode_batch  # noqa: E402
from tests.peers import Mosquitto, free_port  # noqa: E402

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


def bench_local(batches: list[bytes], size: int, tmp: Path) -> dict[str, Any]:
    events = len(batches) * size
    with Timer() as t:
        verdicts = [check_payload(p, TOPICS) for p in batches]
    emit({"round": "validate", "events": events, "events_per_s": rate(events, t.seconds),
          "us_per_event": round(t.seconds / events * 1e6, 2)})
    store = open_store(f"sqlite:///{tmp / 'store.db'}")
    origin = Origin(TOPICS.events, HIER.gateway)
    with Timer() as t:
        for v in verdicts:
            store.ingest(origin, v.accepted, [])
    store_rate = rate(events, t.seconds)
    emit({"round": "store", "events": events, "events_per_s": store_rate,
          "ms_per_batch": round(t.seconds / len(batches) * 1000, 2)})
    store.close()
    handler = PayloadHandler(open_store(f"sqlite:///{tmp / 'handler.db'}"), Limits())
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
                     tmp: Path) -> dict[str, Any]:
    events = len(batches) * size
    out: dict[str, Any] = {}
    mq = Mosquitto(tmp / "mosquitto")
    mq.start()
    try:
        async with collector_running(f"sqlite:///{tmp / 'mq.db'}",
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
        async with collector_running(f"sqlite:///{tmp / 'managed.db'}", broker.endpoint(),
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
def main(**options: Any) -> None:
    args = SimpleNamespace(**options)
    configure("warning")
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as d:
        tmp = Path(d)
        epoch = "0123456789abcdef"
        batches = payloads(args.batches, args.batch, epoch)
        figures = bench_local(batches, args.batch, tmp)
        figures |= asyncio.run(bench_mqtt(batches, args.batch, args.inflight, tmp))
    summary({"bench": "collector_ingest", "batch": args.batch, "batches": args.batches,
             "inflight": args.inflight, **figures})


if __name__ == "__main__":
    main()
