"""PostgreSQL: paging far back through the store, with and without windows of
transaction ids (docs/stream-api.md, "Reading far back").

    .venv/bin/python bench/stream_pages.py [--events 200000] [--store postgresql|URL]

Loads `--events` events in payloads of 500 through the store's `ingest`, VACUUM ANALYZE,
then pages through all of them from the start (`limit` 1,000) with the reader as shipped
(windows from 16 transaction ids) and with one window as wide as all ids (the plain
`tx > cursor ORDER BY tx, id`): events/s and the slowest page. JSON lines and a summary.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import emit, rate, summary  # noqa: E402
from bench._stores import STORE_HELP, stores  # noqa: E402
from collector.store import open_store  # noqa: E402
from collector.stream.filter import Filter  # noqa: E402
from collector.stream.position import Position  # noqa: E402
from collector.stream.reader import PostgresReader  # noqa: E402
from tests.stream_support import event_rows, ingest  # noqa: E402


@click.command()
@click.option("--store", "kind", default="postgresql", show_default=True, help=STORE_HELP)
@click.option("--events", default=200_000, show_default=True)
def main(kind: str, events: int) -> None:
    if kind.startswith("sqlite"):
        raise click.UsageError("PostgreSQL only (SQLite pages by rowid, a b-tree walk)")
    with tempfile.TemporaryDirectory() as tmp, stores(kind, Path(tmp)) as fresh:
        url = fresh("stream_pages")
        store = open_store(url)
        for _ in range(events // 500):
            ingest(store, event_rows(500))
        store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE event_rows")
        result = {}
        for name, window in (("windows", 16), ("one_query", 1 << 62)):
            reader = PostgresReader(url, window=window)
            pos, n, worst = Position.start("postgresql"), 0, 0.0
            start = time.perf_counter()
            while True:
                t = time.perf_counter()
                page = reader.read(pos, Filter(), 1000)
                worst = max(worst, time.perf_counter() - t)
                n, pos = n + len(page.events), page.next
                if not page.more:
                    break
            secs = time.perf_counter() - start
            reader.close()
            row = {"events": n, "events_per_s": rate(n, secs),
                   "slowest_page_ms": round(worst * 1000, 1)}
            emit({name: row})
            result[name] = row
    summary({"bench": "stream_pages", "loaded": events, **result})


if __name__ == "__main__":
    main()
