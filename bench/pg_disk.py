"""PostgreSQL disk per event, per relation: heap, TOAST and each index, after VACUUM.

    .venv/bin/python bench/pg_disk.py [--events 200000] [--gateways 3000] [--windows 4]
        [--store postgresql://…]

Loads `--events` events of a city mix (the city bench's `Minter`: heartbeats, smoke and
water readings, alarms raised and cleared; 3,000 gateways of 30 per community) minted over
the last 24 hours, through the store's `ingest` as the collector calls it: the day is cut
into `--windows` windows and each gateway's events of one window are one payload (so
payloads of many gateways interleave, as live traffic does). Then VACUUM ANALYZE and, per
relation (partitions summed into their parent; an index named by its parent index):
bytes per event. One JSON line per relation, then `{"summary": ...}` with the total.
Without `--store` it starts its own PostgreSQL in a temp dir on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._city_traffic import Minter  # noqa: E402
from bench._common import Timer, emit, rate, summary  # noqa: E402
from collector.store import Origin, migrate_store, open_store  # noqa: E402
from collector.validate import check_payload  # noqa: E402
from edge_agent.contract.envelope import Event, Hierarchy  # noqa: E402
from edge_agent.contract.logs import configure  # noqa: E402
from edge_agent.contract.topics import GatewayTopics  # noqa: E402
from edge_agent.contract.wire import encode_batch  # noqa: E402
from tests.peers import Postgres  # noqa: E402

DISTRICT, STREET = "371312", "371312001"
#: Share of the events that are heartbeats (the rest: the Minter's on-change mix).
HEARTBEAT_SHARE = 0.1

#: Bytes of every relation, partitions folded into their root (tables and indexes).
_SIZES = """
SELECT COALESCE(pg_partition_root(c.oid), c.oid)::regclass::text AS rel, c.relkind,
       SUM(pg_relation_size(c.oid)) AS main,
       SUM(COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0)) AS toast
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')
GROUP BY 1, 2 ORDER BY 1
"""


def city_events(events: int, gateways: int, seed: int = 11) -> dict[int, list[Event]]:
    """gateway number -> its events, minted in time order over the last 24 hours."""
    rng = random.Random(seed)
    minters = [Minter(Hierarchy(district=DISTRICT, street=STREET,
                                community=f"{STREET}{g // 30:03d}", gateway=f"gw-{g:04d}"), rng)
               for g in range(gateways)]
    start = time.time() - 86400
    out: dict[int, list[Event]] = defaultdict(list)
    for i in range(events):
        at = start + 86400 * i / events
        g = rng.randrange(gateways)
        minter = minters[g]
        ev = (minter.heartbeat(rng.randrange(50), at) if rng.random() < HEARTBEAT_SHARE
              else minter.change(at))
        out[g].append(ev)
    return out


def load(url: str, by_gateway: dict[int, list[Event]], windows: int) -> tuple[int, float]:
    """Ingest every gateway's events, one payload per gateway and window; (events, s)."""
    payloads: list[tuple[int, list[str]]] = []
    seqs: dict[int, int] = defaultdict(int)
    epoch = "00c0ffee00c0ffee"
    for w in range(windows):
        for g, evs in by_gateway.items():
            n = len(evs)
            part = evs[n * w // windows:n * (w + 1) // windows]
            if not part:
                continue
            stamped = []
            for ev in part:
                seqs[g] += 1
                stamped.append(ev.stamped(epoch, seqs[g]).to_json())
            payloads.append((g, stamped))
    store = open_store(url)
    total = 0
    try:
        with Timer() as t:
            for g, stamped in payloads:
                first = by_gateway[g][0]
                topics = GatewayTopics(first.district, first.community, first.gateway)
                verdict = check_payload(encode_batch(stamped), topics)
                assert not verdict.rejected, verdict.rejected[:1]
                total += store.ingest(Origin(topics.events, first.gateway),
                                      verdict.accepted, []).inserted
    finally:
        store.close()
    return total, t.seconds


def measure(url: str, events: int) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        rows = conn.execute(_SIZES).fetchall()
    total = 0
    out: dict[str, Any] = {}
    for rel, kind, main, toast in rows:
        size = int(main) + int(toast)
        if size == 0 or rel in ("schema_version", "schema_version_pkey"):
            continue
        total += size
        per = round(size / events, 1)
        if kind == "r":
            emit({"relation": rel, "kind": "table", "bytes_per_event": per,
                  "heap_bytes_per_event": round(int(main) / events, 1),
                  "toast_bytes_per_event": round(int(toast) / events, 1), "bytes": size})
        else:
            emit({"relation": rel, "kind": "index", "bytes_per_event": per, "bytes": size})
        out[rel] = per
    return {"bytes_per_event": round(total / events, 1), "relations": out}


@contextlib.contextmanager
def database(store: str | None) -> Iterator[str]:
    """A fresh database on the given server, or on one of our own; migrated."""
    server: Postgres | None = None
    if store is None:
        server = Postgres(Path(tempfile.mkdtemp(prefix="bench-pgdisk-")))
        server.start()
        base = server.url()
    else:
        base = store
    name = "bench_pg_disk"
    try:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = base.split("?")[0].rsplit("/", 1)[0] + "/" + name
        migrate_store(url)
        yield url
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)


@click.command(help=__doc__.splitlines()[0])
@click.option("--events", type=int, default=200_000, show_default=True)
@click.option("--gateways", type=int, default=3000, show_default=True)
@click.option("--windows", type=int, default=4, show_default=True,
              help="payloads per gateway (the day cut into this many windows)")
@click.option("--store", default=None, help="a postgresql:// URL of a server to use")
def main(events: int, gateways: int, windows: int, store: str | None) -> None:
    configure("warning")
    by_gateway = city_events(events, gateways)
    with database(store) as url:
        stored, seconds = load(url, by_gateway, windows)
        emit({"round": "load", "events": stored, "events_per_s": rate(stored, seconds)})
        figures = measure(url, stored)
    summary({"bench": "pg_disk", "events": stored, "gateways": gateways, "windows": windows,
             **figures})


if __name__ == "__main__":
    main()
