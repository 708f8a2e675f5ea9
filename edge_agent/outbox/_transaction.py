"""One transaction on the outbox's connection (autocommit mode: explicit BEGIN/COMMIT).

Private to `edge_agent.outbox`. Committed when the block ends, rolled back when it raises
(also when COMMIT itself fails, e.g. SQLITE_FULL); a block inside another becomes a
savepoint, so the outer transaction decides.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Iterator


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    if conn.in_transaction:
        savepoint = f"outbox_{secrets.token_hex(8)}"
        conn.execute(f"SAVEPOINT {savepoint}")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:  # an error may have ended the whole transaction
                conn.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
                conn.execute(f"RELEASE SAVEPOINT {savepoint}")
            raise
        conn.execute(f"RELEASE SAVEPOINT {savepoint}")
        return
    conn.execute("BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def table_names(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
