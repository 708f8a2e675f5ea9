"""What the city bench reads back from the district store: per stream counts and latencies.

`sqlite:///…` is read with sqlite3; `postgresql://…` with psycopg when it is installed
(the PostgreSQL store's dependency). Only the public `events` table is read.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from collector.store.url import parse_store_url
from edge_agent.contract.envelope import parse_time


@dataclass(frozen=True, slots=True)
class StreamCount:
    rows: int
    distinct_seqs: int
    max_seq: int


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
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


def stream_counts(url: str) -> dict[tuple[str, str], StreamCount]:
    """(gateway, epoch) -> rows, distinct seqs, highest seq, as the store holds them."""
    rows = _query(url, "SELECT gateway, epoch, COUNT(*), COUNT(DISTINCT seq), MAX(seq) "
                       "FROM events GROUP BY gateway, epoch")
    return {(g, e): StreamCount(int(n), int(d), int(m)) for g, e, n, d, m in rows}


def _seconds(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return parse_time(str(value)).timestamp()


def store_latencies(url: str, gateways: Iterable[str], since: float, until: float) -> list[float]:
    """`received_at − time` (s) of the events of `gateways` minted in [since, until)."""
    wanted = set(gateways)
    out = []
    for gateway, t, received in _query(url, "SELECT gateway, time, received_at FROM events"):
        if gateway not in wanted:
            continue
        minted = _seconds(t)
        if since <= minted < until:
            out.append(_seconds(received) - minted)
    return out
