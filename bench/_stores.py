"""Store URLs for the benches: SQLite files, or fresh, migrated PostgreSQL databases."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from collector.store import migrate_store
from tests.peers import Postgres

#: What `--store` takes: `sqlite`, `postgresql` (a server of the bench's own: Debian's
#: PostgreSQL as shipped, fsync and synchronous commit on, in a temp dir on 127.0.0.1) or
#: a `postgresql://` URL (a fresh database per round on that server); a `sqlite:///` URL
#: is used as it is.
STORE_HELP = "sqlite, postgresql (a server of its own), or a postgresql:// or sqlite:/// URL"


@contextlib.contextmanager
def stores(kind: str, tmp: Path) -> Iterator[Callable[[str], str]]:
    """A function giving a fresh, ready store URL per name."""
    if kind == "sqlite":
        yield lambda name: f"sqlite:///{tmp / (name + '.db')}"
        return
    if kind.startswith("sqlite:"):  # that file, whatever the name
        yield lambda name: kind
        return
    server: Postgres | None = None
    if kind == "postgresql":
        workdir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        server = Postgres(workdir, durable=True)
        server.start()
        base = server.url()
    else:
        base = kind

    def fresh(name: str) -> str:
        db = f"bench_{name}_{os.getpid()}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(db)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        url = base.split("?")[0].rsplit("/", 1)[0] + "/" + db  # same server, that database
        migrate_store(url)
        return url

    try:
        yield fresh
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
