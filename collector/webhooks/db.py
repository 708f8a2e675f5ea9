"""The webhook tables on either store, through the consumers' `Db` (one SQL text for
both, `?` placeholders).

SQLite: `WEBHOOK_TABLES` are created on open where missing (a store made before them gains
them, as the consumers' tables do). PostgreSQL: migration `0005_webhooks.sql`; a store
without it is refused with the command to run.
"""

from __future__ import annotations

import sqlite3

from collector.consumers.db import Db, open_db
from collector.consumers.errors import ConsumerError
from collector.store import parse_store_url


class WebhookDbError(RuntimeError):
    """The webhook tables cannot be used; the message says what to do."""


def open_webhook_db(store_url: str) -> Db:
    try:
        db = open_db(store_url)
    except ConsumerError as exc:
        raise WebhookDbError(str(exc)) from None
    try:
        if db.kind == "sqlite":
            _sqlite_tables(store_url)
        else:
            _pg_check(store_url)
    except BaseException:
        db.close()
        raise
    return db


def _sqlite_tables(store_url: str) -> None:
    from collector.store.schema import WEBHOOK_TABLES
    from collector.store.sqlite import create_tables

    path = parse_store_url(store_url).path
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            create_tables(conn, WEBHOOK_TABLES)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise WebhookDbError(f"cannot add the webhook tables to {path}: {exc}") from None
    finally:
        conn.close()


def _pg_check(store_url: str) -> None:
    import psycopg

    from collector.store.pg_migrate import missing_versions

    dsn = parse_store_url(store_url).dsn
    assert dsn is not None
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        missing = missing_versions(conn)
    if any(name.endswith("_webhooks.sql") for name in missing):
        raise WebhookDbError("the PostgreSQL store has no webhook tables yet (hint: run "
                             "`edge-collector migrate --store URL`)")
