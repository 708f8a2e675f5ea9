"""PostgreSQL: ways to insert a batch of events idempotently, on the store's real schema.

    .venv/bin/python bench/pg_insert_methods.py [--batches 50] [--batch 200] [--rounds 3]

Each method stores the same validated batches in a fresh, migrated database of its own
PostgreSQL server (durable, as Debian ships it), one transaction per batch, rounds
alternating between methods; one JSON line per method and round, then the summary
(best round of each). The rows are those of `event_rows` (schema version 2: id uuid,
one `places` row, epoch bigint, data text):
- `copy_direct` (the store): the stored ones of the batch's ids looked up (`id = ANY(…)
  AND id BETWEEN min AND max`), then the new rows COPYed into `event_rows`;
- `copy_staging`: every row COPYed into a temporary staging table, then `INSERT INTO
  event_rows SELECT … FROM staging ON CONFLICT (id) DO NOTHING RETURNING id`;
- `unnest`: `INSERT INTO event_rows SELECT FROM unnest(10 arrays) ON CONFLICT (id) DO
  NOTHING RETURNING id`.
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
from collector.model import EventRow  # noqa: E402
from collector.store import migrate_store  # noqa: E402
from collector.store.pg_keys import epoch_int, ulid_uuid  # noqa: E402
from collector.store.pg_partitions import PartitionKeeper  # noqa: E402
from collector.validate import check_payload  # noqa: E402
from edge_agent.contract.logs import configure  # noqa: E402
from tests.peers import Postgres  # noqa: E402

COLS = "id, time, received_at, epoch, seq, place, type, device, severity, data"
TYPES = ("uuid", "timestamptz", "timestamptz", "bigint", "bigint", "integer", "text", "text",
         "text", "text")
STORED = "SELECT id FROM event_rows WHERE id = ANY(%s) AND id BETWEEN %s AND %s"
NOW = "2026-12-05T00:00:00.000Z"
Method = Callable[[psycopg.Cursor[Any], list[EventRow]], None]


def values(rows: list[EventRow]) -> list[tuple[Any, ...]]:
    """Rows as `event_rows` takes them (the one place is id 1)."""
    return [(ulid_uuid(r.id), r.time, NOW, epoch_int(r.epoch), r.seq, 1, r.type, r.device,
             r.severity, r.data) for r in rows]


def copy_direct(cur: psycopg.Cursor[Any], rows: list[EventRow]) -> None:
    ids = [ulid_uuid(r.id) for r in rows]
    cur.execute(STORED, (ids, min(ids), max(ids)))
    stored = {i for (i,) in cur.fetchall()}
    with cur.copy(f"COPY event_rows ({COLS}) FROM STDIN".encode()) as copy:
        for v in values(rows):
            if v[0] not in stored:
                copy.write_row(v)


def copy_staging(cur: psycopg.Cursor[Any], rows: list[EventRow]) -> None:
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS staging AS SELECT {COLS} FROM event_rows "
                "WITH NO DATA".encode())
    cur.execute("TRUNCATE staging")
    with cur.copy(f"COPY staging ({COLS}) FROM STDIN".encode()) as copy:
        for v in values(rows):
            copy.write_row(v)
    cur.execute(f"INSERT INTO event_rows ({COLS}) SELECT {COLS} FROM staging "
                "ON CONFLICT (id) DO NOTHING RETURNING id".encode())


def unnest(cur: psycopg.Cursor[Any], rows: list[EventRow]) -> None:
    arrays = ", ".join(f"%s::{t}[]" for t in TYPES)
    vals = values(rows)
    cur.execute(f"INSERT INTO event_rows ({COLS}) SELECT * FROM unnest({arrays}) "
                "ON CONFLICT (id) DO NOTHING RETURNING id".encode(),
                [[v[i] for v in vals] for i in range(len(TYPES))])


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
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("INSERT INTO places (district, street, community, gateway) "
                                 "VALUES ('371312', '371312001', '371312001001', 'gw-b1')")
                with psycopg.connect(url) as conn, conn.cursor() as cur:
                    with Timer() as t:
                        for rows in validated:
                            with conn.transaction():
                                method(cur, rows)
                    count = cur.execute("SELECT COUNT(*) FROM event_rows").fetchone()
                assert count is not None and count[0] == batches * batch, (name, count)
                r = rate(batches * batch, t.seconds)
                emit({"round": rnd, "method": name, "events_per_s": r,
                      "ms_per_batch": round(t.seconds / batches * 1000, 2)})
                best[name] = max(best.get(name, 0.0), r)
    summary({"bench": "pg_insert_methods", "batch": batch, "batches": batches,
             **{f"{k}_events_per_s": v for k, v in best.items()}})


if __name__ == "__main__":
    main()
