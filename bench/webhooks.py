"""Webhooks: events/s delivered to one receiver (signed CloudEvents batches over HTTP).

    .venv/bin/python bench/webhooks.py [--store sqlite|postgresql|URL] [--events 100000]
        [--batch 100 --batch 500]

`--events` events are loaded through the store's `ingest`; a consumer with every area and
type and one webhook are added; the delivery loop (`collector.webhooks.deliver`, as
`edge-collector serve` runs it) sends the whole store to one receiver on 127.0.0.1 (plain
HTTP: TLS would measure the TLS stack), which runs in a child process (aiohttp; it counts
the events of each body and answers 200), so its parsing does not share the loop's GIL.
One round per `--batch` (events per POST, ≤ 256 KiB). JSON lines, then a summary.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
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
from collector.consumers import open_consumers, parse_scope  # noqa: E402
from collector.store import open_store, parse_store_url  # noqa: E402
from collector.stream.reader import open_reader  # noqa: E402
from collector.webhooks.db import open_webhook_db  # noqa: E402
from collector.webhooks.deliver import Deliverer, DeliverySettings  # noqa: E402
from collector.webhooks.service import Webhooks  # noqa: E402
from edge_agent.contract.logs import configure  # noqa: E402
from tests.peers import free_port  # noqa: E402
from tests.stream_support import event_rows, ingest  # noqa: E402
from tests.test_collector_support import new_epoch  # noqa: E402


def _receiver(port: int, count: Any, ready: Any) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        with count.get_lock():
            count.value += body.count(b'"specversion"')
        return web.Response(status=200)

    async def main() -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/hook", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


async def _round(url: str, n: int, batch: int, name: str) -> dict[str, Any]:
    port = free_port()
    count, ready = mp.Value("q", 0), mp.Event()
    child = mp.Process(target=_receiver, args=(port, count, ready), daemon=True)
    child.start()
    ready.wait(30)
    kind = "postgresql" if parse_store_url(url).kind == "postgresql" else "sqlite"
    hooks = Webhooks(open_webhook_db(url), kind)
    hooks.add(name, "bench", f"http://127.0.0.1:{port}/hook")
    reader = open_reader(url)
    stop = asyncio.Event()
    deliverer = Deliverer(hooks, reader, DeliverySettings(max_events=batch, poll_s=0.05,
                                                          refresh_s=0.05))
    try:
        start = time.perf_counter()
        task = asyncio.create_task(deliverer.run(stop))
        while count.value < n:  # noqa: ASYNC110 - a counter in another process
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        stop.set()
        await task
    finally:
        child.kill()
        reader.close()
        hooks.close()
    return {"round": "webhook", "store": kind, "batch": batch, "events": n,
            "seconds": round(elapsed, 3), "events_per_s": rate(n, elapsed)}


@click.command()
@click.option("--store", "store_kind", default="sqlite", show_default=True, help=STORE_HELP)
@click.option("--events", default=100_000, show_default=True)
@click.option("--batch", "batches", multiple=True, type=int, default=(100, 500),
              show_default=True)
def main(store_kind: str, events: int, batches: tuple[int, ...]) -> None:
    configure("warning")  # stdout is for the JSON lines
    with tempfile.TemporaryDirectory() as tmp, stores(store_kind, Path(tmp)) as make:
        url = make("webhooks")
        store = open_store(url)
        epoch = new_epoch()
        for start in range(1, events + 1, 500):
            ingest(store, event_rows(min(500, events - start + 1), start=start,
                                     epoch=epoch))
        store.close()
        with open_consumers(url) as c:
            c.add("bench", parse_scope(["all"], ["*"]))
        results = []
        for i, batch in enumerate(batches):
            got = asyncio.run(_round(url, events, batch, f"bench-{i}"))
            emit(got)
            results.append(got)
    summary({"bench": "webhooks", "store": store_kind,
             "events_per_s": {str(r["batch"]): r["events_per_s"] for r in results}})


if __name__ == "__main__":
    main()
