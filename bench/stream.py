"""The event stream API: events/s to one consumer (cursor paging, SSE) and commit -> SSE
delivery latency with many consumers connected while ingest runs.

    .venv/bin/python bench/stream.py [--store sqlite|postgresql|URL] [--events 50000]
        [--consumers 20] [--rate 2000] [--seconds 20] [--poll 0.1]

1. `--events` events are loaded through the store's `ingest` (payloads of 500); one
   client pages through them (`limit=1000`), then one SSE client reads them all: events/s.
2. `--consumers` SSE clients connect at the end of the store; ingest commits `--rate`
   events/s (a payload of rate/20 every 50 ms) for `--seconds`; each event's commit time
   (when `ingest` returned) is compared with its arrival at every client: p50/p99/max.
The API runs in this process (aiohttp, as `edge-collector serve` runs it), the clients in
a child process (so their parsing does not share the server's GIL). JSON lines, then a
summary. `--store postgresql` starts its own durable PostgreSQL in a temp dir.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import emit, rate, summary  # noqa: E402
from bench._stores import STORE_HELP, stores  # noqa: E402
from collector.store import open_store  # noqa: E402
from collector.stream.api import StreamSettings  # noqa: E402
from collector.stream.reader import open_reader  # noqa: E402
from tests.stream_http import running_api  # noqa: E402
from tests.stream_support import ALL, Consumer, MemoryConsumers, event_rows, ingest  # noqa: E402

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _id_of(line: bytes) -> str:
    at = line.index(b'"id":"') + 6
    return line[at:at + 26].decode()


async def _page_all(base: str, n: int) -> tuple[int, float]:
    import aiohttp

    got, after = 0, None
    start = time.perf_counter()
    async with aiohttp.ClientSession() as s:
        while got < n:
            params = {"limit": "1000", **({"after": after} if after else {})}
            async with s.get(base + "/v1/events", params=params, headers=AUTH) as resp:
                body = await resp.json()
            got += len(body["events"])
            after = body["next"]
    return got, time.perf_counter() - start


async def _sse(base: str, headers: dict[str, str], until: float, n: int | None,
               log: list[tuple[str, float]]) -> None:
    """Reads chunks (not lines: 20 clients parsing line by line were the bottleneck)."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as s, \
            s.get(base + "/v1/events/stream", headers={**AUTH, **headers}) as resp:
        buf = b""
        while time.time() < until:
            try:
                chunk = await asyncio.wait_for(resp.content.readany(), until - time.time())
            except TimeoutError:
                return
            if not chunk:
                return
            now = time.time()
            *messages, buf = (buf + chunk).split(b"\n\n")
            for message in messages:
                if b"\ndata: " in message:
                    log.append((_id_of(message), now))
            if n is not None and len(log) >= n:
                return


def _client(mode: str, base: str, arg: Any, out: Any) -> None:
    """Child process: `page` (n), `drain` (n) or `live` ((consumers, cursor, until))."""
    async def main() -> Any:
        if mode == "page":
            return await _page_all(base, arg)
        if mode == "drain":
            log: list[tuple[str, float]] = []
            start = time.perf_counter()
            await _sse(base, {}, time.time() + 600, arg, log)
            return len(log), time.perf_counter() - start
        consumers, cursor, until = arg
        logs: list[list[tuple[str, float]]] = [[] for _ in range(consumers)]
        await asyncio.gather(*(_sse(base, {"Last-Event-ID": cursor}, until, None, lg)
                               for lg in logs))
        return logs

    out.put(asyncio.run(main()))


def _in_child(mode: str, base: str, arg: Any) -> Any:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_client, args=(mode, base, arg, out))
    proc.start()
    result = out.get()
    proc.join()
    return result


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * p))] * 1000, 1)


async def _bench(url: str, events: int, consumers: int, per_s: int, seconds: float,
                 poll_s: float) -> dict[str, Any]:
    store = open_store(url)
    for _ in range(events // 500):
        ingest(store, event_rows(500))
    reader = open_reader(url)
    settings = StreamSettings(heartbeat_s=5, poll_s=poll_s, behind_after_s=60)
    tokens = MemoryConsumers({TOKEN: Consumer("bench", ALL)})
    out: dict[str, Any] = {"store": reader.kind, "events": events, "poll_s": poll_s}
    async with running_api(reader, tokens, settings) as api:
        got, secs = await asyncio.to_thread(_in_child, "page", api.base, events)
        out["paging_events_per_s"] = rate(got, secs)
        emit({"paging": {"events": got, "seconds": round(secs, 2)}})
        got, secs = await asyncio.to_thread(_in_child, "drain", api.base, events)
        out["sse_events_per_s"] = rate(got, secs)
        emit({"sse_one": {"events": got, "seconds": round(secs, 2)}})
        head = api.codec.encode(await asyncio.to_thread(_end, reader))
        per_tick = max(1, per_s // 20)
        batches = [event_rows(per_tick) for _ in range(int(seconds * 20))]
        committed: dict[str, float] = {}
        until = time.time() + seconds + 3
        live = asyncio.create_task(asyncio.to_thread(
            _in_child, "live", api.base, (consumers, head, until)))
        await asyncio.sleep(1.5)  # the clients connect

        def produce() -> None:
            next_at = time.monotonic()
            for rows in batches:
                ingest(store, rows)
                now = time.time()
                for r in rows:
                    committed[r.id] = now
                next_at += 0.05
                time.sleep(max(0.0, next_at - time.monotonic()))

        t0 = time.perf_counter()
        await asyncio.to_thread(produce)
        ingest_s = time.perf_counter() - t0
        logs = await live
    reader.close()
    store.close()
    lat = [t - committed[i] for log in logs for i, t in log if i in committed]
    received = [len({i for i, _ in log if i in committed}) for log in logs]
    out.update({
        "consumers": consumers, "ingest_events_per_s": rate(len(committed), ingest_s),
        "delivered_min": min(received), "expected": len(committed),
        "latency_ms_p50": _pct(lat, 0.50), "latency_ms_p99": _pct(lat, 0.99),
        "latency_ms_max": round(max(lat) * 1000, 1),
    })
    emit({"live": out})
    return out


def _end(reader: Any) -> Any:
    from collector.stream.filter import Filter
    from collector.stream.position import Position

    pos = Position.start(reader.kind)
    while True:
        page = reader.read(pos, Filter())
        pos = page.next
        if not page.more:
            return pos


@click.command()
@click.option("--store", "kind", default="sqlite", show_default=True, help=STORE_HELP)
@click.option("--events", default=50_000, show_default=True)
@click.option("--consumers", default=20, show_default=True)
@click.option("--rate", "per_s", default=2000, show_default=True)
@click.option("--seconds", default=20.0, show_default=True)
@click.option("--poll", "poll_s", default=0.1, show_default=True)
def main(kind: str, events: int, consumers: int, per_s: int, seconds: float,
         poll_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, stores(kind, Path(tmp)) as fresh:
        result = asyncio.run(_bench(fresh(f"stream{secrets.token_hex(2)}"), events, consumers,
                                    per_s, seconds, poll_s))
    summary({"bench": "stream", **result})


if __name__ == "__main__":
    main()
