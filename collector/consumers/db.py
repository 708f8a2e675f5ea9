"""The consumers' tables on either store, behind one small interface (`Db`).

SQL is written once with `?` placeholders; the PostgreSQL side swaps them for `%s`. Times
are aware UTC datetimes in Python; SQLite keeps them as RFC 3339 text with milliseconds
(`2026-12-05T13:40:00.123Z`, which sorts as it reads, like the other SQLite tables),
PostgreSQL as timestamptz.

SQLite: a read and a write connection shared by the threads of the process (a lock
around each use), WAL, `synchronous=FULL`; the consumers' tables are created on open if
missing, so a store file made before they existed gains them (the file itself must exist:
`edge-collector migrate` makes it). PostgreSQL: a small psycopg pool; the tables come from migration
`0004_consumers.sql`, and a store without it is refused with the command to run.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from collector.consumers.errors import ConsumerError, StoreUnavailable
from collector.store import parse_store_url
from edge_agent.contract.envelope import format_time, parse_time

Row = tuple[Any, ...]


class Tx(Protocol):
    def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def rowcount(self) -> int: ...


class Db(Protocol):
    kind: str

    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """Statements run together, committed at the end (rolled back on an exception)."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One statement in its own transaction."""

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for each row, all in one transaction."""

    def ts(self, at: datetime) -> Any:
        """A time as this backend stores it."""

    def dt(self, value: Any) -> datetime | None:
        """A stored time back (None stays None)."""

    def close(self) -> None: ...


def open_db(store_url: str) -> Db:
    try:
        parsed = parse_store_url(store_url)
    except ValueError as exc:
        raise ConsumerError(f"store URL {store_url!r}: {exc}") from None
    if parsed.kind == "sqlite":
        assert parsed.path is not None
        return SqliteDb(str(parsed.path))
    assert parsed.dsn is not None
    return PostgresDb(parsed.dsn)


# ----------------------------------------------------------------------------- SQLite


class _SqliteTx:
    def __init__(self, cur: sqlite3.Cursor) -> None:
        self.cur = cur

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.cur.execute(sql, tuple(params))
        return self.cur.fetchall()

    def rowcount(self) -> int:
        return self.cur.rowcount


class SqliteDb:
    """Two connections: reads (`query`: authenticate, listings) never queue behind a write
    (`transaction`, `many`: the audit flush, management) that waits for the file's write
    lock while a collector commits a group; WAL lets them read meanwhile."""

    kind = "sqlite"

    def __init__(self, path: str, busy_timeout_s: float = 30.0) -> None:
        from pathlib import Path

        from collector.store.schema import CONSUMER_TABLES
        from collector.store.sqlite import create_tables

        if not Path(path).exists():
            raise ConsumerError(f"no store at {path} (hint: `edge-collector migrate --store "
                                "sqlite:///…` creates it)")
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        try:
            self._writer = self._connect(path, busy_timeout_s)
            self._reader = self._connect(path, busy_timeout_s)
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                create_tables(self._writer, CONSUMER_TABLES)
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise ConsumerError(f"cannot open store {path}: {exc}") from None

    @staticmethod
    def _connect(path: str, busy_timeout_s: float) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout_s)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(cur)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            with self._read_lock:
                return self._reader.execute(sql, tuple(params)).fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the store cannot be read: {exc}") from exc

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.transaction() as tx:
            assert isinstance(tx, _SqliteTx)
            tx.cur.executemany(sql, [tuple(r) for r in rows])

    def ts(self, at: datetime) -> Any:
        return format_time(at.timestamp())

    def dt(self, value: Any) -> datetime | None:
        return None if value is None else parse_time(str(value))

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._reader.close()
            self._writer.close()


# ----------------------------------------------------------------------------- PostgreSQL


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class _PgTx:
    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.cur.execute(_pg(sql), tuple(params))
        return list(self.cur.fetchall()) if self.cur.description else []

    def rowcount(self) -> int:
        return int(self.cur.rowcount)


class PostgresDb:
    kind = "postgresql"

    def __init__(self, dsn: str) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout

        from collector.store.pg_migrate import missing_versions

        try:
            with psycopg.connect(dsn, connect_timeout=10) as conn:
                missing = missing_versions(conn)
        except psycopg.Error as exc:
            raise ConsumerError(f"cannot open store postgresql://…: {_line(exc)} (hint: is the "
                                "server up, and does the store URL name it?)") from None
        if any(name.endswith("_consumers.sql") for name in missing):
            raise ConsumerError("the PostgreSQL store has no consumers tables yet (hint: run "
                                "`edge-collector migrate --store URL`)")
        self._unavailable: tuple[type[BaseException], ...] = (psycopg.OperationalError,
                                                              PoolTimeout)
        # A request waits at most `timeout` for a connection while the server is away.
        self._pool: Any = ConnectionPool(dsn, min_size=1, max_size=4, open=False,
                                         name="collector-consumers",
                                         check=ConnectionPool.check_connection,
                                         kwargs={"connect_timeout": 3}, timeout=3)
        try:
            self._pool.open(wait=True, timeout=15)
        except PoolTimeout as exc:
            self._pool.close()
            raise ConsumerError(f"cannot open store postgresql://…: {_line(exc)}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield _PgTx(cur)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            with self.transaction() as tx:
                return tx.run(sql, params)
        except self._unavailable as exc:
            raise StoreUnavailable(f"the store cannot be read: {_line(exc)}") from exc

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(_pg(sql), [tuple(r) for r in rows])

    def ts(self, at: datetime) -> Any:
        return at

    def dt(self, value: Any) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.astimezone(UTC)

    def close(self) -> None:
        self._pool.close()


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
