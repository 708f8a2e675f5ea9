"""The outbox's own transaction helper and DDL (it does not use sqlite-utils)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.outbox._schema import DDL, create_schema
from edge_agent.outbox._transaction import table_names, transaction


def connection() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (x INTEGER)")
    return conn


def rows(conn: sqlite3.Connection) -> list[int]:
    return [x for (x,) in conn.execute("SELECT x FROM t ORDER BY x")]


def test_a_block_commits_when_it_ends_and_rolls_back_when_it_raises() -> None:
    conn = connection()
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.in_transaction
    assert not conn.in_transaction and rows(conn) == [1]
    with pytest.raises(RuntimeError), transaction(conn):
        conn.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("boom")
    assert not conn.in_transaction and rows(conn) == [1]


def test_a_block_inside_another_is_a_savepoint() -> None:
    conn = connection()
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(RuntimeError), transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("inner")
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (3)")
    assert rows(conn) == [1, 3]


def test_a_failing_commit_rolls_back(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE c (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
    conn.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(sqlite3.IntegrityError), transaction(conn):
        conn.execute("INSERT INTO c VALUES (7)")  # checked at COMMIT: fails there
    assert not conn.in_transaction
    assert conn.execute("SELECT COUNT(*) FROM c").fetchone() == (0,)


def test_the_schema_of_a_new_file() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    assert table_names(conn) == []
    with transaction(conn):
        create_schema(conn, "0123456789abcdef", 0.0)
    assert sorted(table_names(conn)) == ["events", "meta"]
    stored = [sql for (sql,) in conn.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")]
    assert stored == list(DDL)
    assert dict(conn.execute("SELECT key, value FROM meta")) == {
        "format": "1", "epoch": "0123456789abcdef", "next_seq": "1", "evicted_total": "0",
        "created_at": "1970-01-01T00:00:00.000Z"}


def test_the_agent_loads_neither_sqlite_utils_nor_numpy() -> None:
    """docs/dependencies.md: sqlite-utils (and the numpy it picks up) cost the agent ~12 MiB;
    the collector keeps sqlite-utils, without numpy."""
    code = ("import sys\n"
            "import edge_agent.agent, edge_agent.cli, drivers.modbus, drivers.serial_line\n"
            "agent = sorted({'sqlite_utils', 'numpy'} & set(sys.modules))\n"
            "import collector.app, collector.store.sqlite\n"
            "print(agent, sorted({'sqlite_utils', 'numpy'} & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[] ['sqlite_utils']"
