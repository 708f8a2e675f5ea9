"""PostgreSQL schema migrations: numbered SQL files in `migrations/pg/`, a version table.

`NNNN_name.sql` files are applied in order, each in its own transaction together with
its row in `schema_version`; an advisory lock makes concurrent `migrate` runs wait for
each other. Applying is idempotent: applied versions are skipped. Numbers may have gaps
and a lower number may arrive later (two features developed side by side, e.g. 0003 and
0004): every version not recorded in `schema_version` is applied, not only those above
the highest recorded one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from collector.store._rows import one_line
from collector.store.base import StoreError

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
#: Any constant: the key of the advisory lock `migrate` holds while it applies.
_LOCK_KEY = 0x63645F6D6967


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    folder = resources.files("collector.store.migrations.pg")
    found = []
    for item in folder.iterdir():
        m = _NAME.match(item.name)
        if m:
            found.append(Migration(int(m.group(1)), item.name, item.read_text("utf-8")))
    return sorted(found, key=lambda x: x.version)


def latest_version() -> int:
    return max(m.version for m in migrations())


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version of the database (0: never migrated)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(got[0]) if got else 0


def applied_versions(conn: psycopg.Connection[Any]) -> set[int]:
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return set()
    return {int(v) for (v,) in conn.execute("SELECT version FROM schema_version").fetchall()}


def missing_versions(conn: psycopg.Connection[Any]) -> list[str]:
    """The migrations this code has that the database has not applied (by name)."""
    have = applied_versions(conn)
    return [m.name for m in migrations() if m.version not in have]


def migrate(conn: psycopg.Connection[Any], upto: int | None = None) -> list[str]:
    """Apply what is missing (up to version `upto`, default all); returns the names applied
    (empty: already up to date)."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                     "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        have = applied_versions(conn)
        for m in migrations():
            if m.version in have or (upto is not None and m.version > upto):
                continue
            with conn.transaction():
                conn.execute(m.sql.encode())
                conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                             (m.version, m.name))
            applied.append(m.name)
    return applied


def migrate_url(dsn: str) -> list[str]:
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return migrate(conn)
    except psycopg.Error as exc:
        raise StoreError(f"cannot migrate the PostgreSQL store: {one_line(exc)}") from exc

