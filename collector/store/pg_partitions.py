"""Daily partitions of `events` on PostgreSQL: created ahead, dropped whole past retention.

`events_pYYYYMMDD` holds [day, day + 1) in UTC. `run_once` creates the partitions from
`DAYS_BACK` days ago to `DAYS_AHEAD` days ahead (a backlog of a day or two lands in its
own day; older or far-future times go to `events_default`, which is never dropped), then
drops every daily partition that ends at or before now − `retention_days`: DETACH, then
DROP TABLE of the detached table, then the `event_ids` of that day in small batches.

Creating and detaching a partition take a short exclusive lock on `events` (DETACH
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

from edge_agent.contract.logs import get_logger

log = get_logger("collector.store")

DAYS_BACK, DAYS_AHEAD = 2, 3
_NAME = re.compile(r"^events_p(\d{8})$")
_LOCK_TIMEOUT = "1s"
_ID_BATCH = 10_000


def partition_name(day: date) -> str:
    return f"events_p{day:%Y%m%d}"


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
                        "CREATE TABLE IF NOT EXISTS {} PARTITION OF events "
                        "FOR VALUES FROM ({}) TO ({})").format(
                            sql.Identifier(name), sql.Literal(f"{day.isoformat()}T00:00:00Z"),
                            sql.Literal(f"{(day + timedelta(days=1)).isoformat()}T00:00:00Z")))
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
                            hint="events of that day are in events_default; they are kept")
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
                    conn.execute(sql.SQL("ALTER TABLE events DETACH PARTITION {}").format(
                        sql.Identifier(name)))
            except psycopg.errors.LockNotAvailable:
                log.info("partition_detach_postponed", partition=name,
                         hint="ingest held the table; tried again at the next round")
                continue
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            _forget_ids(conn, day, end)
            dropped.append(name)
        if dropped:
            log.info("partitions_dropped", partitions=dropped, retention_days=self.retention_days)
        return dropped


def existing(conn: psycopg.Connection[Any]) -> dict[str, date]:
    """Daily partitions attached to `events`, by name, oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass").fetchall()
    found = {}
    for (name,) in rows:
        m = _NAME.match(str(name))
        if m:
            found[str(name)] = datetime.strptime(m.group(1), "%Y%m%d").date()
    return dict(sorted(found.items(), key=lambda kv: kv[1]))


def _forget_ids(conn: psycopg.Connection[Any], day: date, end: date) -> None:
    """Delete the ids of a dropped day, a batch per transaction (no long lock)."""
    while True:
        cur = conn.execute(
            "DELETE FROM event_ids WHERE id IN (SELECT id FROM event_ids WHERE time >= %s "
            "AND time < %s LIMIT %s)", (_midnight(day), _midnight(end), _ID_BATCH))
        if cur.rowcount < _ID_BATCH:
            return


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
