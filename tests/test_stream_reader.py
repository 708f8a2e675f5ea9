"""The stream reader on both stores: commit order, never a skipped row (a transaction
that commits late with a smaller tx), filters as bound SQL, pages and the next position."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.store import Store, open_store
from collector.stream.filter import Filter
from collector.stream.position import Position
from collector.stream.reader import Reader, ReaderError, open_reader
from tests.peers import Postgres
from tests.stream_support import ALL, Scope, event_rows, ingest


def drain(reader: Reader, after: Position, flt: Filter = Filter(),  # noqa: B008
          limit: int = 1000) -> tuple[list[str], Position]:
    ids: list[str] = []
    while True:
        page = reader.read(after, flt, limit)
        ids += [json.loads(body)["id"] for _, body in page.events]
        positions = [p for p, _ in page.events]
        assert positions == sorted(positions) and all(p > after for p in positions)
        after = page.next
        if not page.more:
            return ids, after


def test_pages_in_commit_order(store: Store, reader: Reader) -> None:
    batches = [event_rows(7) for _ in range(5)]
    for rows in batches:
        ingest(store, rows)
    ids, end = drain(reader, Position.start(reader.kind), limit=3)
    assert ids == [r.id for rows in batches for r in sorted(rows, key=lambda r: r.id)] or \
        sorted(ids) == sorted(r.id for rows in batches for r in rows)
    assert len(ids) == 35 and len(set(ids)) == 35
    assert drain(reader, end)[0] == []
    more = event_rows(4)
    ingest(store, more)
    assert sorted(drain(reader, end)[0]) == sorted(r.id for r in more)


def test_envelope_round_trips(store: Store, reader: Reader) -> None:
    rows = event_rows(3)
    ingest(store, rows)
    page = reader.read(Position.start(reader.kind), Filter())
    got = {json.loads(b)["id"]: b for _, b in page.events}
    assert got == {r.id: r.envelope_json() for r in rows}


def test_filters_and_scope(store: Store, reader: Reader) -> None:
    ingest(store, event_rows(5, gateway="gw-a"))
    ingest(store, event_rows(4, gateway="gw-b"))
    start = Position.start(reader.kind)
    assert len(drain(reader, start, Filter(gateways=("gw-b",)))[0]) == 4
    assert len(drain(reader, start, Filter(type_groups=(("smoke.*",),)))[0]) == 9
    assert drain(reader, start, Filter(type_groups=(("smoke_reading",),)))[0] == []
    assert drain(reader, start, Filter(type_groups=(("%",),)))[0] == []
    scoped = Filter().narrowed(Scope(("371312001001",), ("smoke.*",)))
    assert len(drain(reader, start, scoped)[0]) == 9
    elsewhere = Filter().narrowed(Scope(("999999",), ("*",)))
    assert drain(reader, start, elsewhere)[0] == []
    assert drain(reader, start, Filter().narrowed(Scope((), ("*",))))[0] == []
    assert drain(reader, start, Filter().narrowed(Scope(("",), ())))[0] == []
    assert len(drain(reader, start, Filter().narrowed(ALL))[0]) == 9
    past, future = datetime(2020, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    assert len(drain(reader, start, Filter(since=past))[0]) == 9
    assert drain(reader, start, Filter(since=future))[0] == []


@pytest.mark.parametrize("evil", ["' OR 1=1 --", "x'); DROP TABLE events; --", "%", "_",
                                  "\\", "gw-a' OR 'a'='a"])
def test_injection_is_a_value(store: Store, reader: Reader, evil: str) -> None:
    ingest(store, event_rows(3))
    start = Position.start(reader.kind)
    for flt in (Filter(gateways=(evil,)), Filter(districts=(evil,)),
                Filter(area_groups=((evil,),)), Filter(type_groups=((evil,),))):
        assert drain(reader, start, flt)[0] == []
    assert len(drain(reader, start)[0]) == 3


# ---------------------------------------------------------------- PostgreSQL: late commits


def test_postgres_late_commit_is_not_skipped(postgres: Postgres) -> None:
    from collector.store.pg_migrate import migrate_url

    url = postgres.new_database()
    migrate_url(url)
    store = open_store(url)
    reader = open_reader(url)
    try:
        early = event_rows(3)
        late = event_rows(2)
        # The late rows: copy of what the store would write, by the store itself in a thread
        # that holds its transaction open after taking an xid smaller than the next ones.
        started, release = threading.Event(), threading.Event()
        done = threading.Event()

        def slow_ingest() -> None:
            with psycopg.connect(url) as conn:
                xid = conn.execute("SELECT pg_current_xact_id()").fetchone()
                assert xid is not None
                started.set()
                release.wait(30)
                conn.execute(
                    "INSERT INTO places (district, street, community, gateway) "
                    "SELECT district, street, community, gateway FROM places LIMIT 1 "
                    "ON CONFLICT DO NOTHING")
                conn.execute(
                    "INSERT INTO event_rows (id, time, received_at, epoch, seq, place, type, "
                    "device, severity, data) SELECT gen_random_uuid(), now(), now(), 1, g, "
                    "(SELECT min(id) FROM places), 'smoke.reading', 'late', 'info', '{}' "
                    "FROM generate_series(1, 2) g")
                conn.commit()
            done.set()

        ingest(store, early[:1])  # a place exists
        thread = threading.Thread(target=slow_ingest)
        thread.start()
        assert started.wait(10)
        ingest(store, early[1:])  # larger tx, committed first
        ingest(store, late)
        seen: list[str] = []
        after = Position.start("postgresql")
        for _ in range(3):
            ids, after = drain(reader, after)
            seen += ids
        # the open transaction holds the horizon: nothing committed after it is read yet
        assert seen == [early[0].id]
        release.set()
        thread.join(10)
        deadline = time.monotonic() + 5
        while len(seen) < 7 and time.monotonic() < deadline:
            ids, after = drain(reader, after)
            seen += ids
        assert len(seen) == 7 and len(set(seen)) == 7
        known = {r.id for r in early + late}
        # in commit-safe order: the held transaction's rows (smaller tx) come right after
        # the first row, before the ones that committed while it was open
        assert not set(seen[1:3]) & known and set(seen[3:]) <= known
    finally:
        reader.close()
        store.close()


_INSERT_ROWS = ("INSERT INTO event_rows (id, time, received_at, epoch, seq, place, type, device, "
                "severity, data) SELECT gen_random_uuid(), now(), now(), 1, g, "
                "(SELECT min(id) FROM places), 'smoke.reading', 'prop', 'info', '{}' "
                "FROM generate_series(1, %s) g RETURNING id")


@pytest.fixture(scope="module")
def pg_url(postgres: Postgres) -> str:
    from collector.store.pg_migrate import migrate_url

    url = postgres.new_database()
    migrate_url(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO places (district, street, community, gateway) "
                     "VALUES ('371312', '371312001', '371312001001', 'gw-p')")
    return url


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 3), min_size=2, max_size=5), data=st.data())
def test_postgres_interleaved_commits_never_skip(pg_url: str, sizes: list[int],
                                                 data: st.DataObject) -> None:
    """Transactions take their xids in one order, insert in another and commit in a
    third; a reader polling after every step sees each row exactly once."""
    reader = open_reader(pg_url)
    conns = [psycopg.connect(pg_url) for _ in sizes]
    try:
        _, after = drain(reader, Position.start("postgresql"))
        for conn in conns:
            conn.execute("SELECT pg_current_xact_id()")  # xids in list order
        seen: list[str] = []
        for i in data.draw(st.permutations(range(len(sizes))), label="insert order"):
            conns[i].execute(_INSERT_ROWS.encode(), (sizes[i],))
        for i in data.draw(st.permutations(range(len(sizes))), label="commit order"):
            ids, after = drain(reader, after)
            seen += ids
            conns[i].commit()
        ids, after = drain(reader, after)
        seen += ids
        assert len(seen) == len(set(seen)) == sum(sizes)
    finally:
        for conn in conns:
            conn.close()
        reader.close()


def test_postgres_small_windows_read_everything(pg_url: str) -> None:
    """Windows of one transaction id (and widening ones over gaps) lose nothing."""
    from collector.stream.reader import PostgresReader

    store = open_store(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:  # xids used by no event row
        for _ in range(30):
            conn.execute("SELECT pg_current_xact_id()")
    batches = [event_rows(3) for _ in range(6)]
    for rows in batches:
        ingest(store, rows)
    store.close()
    reader = PostgresReader(pg_url, window=1)
    wide = open_reader(pg_url)
    try:
        ids, _ = drain(reader, Position.start("postgresql"), limit=2)
        assert ids == drain(wide, Position.start("postgresql"))[0]
        assert {r.id for rows in batches for r in rows} <= set(ids)
    finally:
        reader.close()
        wide.close()


def test_closing_a_sqlite_reader_while_another_thread_reads_is_safe(tmp_path: Path) -> None:
    """close() waits for a read in progress (sqlite3 crashes the process otherwise); a read
    after it is a ReaderError."""
    url = f"sqlite:///{tmp_path / 'district.db'}"
    store = open_store(url)
    for start in range(1, 3001, 500):
        ingest(store, event_rows(500, start=start, epoch="00000000000000aa"))
    store.close()
    for _ in range(20):
        reader = open_reader(url)
        errors: list[BaseException] = []

        def read_on(r: Reader = reader, errors: list[BaseException] = errors) -> None:
            try:
                while True:
                    r.read(Position.start("sqlite"), Filter())
            except ReaderError as exc:
                errors.append(exc)

        thread = threading.Thread(target=read_on)
        thread.start()
        time.sleep(0.01)
        reader.close()
        thread.join(10)
        assert not thread.is_alive() and len(errors) == 1
