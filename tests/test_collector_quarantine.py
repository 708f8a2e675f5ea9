"""Quarantine bounds: what a gateway sending junk can make the district store keep.

Against a real store of each backend, SQLite and PostgreSQL (rate, caps, retention, the
dropped counter) and, for the flood, a real collector process behind Mosquitto with the shipped ACL.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.model import Rejected
from collector.quarantine import QuarantineLimits, RateGate, condense
from collector.store import Origin
from collector.store.postgres import PostgresStore
from collector.store.sqlite import EXPIRE_EVERY_S, SqliteStore
from edge_agent.contract.wire import Ack
from tests.harness import query
from tests.test_collector_hostile import District, district
from tests.test_collector_mqtt import acks_until, district_mosquitto
from tests.test_collector_registry import start_collector
from tests.test_collector_support import as_dict, new_epoch, reading, topics

__all__ = ["district", "district_mosquitto"]  # fixtures, imported for pytest

GW_A = Origin(topics("gw-a").events, "gw-a")
GW_B = Origin(topics("gw-b").events, "gw-b")
DAY = 86400.0


class Clock:
    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ackable(n: int, epoch: str, size: int = 10, first: int = 1) -> list[Rejected]:
    return [Rejected(f"event {i}: bad", b"x" * size, None, epoch, first + i) for i in range(n)]


def make_store(where: Path | str, clock: Clock, **limits: float) -> SqliteStore | PostgresStore:
    """A store at a directory (SQLite, district.db in it) or a store URL (either backend)."""
    bounds = QuarantineLimits(**limits)  # type: ignore[arg-type]
    store: SqliteStore | PostgresStore
    if isinstance(where, str) and where.startswith("postgresql"):
        store = PostgresStore(where, clock=clock, quarantine=bounds)
    else:
        path = (Path(where.removeprefix("sqlite:///")) if isinstance(where, str)
                else where / "district.db")
        store = SqliteStore(path, clock=clock, quarantine=bounds)
    store.open()
    return store


def dropped(store: SqliteStore | PostgresStore) -> dict[tuple[str, str], tuple[int, int]]:
    return {(d.gateway, d.cause): (d.rows, d.bytes) for d in store.stats().dropped}


def test_loose_rejections_of_one_payload_are_one_entry() -> None:
    epoch = new_epoch()
    loose = [Rejected(f"event {i}: is a JSON number, expected an object", b"0")
             for i in range(5000)]
    [*kept, folded] = condense([*ackable(2, epoch), *loose])
    assert [k.seq for k in kept] == [1, 2]
    assert folded.reason.startswith("5000 events of one payload rejected; the first: event 0")
    assert folded.raw == b"[" + b",".join([b"0"] * 5000) + b"]"
    assert condense(loose[:1]) == loose[:1]


def test_rate_per_gateway_refills_over_time() -> None:
    gate = RateGate(per_minute=60)
    assert gate.take("gw-a", 100, now=0.0) == 60
    assert gate.take("gw-b", 10, now=0.0) == 10  # one gateway's flood is not another's
    assert gate.take("gw-a", 100, now=0.5) == 0
    assert gate.take("gw-a", 100, now=10.5) == 10
    assert gate.take("gw-a", 100, now=1000.0) == 60  # never more than the burst


def test_caps_per_gateway_and_in_total_are_counted(store_url: str) -> None:
    clock = Clock()
    store = make_store(store_url, clock, max_rows_per_gateway=3, max_rows=5,
                       rows_per_minute_per_gateway=1000)
    epoch = new_epoch()
    result = store.ingest(GW_A, [], ackable(5, epoch))
    assert (result.quarantined, result.dropped) == (3, 2)
    result = store.ingest(GW_B, [], ackable(4, epoch))
    assert (result.quarantined, result.dropped) == (2, 2)
    assert store.stats().quarantined == 5
    assert dropped(store) == {("gw-a", "gateway_cap"): (2, 20), ("gw-b", "total_cap"): (2, 20)}
    store.close()


def test_byte_caps_count_the_stored_bytes(store_url: str) -> None:
    store = make_store(store_url, Clock(), max_bytes_per_gateway=2500, max_bytes=3500,
                       rows_per_minute_per_gateway=1000)
    epoch = new_epoch()
    assert store.ingest(GW_A, [], ackable(3, epoch, size=1000)).quarantined == 2
    assert store.ingest(GW_B, [], ackable(3, epoch, size=1000)).quarantined == 1
    assert dropped(store) == {("gw-a", "gateway_cap"): (1, 1000),
                              ("gw-b", "total_cap"): (2, 2000)}
    st = store.stats()
    assert (st.quarantined, st.quarantine_bytes) == (3, 3000)
    store.close()


def test_rate_limited_entries_are_counted_and_the_good_events_stored(store_url: str) -> None:
    clock = Clock()
    store = make_store(store_url, clock, rows_per_minute_per_gateway=10)
    epoch = new_epoch()
    result = store.ingest(GW_A, [], ackable(25, epoch))
    assert (result.quarantined, result.dropped) == (10, 15)
    clock.now += 30  # five more a half minute later
    assert store.ingest(GW_A, [], ackable(25, epoch, first=100)).quarantined == 5
    assert dropped(store) == {("gw-a", "rate"): (35, 350)}
    store.close()


def test_old_entries_expire(store_url: str) -> None:
    clock = Clock()
    store = make_store(store_url, clock, retention_days=2)
    epoch = new_epoch()
    store.ingest(GW_A, [], ackable(3, epoch))
    clock.now += 1 * DAY
    store.ingest(GW_B, [], ackable(2, epoch))
    clock.now += 1.5 * DAY  # gw-a's entries are 2.5 days old, gw-b's 1.5
    assert store.stats().quarantined == 5
    store.ingest(GW_B, [], [])  # any payload, once every EXPIRE_EVERY_S
    assert store.stats().quarantined == 2
    assert dropped(store) == {("gw-a", "expired"): (3, 30)}
    store.ingest(GW_B, [], ackable(1, epoch, first=50))
    clock.now += 3 * DAY
    store.close()
    reopened = make_store(store_url, clock, retention_days=2)  # start-up expires too
    assert reopened.stats().quarantined == 0
    assert dropped(reopened)[("gw-b", "expired")] == (3, 30)
    reopened.close()
    assert EXPIRE_EVERY_S < DAY


def test_195_kib_of_junk_does_not_become_100000_rows(
        district: District, tmp_path: Path) -> None:
    """20 payloads of 5000 bare numbers (195 KiB) and 3000 junk events with a usable
    epoch/seq from one gateway account: a bounded number of rows, the rest counted."""
    proc = start_collector(district, tmp_path)
    epoch = new_epoch()
    junk = b"[" + b",".join([b"0"] * 5000) + b"]"
    assert 195 * 1024 <= 20 * len(junk) < 196 * 1024
    keyed = [[{"epoch": epoch, "seq": s} for s in range(n, n + 1000)] for n in (1, 1001, 2001)]
    good = as_dict(reading("gw-a", epoch, 3001))

    async def flood() -> list[Ack]:
        async with district.gateway("gw-a") as gw:
            for _ in range(20):
                await gw.publish(topics("gw-a").events, junk, qos=1)
            for events in keyed:
                await gw.publish(topics("gw-a").events, json.dumps(events).encode(), qos=1)
            await gw.publish(topics("gw-a").events, json.dumps([good]).encode(), qos=1)
            return await acks_until(gw, set(range(1, 3002)))

    try:
        acks = asyncio.run(flood())
    finally:
        assert proc.stop() == 0
    assert Ack(epoch, [[3001, 3001]], []) in acks
    assert set().union(*(set(range(a, b + 1)) for ack in acks for a, b in ack.rejected)) == \
        set(range(1, 3001))
    db = Path(district.store_url.removeprefix("sqlite:///"))
    [(rows,)] = query(db, "SELECT COUNT(*) FROM quarantine")
    [(rate_dropped,)] = query(db, "SELECT rows FROM quarantine_dropped "
                                  "WHERE gateway = 'gw-a' AND cause = 'rate'")
    assert rows < 200, rows  # a minute's burst (60) and what trickled in meanwhile
    assert rows + rate_dropped == 20 + 3000  # 20 folded payloads and 3000 keyed events
    assert query(db, "SELECT COUNT(*) FROM events") == [(1,)]
    stats = CliRunner().invoke(main, ["stats", "--store", district.store_url])
    assert stats.exit_code == 0, stats.output
    assert f"quarantine dropped: rate {rate_dropped}\n" in stats.output, stats.output
    assert f"dropped\tgw-a\trate\t{rate_dropped} entries" in stats.output


@pytest.mark.parametrize(("text", "shown"), [
    ("\x1b[31mred", "\\x1b[31mred"), ("a\tb\nc", "a\\x09b\\x0ac"),
    ("\u202eevil", "\\u202eevil"), ("\x9b2J", "\\x9b2J")])
def test_inspection_output_escapes_what_a_payload_wrote(tmp_path: Path, text: str,
                                                        shown: str) -> None:
    store = make_store(tmp_path, Clock())
    store.ingest(GW_A, [], [Rejected(f"event 0 (id {text}): bad", b"x")])
    store.close()
    db = tmp_path / "district.db"
    assert query(db, "SELECT reason FROM quarantine") == [(f"event 0 (id {shown}): bad",)]
    # A row written before reasons were escaped: the command escapes what it prints anyway.
    conn = sqlite3.connect(db)
    conn.execute("UPDATE quarantine SET reason = ?", (f"raw {text}",))
    conn.commit()
    conn.close()
    out = CliRunner().invoke(main, ["quarantine", "--store", f"sqlite:///{db}"]).output
    [line] = out.splitlines()
    assert line.count("\t") == 4 and line.endswith(f"\traw {shown}"), repr(line)
