"""The fleet view's rebuild on start (docs/fleet.md): how long reading the window takes.

    .venv/bin/python bench/fleet_rebuild.py [--events 100000] [--gateways 200]
                                            [--store sqlite|postgresql|URL]

Loads `--events` readings spread over `--gateways` gateways (payloads of 500, through the
store's `ingest`), then runs the projector's rebuild as `serve` does (every area and
type, `since` = the window start; the window covers every event loaded): seconds and
events/s. JSON lines and a summary.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import emit, rate, summary  # noqa: E402
from bench._stores import STORE_HELP, stores  # noqa: E402
from collector.fleet.projector import FleetSettings, Projector  # noqa: E402
from collector.store import open_store  # noqa: E402
from collector.stream.filter import Filter  # noqa: E402
from collector.stream.position import Position  # noqa: E402
from collector.stream.reader import open_reader  # noqa: E402
from tests.stream_support import event_rows, ingest  # noqa: E402


@click.command()
@click.option("--store", "kind", default="sqlite", show_default=True, help=STORE_HELP)
@click.option("--events", default=100_000, show_default=True)
@click.option("--gateways", default=200, show_default=True)
def main(kind: str, events: int, gateways: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, stores(kind, Path(tmp)) as fresh:
        url = fresh("fleet")
        store = open_store(url)
        per_gw = max(1, events // gateways)
        for g in range(gateways):
            gw, left, seq = f"gw-{g:04d}", per_gw, 1
            while left > 0:
                n = min(500, left)
                ingest(store, event_rows(n, gw, start=seq))
                seq, left = seq + n, left - n
        store.close()
        reader = open_reader(url)
        try:
            projector = Projector(reader, url, FleetSettings())
            since = datetime.now(UTC) - timedelta(days=1)
            started = time.perf_counter()
            _, n = projector.catch_up(Position.start(reader.kind), Filter(since=since))
            seconds = time.perf_counter() - started
        finally:
            reader.close()
        row = {"store": url.split(":")[0], "events": n, "gateways": len(projector.fleet.gateways),
               "seconds": round(seconds, 2), "events_per_s": rate(n, seconds)}
        emit(row)
        summary({"bench": "fleet_rebuild", **row})


if __name__ == "__main__":
    main()
