"""Daily partitions of `event_rows` on PostgreSQL: created ahead, dropped whole past retention.

`event_rows_pYYYYMMDD` holds the ids minted in [day, day + 1) UTC: the uuid range
[`day_bound(day)`, `day_bound(day + 1)`) (the ULID's first 48 bits are its mint time in
ms; `pg_keys`). `run_once` creates the partitions from `DAYS_BACK` days ago to
`DAYS_AHEAD` days ahead (a backlog of a day or two lands in its own day; older or
far-future ids go to `event_rows_default`, which is never dropped), then drops every daily
partition that ends at or before now − `retention_days`: DETACH, then DROP TABLE of the
detached table. The id is the primary key, so a dropped day takes its ids with it: a
resend of one of them later is stored again (as with any store past its retention).

Creating and detaching a partition take a short exclusive lock on `event_rows` (DETACH
CONCURRENTLY is not allowed next to a default partition): both run with `lock_timeout`,
so ingest waits at most that long; what times out is tried again at the next round
(partitions are made 3 days ahead: many rounds before they are needed).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from collector.store.pg_keys import day_bound
from edge_agent.contract.logs import get_logger

log = get_logger("collector.store")

DAYS_BACK, DAYS_AHEAD = 2, 3
_NAME = re.compile(r"^event_rows_p(\d{8})$")
_LOCK_TIMEOUT = "1s"


def partition_name(day: date) -> str:
    return f"event_rows_p{day:%Y%m%d}"


class PartitionKeeper:
    def __init__(self, dsn: str, *, retention_days: int | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.dsn = dsn
        self.retention_days = retention_days
        self._clock = clock

    def today(self) -> date:
        return datetime.fromtimestamp(self._clock(), UTC).date()

    def run_once(self) -> tuple[list[str], list[str]]:
        """Returns (partitions created, partitions dropped)."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            created = self.create_ahead(conn)
            dropped = self.drop_expired(conn)
        return created, dropped

    def create_ahead(self, conn: psycopg.Connection[Any]) -> list[str]:
        have = set(existing(conn))
        created: list[str] = []
        today = self.today()
        for offset in range(-DAYS_BACK, DAYS_AHEAD + 1):
            day = today + timedelta(days=offset)
            name = partition_name(day)
            if name in have:
                continue
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                        sql.Literal(_LOCK_TIMEOUT)))
                    conn.execute(sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} PARTITION OF event_rows "
                        "FOR VALUES FROM ({}) TO ({})").format(
                            sql.Identifier(name), sql.Literal(str(day_bound(day))),
                            sql.Literal(str(day_bound(day + timedelta(days=1))))))
            except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
                # another collector created it between our look and our CREATE (`IF NOT
                # EXISTS` is not atomic against a concurrent CREATE): it is there
                continue
            except psycopg.errors.LockNotAvailable:
                log.info("partition_create_postponed", partition=name,
                         hint="ingest held the table; tried again at the next round")
                continue
            except psycopg.errors.CheckViolation:
                # events of that day already sit in the default partition: they stay there
                log.warning("partition_not_created", partition=name,
                            hint="events of that day are in event_rows_default; they are kept")
                continue
            created.append(name)
        if created:
            log.info("partitions_created", partitions=created)
        return created

    def drop_expired(self, conn: psycopg.Connection[Any]) -> list[str]:
        if self.retention_days is None:
            return []
        cutoff = self.today() - timedelta(days=self.retention_days)
        dropped: list[str] = []
        for name, day in existing(conn).items():
            end = day + timedelta(days=1)
            if end > cutoff:
                continue
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                        sql.Literal(_LOCK_TIMEOUT)))
                    conn.execute(sql.SQL("ALTER TABLE event_rows DETACH PARTITION {}").format(
                        sql.Identifier(name)))
            except psycopg.errors.LockNotAvailable:
                log.info("partition_detach_postponed", partition=name,
                         hint="ingest held the table; tried again at the next round")
                continue
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            dropped.append(name)
        if dropped:
            log.info("partitions_dropped", partitions=dropped, retention_days=self.retention_days)
        return dropped


def existing(conn: psycopg.Connection[Any]) -> dict[str, date]:
    """Daily partitions attached to `event_rows`, by name, oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'event_rows'::regclass").fetchall()
    found = {}
    for (name,) in rows:
        m = _NAME.match(str(name))
        if m:
            found[str(name)] = datetime.strptime(m.group(1), "%Y%m%d").date()
    return dict(sorted(found.items(), key=lambda kv: kv[1]))

