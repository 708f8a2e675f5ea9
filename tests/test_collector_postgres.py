"""What only the PostgreSQL store does: migrations, daily partitions and retention, ids
unique across partitions, watermarks under two collectors committing one stream at once.
(The common contract runs on both backends in tests/test_collector_store.py.)"""

from __future__ import annotations

import dataclasses
import json
import random
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from click.testing import CliRunner
from psycopg_pool import PoolTimeout

from collector.cli import main
from collector.model import EventRow
from collector.store import Origin, StoreError, migrate_store, open_store
from collector.store.pg_keys import day_bound, uuid_ulid
from collector.store.pg_migrate import migrate, migrations
from collector.store.pg_partitions import PartitionKeeper, existing, partition_name
from collector.store.postgres import PostgresStore
from edge_agent.contract.envelope import format_time
from tests.peers import Postgres, free_port
from tests.test_collector_cli import write_config
from tests.test_collector_store import query, rows
from tests.test_collector_support import alarm, data_loss, new_epoch, reading

ORIGIN = Origin("cd/v1/371312/371312001001/gw-a/events", "gw-a")


@pytest.fixture
def fresh(postgres: Postgres) -> str:
    """An empty database: not migrated."""
    return postgres.new_database()


def at(row: EventRow, when: datetime) -> EventRow:
    return dataclasses.replace(row, time=format_time(when.timestamp()))


def minted(row: EventRow, when: datetime) -> EventRow:
    """The row with an id minted at `when` (its partition's day) and that time."""
    ms = int(when.timestamp() * 1000)
    ulid = uuid_ulid(UUID(int=(ms << 80) | random.getrandbits(80)))
    return dataclasses.replace(at(row, when), id=ulid)


def test_migrate_is_idempotent_and_recorded(fresh: str) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["migrate", "--store", fresh])
    assert first.exit_code == 0, first.output
    assert first.output.splitlines() == [*(f"applied {m.name}" for m in migrations()),
                                         "schema up to date"]
    again = runner.invoke(main, ["migrate", "--store", fresh])
    assert (again.exit_code, again.output) == (0, "schema up to date\n")
    assert query(fresh, "SELECT version, name FROM schema_version ORDER BY 1") == [
        (m.version, m.name) for m in migrations()]


def test_an_unmigrated_store_is_refused_with_a_hint(fresh: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"schema version 0.*edge-collector migrate --store"):
        open_store(fresh)
    stats = CliRunner().invoke(main, ["stats", "--store", fresh])
    assert stats.exit_code == 2 and "edge-collector migrate" in stats.output
    assert "Traceback" not in stats.output
    config = write_config(tmp_path, free_port(), store=fresh)
    run = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert run.exit_code == 2, run.output
    assert "run `edge-collector migrate --store URL` first" in run.output
    assert "Traceback" not in run.output


def test_an_unreachable_server_is_an_operator_error(postgres: Postgres) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    result = CliRunner().invoke(main, ["migrate", "--store", url])
    assert result.exit_code == 2 and "cannot migrate the PostgreSQL store" in result.output
    with pytest.raises(StoreError, match="hint: is the server up"):
        open_store(url)


def test_daily_partitions_are_created_ahead_and_events_land_in_their_id_day(fresh: str) -> None:
    """The partition is the day the id was minted (the ULID's time), whatever `time` says."""
    migrate_store(fresh)
    store = open_store(fresh)
    try:
        today = datetime.now(UTC).date()
        names = set(existing_names(fresh))
        assert {partition_name(today + timedelta(days=d)) for d in range(-2, 4)} <= names
        epoch = new_epoch()
        now, old = datetime.now(UTC), datetime(2001, 1, 1, tzinfo=UTC)
        yesterday = now - timedelta(days=1)
        evs = rows([reading("gw-a", epoch, s) for s in (1, 2, 3)])
        sent = [minted(evs[0], now), minted(evs[1], old), minted(at(evs[2], old), yesterday)]
        assert store.ingest(ORIGIN, sent, []).inserted == 3
        placed = dict(query(fresh, "SELECT seq, tableoid::regclass::text FROM event_rows"))
        assert placed == {1: partition_name(now.date()), 2: "event_rows_default",
                          3: partition_name(yesterday.date())}
    finally:
        store.close()


def test_collectors_starting_together_create_the_partitions_once(fresh: str) -> None:
    """Several collectors open a new store at the same moment: each runs the partition
    round; a partition another one created meanwhile is not an error."""
    migrate_store(fresh)
    n = 6
    go = threading.Barrier(n)
    errors: list[BaseException] = []

    def keep() -> None:
        try:
            go.wait()
            PartitionKeeper(fresh, retention_days=None).run_once()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=keep) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    today = datetime.now(UTC).date()
    assert {partition_name(today + timedelta(days=d)) for d in range(-2, 4)} <= set(
        existing_names(fresh))


def test_an_id_resent_with_another_time_is_a_conflict_not_a_second_row(fresh: str) -> None:
    """The id alone is the key (its partition is its mint day, not `time`)."""
    migrate_store(fresh)
    store = open_store(fresh)
    try:
        [ev] = rows([reading("gw-a", new_epoch(), 1)])
        now = datetime.now(UTC)
        assert store.ingest(ORIGIN, [at(ev, now)], []).inserted == 1
        same = store.ingest(ORIGIN, [at(ev, now)], [])
        assert (same.inserted, same.duplicates, same.conflicts) == (0, 1, 0)
        moved = store.ingest(ORIGIN, [at(ev, now - timedelta(days=1))], [])
        assert (moved.inserted, moved.conflicts, moved.quarantined) == (0, 1, 1)
        assert "conflict" in store.quarantined(1)[0].reason
        assert query(fresh, "SELECT COUNT(*) FROM events") == [(1,)]
    finally:
        store.close()


def test_retention_drops_old_partitions_while_ingest_goes_on(fresh: str) -> None:
    migrate_store(fresh)
    ten_days_ago = time.time() - 10 * 86400
    PartitionKeeper(fresh, retention_days=None, clock=lambda: ten_days_ago).run_once()
    old_day = datetime.fromtimestamp(ten_days_ago, UTC)
    store = open_store(fresh)
    try:
        epoch = new_epoch()
        old = [minted(r, old_day)
               for r in rows([reading("gw-a", epoch, s) for s in range(1, 51)])]
        assert store.ingest(ORIGIN, old, []).inserted == 50
        stop = threading.Event()
        inserted: list[int] = []
        errors: list[BaseException] = []

        def ingest_on() -> None:
            live = new_epoch()
            seq = 0
            try:
                while not stop.is_set():
                    batch = rows([reading("gw-b", live, seq + i) for i in range(1, 21)], "gw-b")
                    seq += 20
                    inserted.append(store.ingest(Origin("t", "gw-b"), batch, []).inserted)
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        writer = threading.Thread(target=ingest_on)
        writer.start()
        while sum(inserted) < 200 and writer.is_alive():
            time.sleep(0.01)
        _, dropped = PartitionKeeper(fresh, retention_days=3).run_once()
        after = sum(inserted)
        while sum(inserted) < after + 200 and writer.is_alive():
            time.sleep(0.01)
        stop.set()
        writer.join(30)
        assert not errors, errors
        assert partition_name(old_day.date()) in dropped
        assert partition_name(old_day.date()) not in existing_names(fresh)
        assert query(fresh, "SELECT COUNT(*) FROM events WHERE gateway = 'gw-a'") == [(0,)]
        assert query(fresh, "SELECT COUNT(*) FROM event_rows WHERE tableoid::regclass::text "
                            "= 'event_rows_default'") == [(0,)]
        assert query(fresh, "SELECT COUNT(*) FROM events") == [(sum(inserted),)]
        assert sum(inserted) >= after + 200  # ingest went on after the drop
    finally:
        store.close()


def test_two_collectors_committing_one_stream_interleaved_keep_the_watermark(
        postgres: Postgres) -> None:
    """Two stores (two pools, real connections) commit overlapping batches of one stream in
    shuffled orders at the same time: every event once, the watermark exact."""
    url = postgres.new_database()
    migrate_store(url)
    a, b = open_store(url), open_store(url)
    try:
        epoch = new_epoch()
        n, size = 2000, 50
        evs = rows([reading("gw-a", epoch, s) for s in range(1, n + 1)])
        batches = [evs[i:i + size] for i in range(0, n, size)]
        # each collector gets every batch (as after a redelivery), in its own order
        orders = [random.Random(seed).sample(batches, len(batches)) for seed in (1, 2)]
        totals = [0, 0]
        errors: list[BaseException] = []
        go = threading.Barrier(2)

        def feed(i: int) -> None:
            store = (a, b)[i]
            try:
                go.wait()
                for part in orders[i]:
                    totals[i] += store.ingest(ORIGIN, part, []).inserted
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        threads = [threading.Thread(target=feed, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert sum(totals) == n and min(totals) > 0  # both really committed some
        [st] = a.stats().streams
        assert (st.high_seq, st.received, st.contiguous_through) == (n, n, n)
        assert a.gaps() == []
        assert query(url, "SELECT COUNT(*), COUNT(DISTINCT seq) FROM events") == [(n, n)]
    finally:
        a.close()
        b.close()


def existing_names(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return list(existing(conn))


def test_an_event_postgresql_cannot_hold_is_quarantined_the_rest_stored(fresh: str) -> None:
    """jsonb refuses \\u0000: that event goes to quarantine, its batch mates are stored."""
    migrate_store(fresh)
    store = open_store(fresh)
    try:
        epoch = new_epoch()
        evs = rows([reading("gw-a", epoch, s) for s in (1, 2, 3)])
        evs[1] = dataclasses.replace(evs[1], data='{"note":"a\\u0000b"}')
        result = store.ingest(ORIGIN, evs, [])
        assert (result.inserted, result.quarantined, len(result.diverted)) == (2, 1, 1)
        assert "the store refused it" in store.quarantined(1)[0].reason
        [st] = store.stats().streams
        assert (st.received, st.high_seq, st.contiguous_through) == (2, 3, 1)
    finally:
        store.close()


def test_a_server_restart_fails_payloads_while_it_is_away_then_ingest_resumes() -> None:
    """Nothing is reported stored while the server is down; the pool reconnects after."""
    server = Postgres(Path(tempfile.mkdtemp(prefix="cd-pg-")))
    server.start()
    try:
        url = server.new_database()
        migrate_store(url)
        store = PostgresStore(url, wait_connection_s=1.0)
        store.open()
        epoch = new_epoch()
        evs = rows([reading("gw-a", epoch, s) for s in range(1, 7)])
        assert store.ingest(ORIGIN, evs[:2], []).inserted == 2
        server.stop()
        with pytest.raises((psycopg.Error, PoolTimeout)):
            store.ingest(ORIGIN, evs[2:4], [])
        server.start()
        assert store.ingest(ORIGIN, evs[2:], []).inserted == 4
        [st] = store.stats().streams
        assert (st.received, st.contiguous_through) == (6, 6)
        store.close()
    finally:
        server.stop()


def test_a_version_1_store_with_data_is_migrated_and_reads_the_same(fresh: str) -> None:
    """0002 moves the rows of a version-1 store into `event_rows`: the `events` relation
    reads the same, watermarks and gaps are unchanged, old ids stay duplicates."""
    with psycopg.connect(fresh) as conn:
        assert migrate(conn, upto=1) == ["0001_initial.sql"]
    epoch, now = new_epoch(), datetime.now(UTC)
    today = partition_name(now.date()).removeprefix("event_rows_p")
    evs = rows([reading("gw-a", epoch, 1), alarm("gw-a", epoch, 2), reading("gw-a", epoch, 4),
                reading("gw-a", epoch, 5), data_loss("gw-a", epoch, 8, [[6, 7]])])
    evs[3] = minted(evs[3], datetime(2001, 1, 1, tzinfo=UTC))  # v1: in events_default
    loss = json.loads(evs[4].data)
    stamp = format_time(now.timestamp())
    with psycopg.connect(fresh) as conn:
        conn.execute(f"CREATE TABLE events_p{today} PARTITION OF events FOR VALUES FROM "
                     f"('{now.date()}T00:00:00Z') TO ('{now.date() + timedelta(days=1)}"
                     "T00:00:00Z')".encode())
        for ev in evs:  # as the version-1 store wrote them
            conn.execute(b"INSERT INTO events VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                         b"%s, %s, %s, %s)", ev.values(stamp))
            conn.execute(b"INSERT INTO event_ids VALUES (%s, %s)", (ev.id, ev.time))
        conn.execute(b"INSERT INTO streams VALUES ('gw-a', %s, %s, %s, 8, 5, 2)",
                     (epoch, stamp, stamp))
        conn.execute(b"INSERT INTO explained_gaps VALUES ('gw-a', %s, 6, 7, %s, %s)",
                     (epoch, loss["reason"], evs[4].id))
    before = query(fresh, "SELECT * FROM events ORDER BY id")
    assert CliRunner().invoke(main, ["migrate", "--store", fresh]).output.splitlines() == [
        *(f"applied {m.name}" for m in migrations() if m.version >= 2), "schema up to date"]
    assert query(fresh, "SELECT * FROM events ORDER BY id") == before
    assert query(fresh, "SELECT to_regclass('event_ids') IS NULL") == [(True,)]
    placed = dict(query(fresh, "SELECT seq, tableoid::regclass::text FROM event_rows"))
    assert placed == {1: f"event_rows_p{today}", 2: f"event_rows_p{today}",
                      4: f"event_rows_p{today}", 5: "event_rows_default",
                      8: f"event_rows_p{today}"}
    lo, hi = day_bound(now.date()), day_bound(now.date() + timedelta(days=1))
    assert query(fresh, "SELECT pg_get_expr(relpartbound, oid) FROM pg_class "  # the keeper's
                        f"WHERE relname = 'event_rows_p{today}'") == [
        (f"FOR VALUES FROM ('{lo}') TO ('{hi}')",)]
    store = open_store(fresh)
    try:
        [st] = store.stats().streams
        assert (st.high_seq, st.received, st.contiguous_through) == (8, 5, 2)
        assert store.stats().events == 5
        assert [(g.from_seq, g.to_seq, g.explained) for g in store.gaps()] == [
            (3, 3, False), (6, 7, True)]
        again = store.ingest(ORIGIN, [evs[0], evs[3]], [])
        assert (again.inserted, again.duplicates, again.conflicts) == (0, 2, 0)
        changed = dataclasses.replace(evs[1], data='{"state":"cleared","alarm_id":"a-1"}')
        assert store.ingest(ORIGIN, [changed], []).conflicts == 1
        [three] = rows([reading("gw-a", epoch, 3)])
        assert store.ingest(ORIGIN, [three], []).inserted == 1
        [st] = store.stats().streams
        assert (st.high_seq, st.received, st.contiguous_through) == (8, 6, 5)
        assert [(g.from_seq, g.to_seq, g.explained) for g in store.gaps()] == [(6, 7, True)]
    finally:
        store.close()


def test_one_id_committed_by_two_collectors_under_different_streams_is_stored_once(
        postgres: Postgres) -> None:
    """No stream lock orders these (the id is claimed by two gateways): both look the id up,
    both COPY; the second waits for the first's commit, fails on the key, runs again and
    finds a conflict."""
    url = postgres.new_database()
    migrate_store(url)
    a, b = open_store(url), open_store(url)
    try:
        rounds, size = 8, 100
        results: list[list[tuple[int, int]]] = [[], []]
        errors: list[BaseException] = []
        go = threading.Barrier(2)
        batches = []
        for _ in range(rounds):
            evs = rows([reading("gw-a", new_epoch(), s) for s in range(1, size + 1)])
            other = [dataclasses.replace(r, gateway="gw-b", source=r.source.replace(
                "/gw-a/", "/gw-b/")) for r in evs]
            batches.append((evs, other))

        def feed(i: int) -> None:
            store, origin = (a, ORIGIN) if i == 0 else (b, Origin("t", "gw-b"))
            try:
                for pair in batches:
                    go.wait(30)
                    got = store.ingest(origin, pair[i], [])
                    results[i].append((got.inserted, got.conflicts))
            except BaseException as exc:  # reported by the test
                errors.append(exc)
                go.abort()

        threads = [threading.Thread(target=feed, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for (ins_a, con_a), (ins_b, con_b) in zip(*results, strict=True):
            assert (ins_a + ins_b, con_a + con_b) == (size, size)
        assert query(url, "SELECT COUNT(*), COUNT(DISTINCT id) FROM event_rows") == [
            (rounds * size, rounds * size)]
    finally:
        a.close()
        b.close()
