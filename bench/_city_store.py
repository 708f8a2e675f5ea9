"""What the city bench reads back from the district store: per stream counts and latencies.

`sqlite:///…` is read with sqlite3; `postgresql://…` with psycopg when it is installed
(the PostgreSQL store's dependency). Only the public `events` table is read.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from collector.store.url import parse_store_url
from edge_agent.contract.envelope import parse_time


def query_events(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` (a read of the public `events` table) from the store at `url`."""
    parsed = parse_store_url(url)
    if parsed.kind == "sqlite":
        conn = sqlite3.connect(f"file:{parsed.path}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    psycopg: Any = importlib.import_module("psycopg")
    with psycopg.connect(url) as conn:
        rows: list[tuple[Any, ...]] = conn.execute(sql).fetchall()
        return rows


def stream_seqs(url: str) -> dict[tuple[str, str], list[int]]:
    """(gateway, epoch) -> every stored seq (a seq stored twice is listed twice)."""
    out: dict[tuple[str, str], list[int]] = {}
    for gateway, epoch, seq in query_events(url, "SELECT gateway, epoch, seq FROM events"):
        out.setdefault((gateway, epoch), []).append(int(seq))
    return out


def stored_seconds(value: Any) -> float:
    """A stored time (ISO text in SQLite, timestamptz in PostgreSQL) as epoch seconds."""
    if isinstance(value, datetime):
        return value.timestamp()
    return parse_time(str(value)).timestamp()


def store_latencies(url: str, gateways: Iterable[str], since: float, until: float) -> list[float]:
    """`received_at − time` (s) of the events of `gateways` minted in [since, until)."""
    wanted = set(gateways)
    out = []
    for gateway, t, received in query_events(url, "SELECT gateway, time, received_at FROM events"):
        if gateway not in wanted:
            continue
        minted = stored_seconds(t)
        if since <= minted < until:
            out.append(stored_seconds(received) - minted)
    return out
