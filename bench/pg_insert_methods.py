"""PostgreSQL: ways to insert a batch of events idempotently, on the store's real schema.

    .venv/bin/python bench/pg_insert_methods.py [--batches 50] [--batch 200] [--rounds 3]

Each method stores the same validated batches in a fresh, migrated database of its own
PostgreSQL server (durable, as Debian ships it), one transaction per batch, rounds
alternating between methods; one JSON line per method and round, then the summary
(best round of each):
- `copy_direct` (the store): ids into `event_ids` by `unnest … ON CONFLICT DO NOTHING
  RETURNING id`, then the new rows COPYed into `events`;
- `copy_staging`: every row COPYed into a temporary staging table, then `INSERT INTO
  event_ids … SELECT … ON CONFLICT DO NOTHING RETURNING id` and `INSERT INTO events
  SELECT … FROM staging` for those ids;
- `unnest`: ids as in `copy_direct`, the rows by `INSERT INTO events SELECT FROM unnest(14
  arrays)`.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import Timer, emit, rate, summary  # noqa: E402
from bench.collector_ingest import TOPICS, payloads  # noqa: E402
from collector.model import EVENT_COLUMNS, EventRow  # noqa: E402
from collector.store import migrate_store  # noqa: E402
from collector.store.pg_partitions import PartitionKeeper  # noqa: E402
from collector.validate import check_payload  # noqa: E402
from edge_agent.contract.logs import configure  # noqa: E402
from tests.peers import Postgres  # noqa: E402

COLS = ", ".join(EVENT_COLUMNS)
CASTS = {"time": "timestamptz", "received_at": "timestamptz", "seq": "bigint", "data": "jsonb"}
IDS = ("INSERT INTO event_ids (id, time) SELECT i, t::timestamptz FROM unnest(%s::text[], "
       "%s::text[]) AS u(i, t) ON CONFLICT (id) DO NOTHING RETURNING id")
NOW = "2026-12-05T00:00:00.000Z"
Method = Callable[[psycopg.Cursor[Any], list[EventRow]], None]


def new_ids(cur: psycopg.Cursor[Any], rows: list[EventRow]) -> list[EventRow]:
    cur.execute(IDS, ([r.id for r in rows], [r.time for r in rows]))
    fresh = {i for (i,) in cur.fetchall()}
    return [r for r in rows if r.id in fresh]


def copy_direct(cur: psycopg.Cursor[Any], rows: list[EventRow]) -> None:
    fresh = new_ids(cur, rows)
    with cur.copy(f"COPY events ({COLS}) FROM STDIN".encode()) as copy:
        for r in fresh:
            copy.write_row(r.values(NOW))


def copy_staging(cur: psycopg.Cursor[Any], rows: list[EventRow]) -> None:
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS staging (LIKE events) ON COMMIT DELETE ROWS")
    with cur.copy(f"COPY staging ({COLS}) FROM STDIN".encode()) as copy:
        for r in rows:
            copy.write_row(r.values(NOW))
    cur.execute(f"WITH fresh AS (INSERT INTO event_ids (id, time) SELECT id, time FROM staging "
                f"ON CONFLICT (id) DO NOTHING RETURNING id) INSERT INTO events ({COLS}) "
                f"SELECT {COLS} FROM staging WHERE id IN (SELECT id FROM fresh)".encode())


def unnest(cur: psycopg.Cursor[Any], rows: list[EventRow]) -> None:
    fresh = new_ids(cur, rows)
    select = ", ".join(f"{c}::{CASTS[c]}" if c in CASTS else c for c in EVENT_COLUMNS)
    arrays = ", ".join("%s::text[]" for _ in EVENT_COLUMNS)
    values = [r.values(NOW) for r in fresh]
    cur.execute(f"INSERT INTO events ({COLS}) SELECT {select} FROM unnest({arrays}) "
                f"AS t({COLS})".encode(),
                [[str(v[i]) for v in values] for i in range(len(EVENT_COLUMNS))])


METHODS: dict[str, Method] = {"copy_direct": copy_direct, "copy_staging": copy_staging,
                              "unnest": unnest}


@contextlib.contextmanager
def server() -> Iterator[Postgres]:
    pg = Postgres(Path(tempfile.mkdtemp(prefix="bench-pg-")), durable=True)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(pg.workdir, ignore_errors=True)


@click.command(help=__doc__.splitlines()[0])
@click.option("--batches", type=int, default=50)
@click.option("--batch", type=int, default=200)
@click.option("--rounds", type=int, default=3)
def main(batches: int, batch: int, rounds: int) -> None:
    configure("warning")
    best: dict[str, float] = {}
    with server() as pg:
        for rnd in range(rounds):
            epoch = f"{rnd:016x}"
            validated = [check_payload(p, TOPICS).accepted
                         for p in payloads(batches, batch, epoch)]
            for name, method in METHODS.items():
                url = pg.new_database()
                migrate_store(url)
                PartitionKeeper(url, retention_days=None).run_once()  # as the store does
                with psycopg.connect(url) as conn, conn.cursor() as cur:
                    with Timer() as t:
                        for rows in validated:
                            with conn.transaction():
                                method(cur, rows)
                    count = cur.execute("SELECT COUNT(*) FROM events").fetchone()
                assert count is not None and count[0] == batches * batch, (name, count)
                r = rate(batches * batch, t.seconds)
                emit({"round": rnd, "method": name, "events_per_s": r,
                      "ms_per_batch": round(t.seconds / batches * 1000, 2)})
                best[name] = max(best.get(name, 0.0), r)
    summary({"bench": "pg_insert_methods", "batch": batch, "batches": batches,
             **{f"{k}_events_per_s": v for k, v in best.items()}})


if __name__ == "__main__":
    main()
