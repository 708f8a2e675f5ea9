"""The store contract on both backends (SQLite, PostgreSQL started by the tests):
idempotent insert, watermarks, gaps, quarantine. PostgreSQL-only behaviour:
tests/test_collector_postgres.py."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from collector.model import EventRow, Rejected
from collector.store import Gap, Origin, Store, StoreError, open_store
from collector.store.intervals import split_missing
from collector.store.schema import RAW_CAP
from collector.validate import check_payload
from edge_agent.contract.envelope import Event
from tests.test_collector_support import (
    alarm,
    batch,
    data_loss,
    new_epoch,
    reading,
    topics,
)

ORIGIN = Origin("cd/v1/371312/371312001001/gw-a/events", "gw-a")


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one statement run on the store behind `url` (either backend)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        cur = pg.execute(sql.encode())
        return cur.fetchall() if cur.description else []


def rows(events: list[Event], gateway: str = "gw-a") -> list[EventRow]:
    verdict = check_payload(batch(events), topics(gateway))
    assert not verdict.rejected
    return verdict.accepted


def test_events_table_has_the_design_columns(store: Store, store_url: str) -> None:
    """On PostgreSQL `events` is a view over the compact `event_rows` (migration 0002)
    with the columns and types of version 1."""
    if store_url.startswith("postgresql"):
        typed = query(store_url, "SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'events' ORDER BY ordinal_position")
        cols = [c for c, _ in typed]
        assert {c: t for c, t in typed if t != "text"} == {
            "time": "timestamp with time zone", "received_at": "timestamp with time zone",
            "seq": "bigint", "data": "jsonb"}
        indexes = {i for (i,) in query(store_url, "SELECT indexname FROM pg_indexes "
                                       "WHERE tablename = 'event_rows'")}
        assert indexes == {"event_rows_pkey", "idx_event_rows_place_epoch_seq",
                           "idx_event_rows_tx", "idx_event_rows_time"}
    else:
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        cols = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(events)")}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {"idx_events_gateway_epoch_seq", "idx_events_type_time",
                "idx_events_received_at"} <= indexes
    assert cols == ["id", "type", "source", "district", "street", "community", "gateway",
                    "device", "time", "received_at", "epoch", "seq", "severity", "data"]


def test_insert_is_idempotent_and_counts_duplicates(store: Store, store_url: str) -> None:
    epoch = new_epoch()
    first = rows([reading("gw-a", epoch, s) for s in range(1, 4)])
    assert store.ingest(ORIGIN, first, []).inserted == 3
    again = first[1:] + rows([alarm("gw-a", epoch, 4)])
    result = store.ingest(ORIGIN, again, [])
    assert (result.inserted, result.duplicates, result.quarantined) == (1, 2, 0)
    assert query(store_url, "SELECT COUNT(*) FROM events") == [(4,)]
    [(device, data, seq)] = query(
        store_url, "SELECT device, data, seq FROM events WHERE type = 'smoke.alarm'")
    assert (device, seq) == ("smoke-02", 4)
    assert (data if isinstance(data, dict) else json.loads(data))["state"] == "raised"
    [stream] = store.stats().streams
    assert (stream.high_seq, stream.received, stream.contiguous_through) == (4, 4, 4)


def test_watermark_with_out_of_order_seqs(store: Store) -> None:
    epoch = new_epoch()
    events = {s: reading("gw-a", epoch, s) for s in range(1, 11)}

    def feed(*seqs: int) -> tuple[int, int, int]:
        store.ingest(ORIGIN, rows([events[s] for s in seqs]), [])
        [st] = store.stats().streams
        return st.high_seq, st.received, st.contiguous_through

    assert feed(3, 1) == (3, 2, 1)
    assert feed(7, 6) == (7, 4, 1)
    assert feed(2) == (7, 5, 3)
    assert feed(2, 3) == (7, 5, 3)  # duplicates move nothing
    assert feed(5, 4) == (7, 7, 7)
    assert feed(10) == (10, 8, 7)
    assert store.gaps() == [Gap("gw-a", epoch, 8, 9, explained=False)]


def test_gaps_are_split_into_explained_and_unexplained(store: Store) -> None:
    epoch = new_epoch()
    kept = [s for s in range(1, 31) if not (5 <= s <= 12 or 20 <= s <= 21)]
    events = [reading("gw-a", epoch, s) for s in kept]
    # The outbox evicted 5..10 on purpose and says so; 11..12 and 20..21 were lost.
    events.append(data_loss("gw-a", epoch, 31, [[5, 10]]))
    store.ingest(ORIGIN, rows(events), [])
    gaps = store.gaps()
    assert gaps == [
        Gap("gw-a", epoch, 5, 10, explained=True, reason="outbox_full"),
        Gap("gw-a", epoch, 11, 12, explained=False),
        Gap("gw-a", epoch, 20, 21, explained=False),
    ]
    assert store.gaps(gateway="gw-other") == []
    other = new_epoch()
    store.ingest(Origin("t", "gw-b"), rows([reading("gw-b", other, 3)], "gw-b"), [])
    assert store.gaps(gateway="gw-b") == [Gap("gw-b", other, 1, 2, explained=False)]
    assert len(store.gaps()) == 4


def test_a_resent_data_loss_report_is_recorded_once(store: Store) -> None:
    epoch = new_epoch()
    report = rows([reading("gw-a", epoch, 1), data_loss("gw-a", epoch, 5, [[2, 4]])])
    store.ingest(ORIGIN, report, [])
    store.ingest(ORIGIN, report, [])
    assert store.gaps() == [Gap("gw-a", epoch, 2, 4, explained=True, reason="outbox_full")]


def test_quarantine_keeps_raw_bytes_and_real_size(store: Store) -> None:
    big = bytes(range(256)) * (RAW_CAP // 256 + 10)
    rejected = [Rejected("payload is not JSON: boom", big),
                Rejected("event 0 (id X): bad", b'{"id":"X"}', "X", new_epoch(), 7)]
    epoch = new_epoch()
    result = store.ingest(ORIGIN, rows([reading("gw-a", epoch, 1)]), rejected)
    assert (result.inserted, result.quarantined) == (1, 2)
    newest, oldest = store.quarantined(limit=10)
    assert oldest.raw == big[:RAW_CAP] and oldest.raw_size == len(big)
    assert (oldest.topic, oldest.gateway_from_topic, oldest.event_id) == (
        ORIGIN.topic, "gw-a", None)
    assert (newest.raw, newest.event_id) == (b'{"id":"X"}', "X")
    assert newest.reason == "event 0 (id X): bad"
    assert store.quarantine(Origin("cd/v1/bad", None), [Rejected("topic", b"x")]) == 1
    assert store.quarantined(limit=1)[0].gateway_from_topic is None
    assert store.stats().quarantined == 3


def refuse_quarantine(store_url: str) -> type[Exception]:
    """A trigger that fails every quarantine insert; returns the error the store raises."""
    if store_url.startswith("postgresql"):
        import psycopg

        query(store_url, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$BEGIN RAISE EXCEPTION 'no quarantine today'; END$$")
        query(store_url, "CREATE TRIGGER refuse BEFORE INSERT ON quarantine "
                         "FOR EACH ROW EXECUTE FUNCTION refuse()")
        error: type[Exception] = psycopg.Error
    else:
        query(store_url, "CREATE TRIGGER refuse BEFORE INSERT ON quarantine "
                         "BEGIN SELECT RAISE(ABORT, 'no quarantine today'); END")
        error = sqlite3.Error
    return error


def test_a_failed_transaction_leaves_nothing(store: Store, store_url: str) -> None:
    epoch = new_epoch()
    good = rows([reading("gw-a", epoch, 1)])
    error = refuse_quarantine(store_url)
    with pytest.raises(error):  # and the one-by-one retry fails the same way
        store.ingest(ORIGIN, good, [Rejected("x", b"x")])
    stats = store.stats()
    assert (stats.events, stats.quarantined, stats.streams) == (0, 0, [])


def test_two_stores_share_one_database(store_url: str) -> None:
    url = store_url
    a, b = open_store(url), open_store(url)
    epoch = new_epoch()
    evs = rows([reading("gw-a", epoch, s) for s in range(1, 5)])
    assert a.ingest(ORIGIN, evs[:3], []).inserted == 3
    result = b.ingest(ORIGIN, evs[1:], [])
    assert (result.inserted, result.duplicates) == (1, 2)
    [st] = a.stats().streams
    assert (st.received, st.contiguous_through) == (4, 4)
    a.close()
    b.close()


def test_store_urls(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="expected sqlite:///"):
        open_store("mysql://x")
    with pytest.raises(StoreError, match="no store at"):
        open_store(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize(("missing", "explained", "pieces"), [
    ([(1, 10)], [], [(1, 10, False, None)]),
    ([(1, 10)], [(1, 10, "r")], [(1, 10, True, "r")]),
    ([(1, 10)], [(3, 4, "r"), (4, 6, "s")], [(1, 2, False, None), (3, 4, True, "r"),
                                              (5, 6, True, "s"), (7, 10, False, None)]),
    ([(5, 6), (9, 9)], [(1, 20, "r")], [(5, 6, True, "r"), (9, 9, True, "r")]),
    ([(5, 6)], [(1, 2, "r"), (8, 9, "r")], [(5, 6, False, None)]),
])
def test_split_missing(missing: list[tuple[int, int]], explained: list[tuple[int, int, str]],
                       pieces: list[tuple[int, int, bool, str | None]]) -> None:
    assert split_missing(missing, explained) == pieces
