"""The durable outbox (edge_agent/outbox/store.py) against real SQLite files.

Each test names the invariant of the outbox module docstring it checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import json.encoder
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge_agent.contract.envelope import Event, Hierarchy, Retention, format_time, new_event, schema
from edge_agent.contract.wire import iter_ranges, to_ranges
from edge_agent.outbox import _body as _outbox_body
from edge_agent.outbox import store as outbox_module
from edge_agent.outbox.store import (
    LANE_ALARM,
    LANE_NORMAL,
    LOSS_REPORT_INTERVAL_S,
    ROW_OVERHEAD,
    Outbox,
    OutboxError,
    OutboxFullDiskError,
    OutboxLockedError,
    OutboxRow,
    default_connect,
)
from edge_agent.outbox.thread import ACK_FLUSH_S, OutboxThread
from tests.harness import wait_until

H = Hierarchy(district="371312", street="s03", community="c012", gateway="gw7")
BIG = 1 << 30
REPO = Path(__file__).resolve().parent.parent
VALIDATOR = jsonschema.Draft7Validator(schema())
CORRUPT_NAME = re.compile(r"^outbox\.db\.corrupt-\d{8}T\d{6}Z(\.\d+)?$")


# --------------------------------------------------------------------------- helpers


def telemetry(i: int = 0, pad: int = 0) -> Event:
    data: dict[str, Any] = {"density_db_m": 0.01, "temperature_c": 20.0 + i % 10,
                            "battery_pct": 90}
    if pad:
        data["note"] = "x" * pad
    return new_event(H, f"sd{i}", "smoke.reading", data)


def record(i: int = 0, pad: int = 0) -> Event:
    data: dict[str, Any] = {"door": "open" if i % 2 else "closed"}
    if pad:
        data["note"] = "r" * pad
    return new_event(H, f"gt{i}", "gate.state", data)


def alarm(i: int = 0, pad: int = 0) -> Event:
    data: dict[str, Any] = {"state": "raised", "alarm_id": f"al-{i}"}
    if pad:
        data["note"] = "a" * pad
    return new_event(H, f"wl{i}", "water.leak", data)


def make(kind: str, i: int = 0, pad: int = 0) -> Event:
    return {"t": telemetry, "r": record, "a": alarm}[kind](i, pad)


def all_rows(box: Outbox) -> list[OutboxRow]:
    rows = box.fetch(lane=LANE_NORMAL, after_seq=0, limit=BIG, max_bytes=BIG)
    rows += box.fetch(lane=LANE_ALARM, after_seq=0, limit=BIG, max_bytes=BIG)
    return sorted(rows, key=lambda r: r.seq)


def data_loss_reports(box: Outbox) -> list[dict[str, Any]]:
    """The `data` of every data_loss event in the outbox (each body schema-checked)."""
    reports = []
    for row in all_rows(box):
        if row.type == "gateway.data_loss":
            body = json.loads(row.body)
            VALIDATOR.validate(body)
            assert row.lane == LANE_ALARM
            reports.append(body["data"])
    return reports


def row_size(row: OutboxRow) -> int:
    return len(row.body.encode()) + ROW_OVERHEAD


class FakeClock:
    """The outbox's `clock=`: tests move time instead of sleeping."""

    def __init__(self, now: float = 1_780_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pending_report(box: Outbox) -> dict[str, Any] | None:
    """The pending loss report as persisted in meta (read on the outbox's own connection,
    since the file is locked exclusively)."""
    row = box._live().execute("SELECT value FROM meta WHERE key = 'loss_report'").fetchone()
    return None if row is None else dict(json.loads(row[0]))


def pending_seqs(box: Outbox) -> set[int]:
    report = pending_report(box)
    return set() if report is None else set(iter_ranges(report["seq_ranges"]))


def quick_connect(path: Path) -> sqlite3.Connection:
    """Like production, but gives up on a lock after 0.1 s."""
    return sqlite3.connect(str(path), timeout=0.1, isolation_level=None)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def box(path: Path) -> Iterator[Outbox]:
    b = Outbox.open(path, max_bytes=BIG, hierarchy=H)
    yield b
    b.close()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection, closed afterwards (an open WAL reader would hold the file)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


CHILD_PRELUDE = (
    "import os, sys, time\n"
    "from pathlib import Path\n"
    "from edge_agent.contract.logs import configure\n"
    "from edge_agent.outbox.store import Outbox\n"
    "from tests.test_outbox import H, alarm, telemetry\n"
    "configure('warning')\n"
    "box = Outbox.open(Path(sys.argv[1]), max_bytes=1 << 30, hierarchy=H)\n"
)


def child(code: str, path: Path) -> list[str]:
    """Run `code` in a new process with `box` open on `path`; it must end with os._exit(9)."""
    out = subprocess.run([sys.executable, "-c", CHILD_PRELUDE + code, str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 9, out.stderr
    return out.stdout.split()


# --------------------------------------------------------------------------- seq and epoch


def test_seqs_are_contiguous_and_continue_after_reopen(path: Path) -> None:
    """Invariants 2 and 3: next_seq is persisted; the epoch belongs to the file."""
    with Outbox.open(path, max_bytes=BIG, hierarchy=H) as box:
        epoch = box.epoch
        assert re.fullmatch(r"[0-9a-f]{16}", epoch)
        assert box.append([telemetry(i) for i in range(3)]) == [1, 2, 3]
        assert box.append([alarm(1)]) == [4]
        assert box.append([]) == []
        assert box.delete([1, 2, 3, 4]) == 4  # next_seq cannot come from MAX(seq)
    with Outbox.open(path, max_bytes=BIG, hierarchy=H) as box:
        assert box.epoch == epoch
        assert box.quarantined is None
        assert box.stats().next_seq == 5
        assert box.append([record(1), telemetry(2)]) == [5, 6]
    with raw(path) as conn:
        assert dict(conn.execute("SELECT key, value FROM meta"))["next_seq"] == "7"


def test_new_file_new_epoch(tmp_path: Path) -> None:
    a = Outbox.open(tmp_path / "a.db", max_bytes=BIG, hierarchy=H)
    b = Outbox.open(tmp_path / "b.db", max_bytes=BIG, hierarchy=H)
    assert a.epoch != b.epoch
    assert a.stats().next_seq == b.stats().next_seq == 1
    assert a.stats().events == 0 and a.quarantined is None
    a.close()
    b.close()


def test_crash_without_close_keeps_committed_rows_and_seq(path: Path) -> None:
    """Invariant 1: a process killed right after append() returned loses nothing."""
    code = ("seqs = box.append([telemetry(i) for i in range(20)] + [alarm(1)])\n"
            "print(seqs[-1], box.epoch, flush=True)\n"
            "os._exit(9)\n")
    for round_ in range(2):
        last, epoch = child(code, path)
        assert int(last) == 21 * (round_ + 1)
        assert Path(f"{path}-wal").exists()  # no checkpoint happened: recovery reads the WAL
    with Outbox.open(path, max_bytes=BIG, hierarchy=H) as box:
        assert box.epoch == epoch
        assert box.stats().events == 42
        assert [r.seq for r in all_rows(box)] == list(range(1, 43))
        assert box.append([telemetry()]) == [43]


def test_stamped_bodies_validate_and_match_to_json(box: Outbox) -> None:
    """Invariant 8: the stored body is Event.stamped(epoch, seq).to_json(), schema-valid."""
    events = [telemetry(1), record(2), alarm(3),
              new_event(H, "cam1", "camera.health", {"fps": 12.5, "width": 1920, "height": 1080}),
              new_event(H, "wl1", "water.level", {"level_m": 1.25, "note": "中文 ✓"}),
              new_event(H, "gt1", "gate.access", {"result": "granted", "method": "card"})]
    seqs = box.append(events)
    for event, seq, row in zip(events, seqs, box.get(seqs), strict=True):
        assert row.seq == seq and row.id == event.id and row.type == event.type
        assert row.body == event.stamped(box.epoch, seq).to_json()
        VALIDATOR.validate(json.loads(row.body))
        assert row.lane == (LANE_ALARM if event.retention is Retention.ALARM else LANE_NORMAL)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
json_data = st.dictionaries(
    st.text(max_size=6),
    st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.text(max_size=4), c, max_size=3), max_leaves=8),
    max_size=5)


@settings(max_examples=200, deadline=None)
@given(data=json_data, seq=st.integers(1, 2**53 - 1))
def test_fast_body_equals_to_json(data: dict[str, Any], seq: int) -> None:
    event = new_event(H, "sd1", "smoke.reading", data)
    assert _outbox_body.stamped_body(event, "0123456789abcdef", seq) == \
        event.stamped("0123456789abcdef", seq).to_json()


def test_fast_body_falls_back_for_non_json_data() -> None:
    assert _outbox_body.FAST_PATH, "Event fields changed: update ENVELOPE_FIELDS"
    for data in ({"t": datetime(2026, 1, 2, 3, 4, 5)}, {"x": math.nan}, {"s": {1, 2}},
                 {"b": b"ab"}, {"t": (1, "a")}, {"e": Retention.ALARM}):
        event = new_event(H, "sd1", "smoke.reading", data)
        assert _outbox_body.stamped_body(event, "0123456789abcdef", 7) == \
            event.stamped("0123456789abcdef", 7).to_json()


def test_encoder_without_c_accelerator_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {"a": [1, 2.5, None, True, "中文"], "b": {"c": -3}, "s": Retention.ALARM}
    fast = _outbox_body._encoder()
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    slow = _outbox_body._encoder()
    assert fast(data) == slow(data) == json.dumps(data, ensure_ascii=False,
                                                  separators=(",", ":"))
    for bad in ({"x": math.inf}, {"x": {1}}):
        for enc in (fast, slow):
            with pytest.raises((TypeError, ValueError)):
                enc(bad)


def test_lone_surrogate_is_stored_escaped(box: Outbox) -> None:
    event = new_event(H, "sd1", "smoke.reading", {"note": "bad \ud800 text"})
    [seq] = box.append([event])
    [row] = box.get([seq])
    assert "\\ud800" in row.body
    assert json.loads(row.body) == json.loads(event.stamped(box.epoch, seq).to_json())


# --------------------------------------------------------------------------- reads and deletes


def test_fetch_by_lane_limit_and_bytes(box: Outbox) -> None:
    seqs = box.append([telemetry(0), alarm(1), telemetry(2), record(3), alarm(4),
                       telemetry(5, pad=2000)])
    assert seqs == [1, 2, 3, 4, 5, 6]
    normal = box.fetch(lane=LANE_NORMAL, after_seq=0, limit=100, max_bytes=BIG)
    assert [r.seq for r in normal] == [1, 3, 4, 6]
    assert [r.seq for r in box.fetch(lane=LANE_ALARM, after_seq=0, limit=100,
                                     max_bytes=BIG)] == [2, 5]
    assert [r.seq for r in box.fetch(lane=LANE_NORMAL, after_seq=1, limit=2,
                                     max_bytes=BIG)] == [3, 4]
    assert [r.seq for r in box.fetch(lane=LANE_ALARM, after_seq=5, limit=9,
                                     max_bytes=BIG)] == []
    body = len(normal[0].body.encode())
    two = body + len(normal[1].body.encode())
    assert [r.seq for r in box.fetch(lane=LANE_NORMAL, after_seq=0, limit=100,
                                     max_bytes=two)] == [1, 3]
    assert [r.seq for r in box.fetch(lane=LANE_NORMAL, after_seq=0, limit=100,
                                     max_bytes=two - 1)] == [1]
    # One row is always returned, even when it alone exceeds max_bytes.
    assert [r.seq for r in box.fetch(lane=LANE_NORMAL, after_seq=4, limit=100,
                                     max_bytes=10)] == [6]
    assert box.fetch(lane=LANE_NORMAL, after_seq=0, limit=0, max_bytes=BIG) == []


def test_get_returns_present_rows_only(box: Outbox) -> None:
    box.append([telemetry(i) for i in range(10)])
    box.delete([2, 3])
    assert [r.seq for r in box.get([9, 1, 2, 3, 1, 42])] == [1, 9]
    assert box.get([]) == []
    assert len(box.get(range(1, 2000))) == 8  # more than one IN chunk


def test_delete_after_ack(box: Outbox) -> None:
    """Invariant 4: rows leave by delete(); unknown seqs are ignored."""
    box.append([telemetry(i) for i in range(5)])
    first = box.stats().oldest_created
    rows = all_rows(box)
    assert box.stats().bytes == sum(row_size(r) for r in rows)
    assert box.delete([1, 2, 99, 0, -3]) == 2
    assert box.delete([1, 2]) == 0
    assert box.delete([]) == 0
    st_ = box.stats()
    assert st_.events == 3 and st_.bytes == sum(row_size(r) for r in rows[2:])
    assert st_.oldest_created == first
    box.append([alarm(1)])
    assert box.delete(range(1, 7)) == 4
    st_ = box.stats()
    assert (st_.events, st_.bytes, st_.oldest_created) == (0, 0, None)
    assert st_.next_seq == 7


def test_append_deletes_acked_rows_in_its_own_transaction(box: Outbox) -> None:
    """Invariant 4: append(acked=...) deletes and appends together, figures included."""
    box.append([telemetry(i) for i in range(4)])
    assert box.append([record(9)], acked=[1, 2, 77]) == [5]
    rows = all_rows(box)
    assert [r.seq for r in rows] == [3, 4, 5]
    st_ = box.stats()
    assert st_.events == 3 and st_.bytes == sum(row_size(r) for r in rows)
    assert box.append([], acked=[3, 4, 5]) == []
    assert (box.stats().events, box.stats().bytes, box.stats().oldest_created) == (0, 0, None)


def test_a_failed_append_deletes_nothing_it_was_given(path: Path) -> None:
    """Invariant 1: the acked deletions roll back with the append."""
    conn_box: list[sqlite3.Connection] = []

    def connect(p: Path) -> sqlite3.Connection:
        conn_box.append(sqlite3.connect(str(p), isolation_level=None, check_same_thread=False))
        return conn_box[0]

    with Outbox.open(path, max_bytes=BIG, hierarchy=H, connect=connect) as box:
        box.append([telemetry(i) for i in range(3)])
        before = box.stats()
        conn_box[0].execute("PRAGMA query_only=1")  # every write now fails
        with pytest.raises(OutboxError):
            box.append([telemetry(5)], acked=[1, 2])
        conn_box[0].execute("PRAGMA query_only=0")
        assert box.stats() == before
        assert [r.seq for r in all_rows(box)] == [1, 2, 3]


async def test_acks_are_deleted_write_behind_and_never_read_back(path: Path) -> None:
    outbox = await OutboxThread.open(path, max_bytes=BIG, hierarchy=H)
    try:
        await outbox.append([telemetry(i) for i in range(4)])
        outbox.ack([1, 2])
        assert outbox.waiting() == 2 and outbox.stats().events == 4  # not deleted yet
        rows = await outbox.fetch(lane=0, after_seq=0, limit=10, max_bytes=BIG)
        assert [r.seq for r in rows] == [3, 4]  # pending acks go before any read
        assert outbox.stats().events == 2
        outbox.ack([3])
        await outbox.append([telemetry(9)])  # rides along with the next commit
        assert outbox.stats().events == 2
        outbox.ack([4])
        # or goes on its own, after ACK_FLUSH_S, without another commit
        await wait_until(lambda: outbox.stats().events == 1, 10 * ACK_FLUSH_S + 5,
                         "the pending ack deleted on its own")
        assert outbox.waiting() == 1
    finally:
        await outbox.close()


def test_stats_is_a_snapshot_readable_from_another_thread(box: Outbox) -> None:
    box.append([telemetry()])
    seen: list[Any] = []
    t = threading.Thread(target=lambda: seen.append(box.stats()))
    t.start()
    t.join()
    assert seen[0].events == 1 and seen[0].epoch == box.epoch


def test_closed_outbox_refuses_calls_but_keeps_stats(path: Path) -> None:
    box = Outbox.open(path, max_bytes=BIG, hierarchy=H)
    box.append([telemetry()])
    box.close()
    box.close()  # idempotent
    assert box.stats().events == 1
    with pytest.raises(OutboxError, match="closed"):
        box.append([telemetry()])


# --------------------------------------------------------------------------- eviction


def check_accounting(box: Outbox, acked: set[int]) -> list[dict[str, Any]]:
    """Invariant 6: every seq is present, acked, named by exactly one data_loss report or in
    the pending report; `evicted_total` = reported + pending."""
    stats = box.stats()
    present = {r.seq for r in all_rows(box)}
    reports = data_loss_reports(box)
    named: list[int] = []
    for rep in reports:
        seqs = list(iter_ranges(rep["seq_ranges"]))
        assert len(seqs) == rep["evicted"]
        assert sum(v["count"] for v in rep["by_type"].values()) == rep["evicted"]
        assert len(rep["seq_ranges"]) <= outbox_module.MAX_LOSS_RANGES
        named += seqs
    pending = pending_report(box)
    if pending is not None:
        assert pending["evicted"] == stats.loss_pending > 0
        assert sum(v["count"] for v in pending["by_type"].values()) == pending["evicted"]
        assert pending["seq_ranges"] == to_ranges(iter_ranges(pending["seq_ranges"]))
        named += iter_ranges(pending["seq_ranges"])
    else:
        assert stats.loss_pending == 0
    assert len(named) == len(set(named)), "a seq was reported twice"
    missing = set(range(1, stats.next_seq)) - present - acked
    assert set(named) == missing
    assert sum(rep["evicted"] for rep in reports) + stats.loss_pending == len(missing) \
        == stats.evicted_total
    return reports


def test_eviction_takes_oldest_telemetry_first_and_never_alarms(path: Path) -> None:
    """Invariants 5, 6, 7 with a mix: telemetry goes, records and alarms stay; within the
    interval all evictions go into one pending report, emitted by flush_loss_report()."""
    cap = 30_000
    box = Outbox.open(path, max_bytes=cap, hierarchy=H, clock=FakeClock())
    kinds: dict[int, str] = {}
    pattern = "ttrtatttrt"
    for batch in range(12):
        events = [make(k, batch * 10 + i) for i, k in enumerate(pattern)]
        seqs = box.append(events)
        kinds.update(zip(seqs, pattern, strict=True))
        assert box.stats().next_seq == seqs[-1] + 1, "a data_loss event before the interval"
        assert box.stats().bytes <= cap
    stats = box.stats()
    assert stats.evicted_total == stats.loss_pending > 0
    rows = all_rows(box)
    present = {r.seq for r in rows}
    assert box.stats().bytes == sum(row_size(r) for r in rows)
    assert all(s in present for s, k in kinds.items() if k in "ar"), "an alarm/record was lost"
    gone = sorted(s for s in kinds if s not in present)
    kept_t = sorted(s for s in present if kinds[s] == "t")
    assert gone and all(kinds[s] == "t" for s in gone)
    assert max(gone) < min(kept_t), "telemetry was not evicted oldest first"
    assert pending_seqs(box) == set(gone)
    assert check_accounting(box, set()) == []
    seq = box.flush_loss_report()
    assert seq == stats.next_seq and box.stats().loss_pending == 0
    assert pending_report(box) is None
    [rep] = check_accounting(box, set())
    assert rep["reason"] == "outbox_full" and set(rep["by_type"]) == {"smoke.reading"}
    assert rep["evicted"] >= len(gone)  # plus any evicted to make room for the report
    for r in all_rows(box):
        VALIDATOR.validate(json.loads(r.body))
    assert box.flush_loss_report() is None
    box.close()


def test_records_go_after_telemetry_and_alarms_stay_over_cap(path: Path) -> None:
    cap = 12_000
    with structlog.testing.capture_logs() as logs:
        box = Outbox.open(path, max_bytes=cap, hierarchy=H)
        box.append([telemetry(i) for i in range(5)])                   # 1..5
        box.append([record(i) for i in range(8)])                      # 6..13
        box.append([alarm(i) for i in range(4)])                       # 14..17
        assert box.stats().evicted_total == 0
        box.append([record(i) for i in range(14)])                     # all telemetry, then records
        present = {r.seq for r in all_rows(box)}
        assert not present & set(range(1, 6)), "telemetry must go before any record"
        assert set(range(14, 18)) <= present
        gone_records = sorted(set(range(6, 14)) - present)
        assert gone_records, "the test did not reach the records"
        assert gone_records == list(range(6, 6 + len(gone_records)))   # oldest records first
        assert box.stats().bytes <= cap
        assert box.stats().alarms_over_cap == 0
        # Only alarms from here: the cap is overshot, nothing is dropped.
        before = box.stats()
        alarm_seqs = box.append([alarm(i, pad=500) for i in range(20)])
        present = {r.seq for r in all_rows(box)}
        assert set(alarm_seqs) <= present and set(range(14, 18)) <= present
        stats = box.stats()
        assert stats.bytes > cap
        assert stats.alarms_over_cap == 1
        assert all(r.lane == LANE_ALARM for r in all_rows(box)), "only alarms can be left"
        assert stats.evicted_total >= before.evicted_total
        check_accounting(box, set())
        box.close()
    over = [e for e in logs if e["event"] == "outbox_over_cap_alarms_only"]
    assert over and over[0]["log_level"] == "warning" and over[0]["max_bytes"] == cap
    evicted_logs = [e for e in logs if e["event"] == "outbox_evicted"]
    assert evicted_logs[0]["log_level"] == "warning"  # the loss started
    assert all(e["log_level"] == "debug" for e in evicted_logs[1:])  # no warning per append
    [reported] = [e for e in logs if e["event"] == "outbox_loss_reported"]  # by close()
    assert reported["log_level"] == "warning" and reported["evicted"] == stats.evicted_total


def test_oversized_event_is_evicted_and_reported(path: Path) -> None:
    # loss_report_interval_s=0: every evicting append reports at once, in the same append.
    box = Outbox.open(path, max_bytes=3_000, hierarchy=H, loss_report_interval_s=0)
    [seq] = box.append([telemetry(pad=5_000)])
    assert box.get([seq]) == []
    [rep] = data_loss_reports(box)
    assert rep["seq_ranges"] == [[seq, seq]] and rep["evicted"] == 1
    assert rep["by_type"]["smoke.reading"]["count"] == 1
    assert box.stats().next_seq == seq + 2 and box.stats().loss_pending == 0
    assert pending_report(box) is None
    box.close()


def test_evicted_total_persists(path: Path) -> None:
    with Outbox.open(path, max_bytes=5_000, hierarchy=H) as box:
        box.append([telemetry(i) for i in range(30)])
        assert 0 < box.stats().loss_pending == box.stats().evicted_total
    total = box.stats().evicted_total  # close() may evict more, to make room for the report
    with Outbox.open(path, max_bytes=5_000, hierarchy=H) as box:
        assert box.stats().evicted_total == total
        assert box.stats().loss_pending == 0  # close() emitted the report
        [rep] = check_accounting(box, set())
        assert rep["evicted"] == total


def test_ack_then_evict_accounting(path: Path) -> None:
    with Outbox.open(path, max_bytes=8_000, hierarchy=H) as box:
        acked: set[int] = set()
        for i in range(10):
            seqs = box.append([telemetry(i), alarm(i), telemetry(i + 1)])
            box.delete(seqs[1:2])
            acked.add(seqs[1])
        check_accounting(box, acked)
        box.flush_loss_report()
        check_accounting(box, acked)


# --------------------------------------------------------------------------- loss reports


def evicting_outbox(path: Path, clock: FakeClock, **kw: Any) -> Outbox:
    """An outbox whose cap holds ~15 telemetry events, already full."""
    box = Outbox.open(path, max_bytes=8_000, hierarchy=H, clock=clock, **kw)
    box.append([telemetry(i) for i in range(15)])
    assert box.stats().evicted_total == 0
    return box


def test_loss_report_is_emitted_once_the_interval_has_passed(path: Path) -> None:
    """Invariant 6 (a): evictions gather in one pending report, persisted at each append;
    the first append at or after `loss_report_interval_s` emits it."""
    clock = FakeClock()
    box = evicting_outbox(path, clock)
    start = clock.now
    for i in range(59):
        [seq] = box.append([telemetry(100 + i)])
        assert box.stats().next_seq == seq + 1, "reported before the interval"
        assert box.stats().loss_pending == box.stats().evicted_total == i + 1
        report = pending_report(box)
        assert report is not None and report["evicted"] == i + 1
        assert report["pending_since"] == start
        clock.advance(1.0)
    assert clock.now - start == 59.0
    assert data_loss_reports(box) == []
    named = pending_seqs(box)
    assert named == set(range(1, 60))
    clock.advance(1.0)
    [seq] = box.append([telemetry(200)])
    [row] = box.get([seq + 1])
    assert row.type == "gateway.data_loss" and row.lane == LANE_ALARM
    body = json.loads(row.body)
    VALIDATOR.validate(body)
    assert body["time"] == format_time(clock.now)
    data = body["data"]
    assert set(data) == {"reason", "evicted", "lost", "unconfirmed", "by_type", "seq_ranges"}
    assert data["reason"] == "outbox_full"
    # nothing was marked sent: every evicted event is known never delivered
    assert data["lost"] == data["evicted"] and data["unconfirmed"] == 0
    # The emitting append evicted one more (its own event's room) and named it too.
    assert data["seq_ranges"] == [[1, data["evicted"]]] and data["evicted"] >= 60
    assert data["by_type"]["smoke.reading"]["count"] == data["evicted"]
    assert box.stats().loss_pending == 0 and pending_report(box) is None
    assert box.stats().bytes <= box.max_bytes
    check_accounting(box, set())
    # The next eviction starts a new report, pending since now.
    clock.advance(5.0)
    box.append([telemetry(300)])
    report = pending_report(box)
    assert report is not None and report["pending_since"] == clock.now
    check_accounting(box, set())
    box.close()


def test_sustained_outage_reports_once_per_interval_and_keeps_the_cap(path: Path) -> None:
    """The bug this guards against: one data_loss alarm (never evicted) per evicting append
    grew without bound. 2,000 evicting appends over 200 s: at most ceil(200/60)+1 events."""
    clock = FakeClock()
    cap = 20_000
    box = Outbox.open(path, max_bytes=cap, hierarchy=H, clock=clock)
    box.append([telemetry(i) for i in range(40)])
    emitted = 0
    for i in range(2_000):
        clock.advance(0.1)
        [seq] = box.append([telemetry(i)])
        emitted += box.stats().next_seq - seq - 1
        assert box.stats().bytes <= cap
    assert box.stats().evicted_total >= 2_000
    limit = math.ceil(200 / LOSS_REPORT_INTERVAL_S) + 1
    assert 3 <= emitted <= limit
    assert len(data_loss_reports(box)) == emitted
    check_accounting(box, set())
    assert box.flush_loss_report() is not None
    reports = check_accounting(box, set())
    assert len(reports) == emitted + 1 and box.stats().loss_pending == 0
    box.close()


def test_outage_with_only_alarms_left_overshoots_by_a_few_reports_only(tmp_path: Path) -> None:
    """With the cap full of alarms every new reading is evicted at once. The overshoot is
    the alarms plus one report per interval, not one report per append."""
    def outage(path: Path, interval: float, appends: int) -> tuple[int, int]:
        clock = FakeClock()
        cap = 10_000
        box = Outbox.open(path, max_bytes=cap, hierarchy=H, clock=clock,
                          loss_report_interval_s=interval)
        box.append([alarm(i, pad=200) for i in range(40)])
        base = box.stats().bytes
        assert base > cap
        for i in range(appends):
            clock.advance(0.1)
            box.append([telemetry(i)])
        box.flush_loss_report()
        reports = check_accounting(box, set())
        assert box.stats().evicted_total == appends
        overshoot = box.stats().bytes - base
        assert overshoot == sum(row_size(r) for r in all_rows(box)
                                if r.type == "gateway.data_loss")
        box.close()
        return len(reports), overshoot

    count, overshoot = outage(tmp_path / "a.db", LOSS_REPORT_INTERVAL_S, 2_000)
    assert count <= math.ceil(200 / LOSS_REPORT_INTERVAL_S) + 1 + 1  # + the final flush
    assert overshoot < 5_000
    # The old behaviour, for contrast: a report per append.
    count, overshoot = outage(tmp_path / "b.db", 0, 200)
    assert count == 200 and overshoot > 100_000


def test_too_many_ranges_emit_the_report_and_start_a_new_one(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant 6 (b): no report names more than MAX_LOSS_RANGES ranges."""
    monkeypatch.setattr(outbox_module, "MAX_LOSS_RANGES", 3)
    clock = FakeClock()
    box = Outbox.open(path, max_bytes=6_000, hierarchy=H, clock=clock)
    box.append([make("ta"[i % 2], i) for i in range(16)])              # t a t a ...
    for i in range(8):  # each evicts one telemetry between two alarms: a range of its own
        box.append([telemetry(100 + i, pad=250)])
    assert clock.now == FakeClock().now  # so the reports were emitted for their size
    reports = check_accounting(box, set())
    assert len(reports) >= 2
    assert all(len(r["seq_ranges"]) == 3 for r in reports)
    assert 1 <= len(pending_report(box)["seq_ranges"]) <= 3  # type: ignore[index]
    box.close()
    # One append that evicts many fragmented rows emits several reports at once.
    box = Outbox.open(path.with_name("b.db"), max_bytes=30_000, hierarchy=H, clock=clock)
    box.append([make("ta"[i % 2], i) for i in range(20)])
    assert box.stats().evicted_total == 0
    [seq] = box.append([telemetry(pad=28_000)])  # evicts all 11 telemetry: 11 ranges
    assert box.stats().evicted_total == 11
    assert box.stats().next_seq - seq - 1 == 3  # 3 + 3 + 3 ranges reported, 2 pending
    reports = check_accounting(box, set())
    assert [len(r["seq_ranges"]) for r in reports] == [3, 3, 3]
    assert len(pending_report(box)["seq_ranges"]) == 2  # type: ignore[index]
    box.close()


def test_flush_loss_report(path: Path) -> None:
    """Invariant 6 (c)."""
    clock = FakeClock()
    box = evicting_outbox(path, clock)
    assert box.flush_loss_report() is None  # nothing pending: no write
    assert box.stats().next_seq == 16
    box.append([telemetry(i) for i in range(5)])
    pending = pending_seqs(box)
    assert len(pending) == box.stats().loss_pending == 5
    seq = box.flush_loss_report()
    assert seq == 21 == box.stats().next_seq - 1
    [row] = box.get([seq])
    data = json.loads(row.body)["data"]
    assert set(iter_ranges(data["seq_ranges"])) >= pending  # + room made for the report
    assert box.stats().loss_pending == 0 and pending_report(box) is None
    assert box.stats().bytes <= box.max_bytes
    assert box.flush_loss_report() is None
    check_accounting(box, set())
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.flush_loss_report()


def test_close_emits_the_pending_report(path: Path) -> None:
    """Invariant 6 (d)."""
    box = evicting_outbox(path, FakeClock())
    box.append([telemetry(i) for i in range(5)])
    next_seq = box.stats().next_seq
    box.close()
    assert box.stats().loss_pending == 0 and box.stats().next_seq == next_seq + 1
    evicted = box.stats().evicted_total
    with raw(path) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert "loss_report" not in meta and meta["next_seq"] == str(next_seq + 1)
        [(body,)] = conn.execute("SELECT body FROM events WHERE type = 'gateway.data_loss'")
    assert json.loads(body)["seq"] == next_seq
    assert json.loads(body)["data"]["evicted"] == evicted
    with Outbox.open(path, max_bytes=8_000, hierarchy=H) as again:
        [rep] = check_accounting(again, set())
        assert rep["evicted"] == evicted and again.stats().loss_pending == 0


def test_crash_keeps_the_pending_report_for_the_next_run(path: Path) -> None:
    """Invariants 1 and 6: a process killed with a report pending loses no accounting; the
    next run emits it at its first append after the interval (or at close)."""
    code = ("box.close()\n"
            "box = Outbox.open(Path(sys.argv[1]), max_bytes=8_000, hierarchy=H)\n"
            "for i in range(40):\n"
            "    box.append([telemetry(i)])\n"
            "s = box.stats()\n"
            "print(s.evicted_total, s.loss_pending, s.next_seq, flush=True)\n"
            "os._exit(9)\n")
    evicted, pending, next_seq = map(int, child(code, path))
    assert evicted == pending > 0 and next_seq == 41  # nothing reported yet
    with raw(path) as conn:  # the child is dead: no lock
        report = json.loads(dict(conn.execute("SELECT key, value FROM meta"))["loss_report"])
    assert report["evicted"] == evicted and set(report) == {
        "evicted", "by_type", "seq_ranges", "pending_since", "unconfirmed"}
    clock = FakeClock(report["pending_since"] + 30)
    box = Outbox.open(path, max_bytes=8_000, hierarchy=H, clock=clock)
    assert box.stats().loss_pending == box.stats().evicted_total == evicted
    assert pending_report(box) == report
    check_accounting(box, set())
    box.append([telemetry(100)])  # 30 s after the report started: still pending
    assert box.stats().next_seq == 42 and box.stats().loss_pending == evicted + 1
    clock.advance(30)
    [seq] = box.append([telemetry(101)])
    [rep] = check_accounting(box, set())
    assert box.get([seq + 1])[0].type == "gateway.data_loss"
    assert rep["evicted"] >= evicted + 2 and box.stats().loss_pending == 0
    assert set(iter_ranges(report["seq_ranges"])) <= set(iter_ranges(rep["seq_ranges"]))
    box.close()


def test_clock_set_back_emits_the_report(path: Path) -> None:
    """Invariant 6 (a): a clock set back before `pending_since` (a gateway without RTC that
    booted in 1970, say) must not hold the report back until it catches up."""
    clock = FakeClock()
    box = evicting_outbox(path, clock)
    box.append([telemetry(1)])
    assert box.stats().loss_pending == 1
    clock.now -= 3600
    [seq] = box.append([telemetry(2)])
    assert box.stats().next_seq == seq + 2 and box.stats().loss_pending == 0
    box.close()


class FailingReportConnection(sqlite3.Connection):
    """SQLITE_FULL on inserting a single row (how a data_loss report is written) once armed."""

    armed = False

    def execute(self, sql: str, params: Any = (), /) -> sqlite3.Cursor:
        if self.armed and sql.startswith("INSERT INTO events"):
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorname = "SQLITE_FULL"
            raise exc
        return super().execute(sql, params)


def test_close_closes_even_if_the_report_cannot_be_written(path: Path) -> None:
    box = evicting_outbox(path, FakeClock(), connect=lambda p: sqlite3.connect(
        str(p), isolation_level=None, factory=FailingReportConnection))
    box.append([telemetry(i) for i in range(3)])
    report = pending_report(box)
    assert report is not None
    FailingReportConnection.armed = True
    try:
        with pytest.raises(OutboxFullDiskError):
            box.flush_loss_report()
        assert box.stats().loss_pending == 3 and pending_report(box) == report
        with structlog.testing.capture_logs() as logs:
            box.close()  # does not raise
    finally:
        FailingReportConnection.armed = False
    assert any(e["event"] == "outbox_loss_report_not_flushed" and e["log_level"] == "error"
               for e in logs)
    with pytest.raises(OutboxError, match="closed"):
        box.append([telemetry()])
    with raw(path) as conn:
        assert json.loads(dict(conn.execute("SELECT key, value FROM meta"))["loss_report"]) \
            == report


def test_loss_report_interval_is_checked(path: Path) -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="loss_report_interval_s"):
            Outbox.open(path, max_bytes=BIG, hierarchy=H, loss_report_interval_s=bad)
    assert not path.exists()


# --------------------------------------------------------------------------- open: corrupt, locked


def make_real_outbox(path: Path, events: int = 2000) -> str:
    with Outbox.open(path, max_bytes=BIG, hierarchy=H) as box:
        for i in range(0, events, 500):
            box.append([telemetry(j, pad=100) for j in range(i, min(i + 500, events))])
        return box.epoch


def random_bytes(path: Path) -> str | None:
    path.write_bytes(os.urandom(10_000))
    return None


def truncated(path: Path) -> str | None:
    make_real_outbox(path)
    os.truncate(path, path.stat().st_size // 2)
    return None


def garbage_page(path: Path) -> str | None:
    make_real_outbox(path)
    with path.open("r+b") as f:
        f.seek(4096 * 5)
        f.write(os.urandom(4096 * 3))
    return None


def meta_update(sql: str, keeps_epoch: bool) -> Any:
    def corrupt(path: Path) -> str | None:
        epoch = make_real_outbox(path, 10)
        with raw(path) as conn:
            conn.execute(sql)
        return epoch if keeps_epoch else None
    corrupt.__name__ = sql
    return corrupt


def with_loss_report(ranges: list[list[int]], evicted: int = 2,
                    next_seq: int = 13) -> Any:
    """A file of 10 events, next_seq as given and this pending loss report."""
    report = {"evicted": evicted, "by_type": {"smoke.reading": {
        "count": evicted, "first_time": "2026-01-01T00:00:00.000Z",
        "last_time": "2026-01-01T00:00:01.000Z"}}, "seq_ranges": ranges,
        "pending_since": 1.0}

    def corrupt(path: Path) -> str | None:
        epoch = make_real_outbox(path, 10)
        with raw(path) as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(next_seq),))
            conn.execute("UPDATE meta SET value = '9' WHERE key = 'evicted_total'")
            conn.execute("INSERT INTO meta VALUES ('loss_report', ?)", (json.dumps(report),))
        return epoch
    corrupt.__name__ = f"loss_report {ranges} evicted={evicted} next_seq={next_seq}"
    return corrupt


def foreign_db(path: Path) -> str | None:
    with raw(path) as conn:
        conn.execute("CREATE TABLE x (a)")
    return None


CORRUPTIONS = [
    random_bytes, truncated, garbage_page, foreign_db,
    meta_update("UPDATE meta SET value = 'zzz' WHERE key = 'next_seq'", True),
    meta_update("UPDATE meta SET value = '3' WHERE key = 'next_seq'", True),  # < MAX(seq)
    meta_update("UPDATE meta SET value = 'NOT-HEX' WHERE key = 'epoch'", False),
    meta_update("UPDATE meta SET value = '99' WHERE key = 'format'", True),
    meta_update("DELETE FROM meta WHERE key = 'evicted_total'", True),
    meta_update("DROP TABLE meta", False),
    meta_update("ALTER TABLE events RENAME COLUMN lane TO lane_", True),
    meta_update("INSERT INTO meta VALUES ('loss_report', '{not json')", True),
    with_loss_report([[3, 4]]),          # seqs 3 and 4 are still stored
    with_loss_report([[11, 11], [12, 12]]),  # not merged
    with_loss_report([[11, 12]], evicted=3),  # count differs from the ranges
    with_loss_report([[11, 12]], next_seq=12),  # beyond next_seq
]


def test_a_consistent_pending_report_is_kept_at_open(path: Path) -> None:
    """Control for the with_loss_report corruptions above."""
    epoch = with_loss_report([[11, 12]])(path)
    with Outbox.open(path, max_bytes=BIG, hierarchy=H) as box:
        assert box.quarantined is None and box.epoch == epoch
        assert box.stats().loss_pending == 2 and pending_seqs(box) == {11, 12}
    with raw(path) as conn:
        [(body,)] = conn.execute("SELECT body FROM events WHERE type = 'gateway.data_loss'")
    assert json.loads(body)["data"]["seq_ranges"] == [[11, 12]]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_corrupt_file_is_quarantined_and_a_fresh_outbox_starts(path: Path, corrupt: Any) -> None:
    """Invariant 9: never a crash loop; the bad file is moved aside, loss is reported."""
    previous_epoch = corrupt(path)
    original = path.read_bytes()
    with structlog.testing.capture_logs() as logs:
        box = Outbox.open(path, max_bytes=BIG, hierarchy=H)
    try:
        assert box.quarantined is not None
        assert box.quarantined.parent == path.parent
        assert CORRUPT_NAME.match(box.quarantined.name), box.quarantined.name
        assert box.quarantined.read_bytes() == original  # moved, not rewritten
        assert previous_epoch is None or box.epoch != previous_epoch
        [row] = all_rows(box)
        assert (row.seq, row.type, row.lane) == (1, "gateway.data_loss", LANE_ALARM)
        body = json.loads(row.body)
        VALIDATOR.validate(body)
        assert body["epoch"] == box.epoch
        assert body["data"]["reason"] == "outbox_corrupt"
        assert body["data"]["quarantined_file"] == str(box.quarantined)
        assert body["data"]["evicted"] == 0
        if previous_epoch:
            assert body["data"]["previous_epoch"] == previous_epoch
        assert box.append([telemetry()]) == [2]
    finally:
        box.close()
    [entry] = [e for e in logs if e["event"] == "outbox_quarantined"]
    assert entry["log_level"] == "error"
    assert entry["path"] == str(path) and entry["quarantined_file"] == str(box.quarantined)
    assert entry["reason"]
    # The fresh file is a normal outbox from now on.
    with Outbox.open(path, max_bytes=BIG, hierarchy=H) as again:
        assert again.quarantined is None and again.epoch == box.epoch
        assert again.stats().next_seq == 3


def test_quarantine_moves_wal_along_and_never_overwrites(path: Path) -> None:
    # Enough rows that SQLite checkpoints into the main file, then a few more left in the
    # WAL by a crash; then damage pages that only the main file holds.
    code = ("for i in range(16):\n"
            "    box.append([telemetry(j, pad=200) for j in range(500)])\n"
            "box.append([alarm(1)])\n"
            "os._exit(9)\n")
    quarantined = []
    for _ in range(2):
        child(code, path)
        wal = Path(f"{path}-wal").read_bytes()
        assert wal and path.stat().st_size > 4096 * 40, "no checkpoint into the main file"
        with path.open("r+b") as f:
            f.seek(4096 * 20)
            f.write(os.urandom(4096 * 20))
        with Outbox.open(path, max_bytes=BIG, hierarchy=H) as box:
            assert box.quarantined is not None
            quarantined.append(box.quarantined)
            assert Path(f"{box.quarantined}-wal").read_bytes() == wal
        path.unlink()  # start the next round from scratch
    assert quarantined[0] != quarantined[1]
    assert all(q.exists() for q in quarantined)


def test_missing_file_is_created_not_quarantined(path: Path) -> None:
    with structlog.testing.capture_logs() as logs, \
            Outbox.open(path, max_bytes=BIG, hierarchy=H) as box:
        assert box.quarantined is None and box.stats().events == 0
    assert [p.name for p in path.parent.iterdir()] == ["outbox.db"]
    assert any(e["event"] == "outbox_created" for e in logs)


def test_empty_file_is_initialised_not_quarantined(path: Path) -> None:
    path.write_bytes(b"")
    with Outbox.open(path, max_bytes=BIG, hierarchy=H) as box:
        assert box.quarantined is None
    assert [p.name for p in path.parent.iterdir()] == ["outbox.db"]


def test_locked_file_is_refused_not_quarantined(path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant 10, and 9's exception: a locked file is not corrupt."""
    monkeypatch.setattr(outbox_module, "BUSY_TIMEOUT_S", 0.1)  # the read-only check's wait
    holder = Outbox.open(path, max_bytes=BIG, hierarchy=H)
    holder.append([alarm()])
    try:
        with pytest.raises(OutboxLockedError, match="another edge-agent") as exc:
            Outbox.open(path, max_bytes=BIG, hierarchy=H, connect=quick_connect)
        assert str(path) in str(exc.value)
        assert isinstance(exc.value, OutboxError)
        assert not list(path.parent.glob("*.corrupt-*"))
    finally:
        holder.close()
    # ... and by another process.
    other = subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + "print('ready', flush=True)\ntime.sleep(30)\n",
         str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        with pytest.raises(OutboxLockedError, match="another edge-agent"):
            Outbox.open(path, max_bytes=BIG, hierarchy=H, connect=quick_connect)
    finally:
        other.kill()
        other.wait()
    with Outbox.open(path, max_bytes=BIG, hierarchy=H) as box:
        assert box.stats().events == 1
    assert not list(path.parent.glob("*.corrupt-*"))


def test_unopenable_path_raises_without_touching_anything(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="directory exist"):
        Outbox.open(tmp_path / "missing" / "outbox.db", max_bytes=BIG, hierarchy=H)
    with pytest.raises(ValueError):
        Outbox.open(tmp_path / "o.db", max_bytes=0, hierarchy=H)


# --------------------------------------------------------------------------- runtime errors


def test_disk_full_raises_and_leaves_the_file_consistent(path: Path) -> None:
    def tiny(p: Path) -> sqlite3.Connection:
        conn = default_connect(p)
        conn.execute("PRAGMA max_page_count = 40")  # a real SQLITE_FULL at 160 KiB
        return conn

    box = Outbox.open(path, max_bytes=BIG, hierarchy=H, connect=tiny)
    batch = [telemetry(i, pad=300) for i in range(50)]
    with pytest.raises(OutboxFullDiskError, match="disk full") as exc:
        for _ in range(100):
            before = box.stats()
            box.append(batch)
    assert "max_bytes" in str(exc.value) and str(path) in str(exc.value)
    assert box.stats() == before, "in-memory figures moved for a write that failed"
    assert [r.seq for r in all_rows(box)] == list(range(1, before.next_seq))
    assert box.append(batch[:1]) == [before.next_seq]  # still usable, no hole in seqs
    box.close()
    with Outbox.open(path, max_bytes=BIG, hierarchy=H) as again:
        assert again.stats().next_seq == before.next_seq + 1
        assert again.stats().events == before.events + 1
        assert [r.seq for r in all_rows(again)] == list(range(1, before.next_seq + 1))


class CorruptingConnection(sqlite3.Connection):
    """Fails inserts the way a damaged file does, to test the runtime path."""

    def executemany(self, sql: str, params: Any, /) -> sqlite3.Cursor:
        exc = sqlite3.DatabaseError("database disk image is malformed")
        exc.sqlite_errorname = "SQLITE_CORRUPT"
        raise exc


def test_corruption_seen_at_runtime_quarantines_on_next_open(path: Path) -> None:
    make_real_outbox(path, 10)
    box = Outbox.open(path, max_bytes=BIG, hierarchy=H, connect=lambda p: sqlite3.connect(
        str(p), isolation_level=None, factory=CorruptingConnection))
    with pytest.raises(OutboxError, match="corrupt"):
        box.append([telemetry()])
    box.close()
    with Outbox.open(path, max_bytes=BIG, hierarchy=H) as again:
        assert again.quarantined is not None
        assert "earlier run" in data_loss_reports(again)[0]["detail"]
    with Outbox.open(path, max_bytes=BIG, hierarchy=H) as third:
        assert third.quarantined is None  # the note was consumed


# --------------------------------------------------------------------------- model test


RET = {"t": Retention.TELEMETRY, "r": Retention.RECORD, "a": Retention.ALARM}


class OutboxModel(RuleBasedStateMachine):
    """The outbox as a dict {seq: retention} plus the set of evicted seqs not yet reported,
    on a fake clock. `reopen` closes cleanly (which emits the pending report); `crash` drops
    the connection without close()."""

    CAP = 6_000
    INTERVAL = 60.0
    MAX_RANGES = 4  # small, so that reports are also cut for their size

    def __init__(self) -> None:
        super().__init__()
        self.saved_max_ranges = outbox_module.MAX_LOSS_RANGES
        outbox_module.MAX_LOSS_RANGES = self.MAX_RANGES
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-model-"))
        self.path = self.dir / "outbox.db"
        self.clock = FakeClock()
        self.box = self.open()
        self.epoch = self.box.epoch
        self.model: dict[int, Retention] = {}
        self.acked: set[int] = set()
        self.explained: set[int] = set()  # named by an emitted data_loss event
        self.pending: set[int] = set()    # evicted, in the pending report
        self.pending_since: float | None = None
        self.next_seq = 1
        self.counter = 0

    def open(self) -> Outbox:
        return Outbox.open(self.path, max_bytes=self.CAP, hierarchy=H,
                           loss_report_interval_s=self.INTERVAL, clock=self.clock)

    def teardown(self) -> None:
        try:
            self.box.close()
        finally:
            outbox_module.MAX_LOSS_RANGES = self.saved_max_ranges
            shutil.rmtree(self.dir, ignore_errors=True)

    def settle(self, flush: bool) -> None:
        """Take in what the last write did: rows it evicted join the pending report; rows
        past the model's next_seq are the data_loss events it emitted."""
        stats = self.box.stats()
        present = {r.seq for r in all_rows(self.box)}
        gone = {s for s in self.model if s not in present}
        assert all(self.model[s] != Retention.ALARM for s in gone), "an alarm was evicted"
        for cls in (Retention.TELEMETRY, Retention.RECORD):
            of_cls = sorted(s for s, r in self.model.items() if r == cls)
            assert sorted(gone & set(of_cls)) == of_cls[:len(gone & set(of_cls))], \
                f"{cls.name} not evicted oldest first"
        if any(self.model[s] == Retention.RECORD for s in gone):
            assert all(r != Retention.TELEMETRY for s, r in self.model.items()
                       if s not in gone), "a record went while telemetry was left"
        if gone:
            note_event("evicted " + "+".join(sorted({self.model[s].name for s in gone})))
        for s in gone:
            del self.model[s]
        # Due: a flush, or a report already pending for INTERVAL. Then all is reported.
        due = flush or (self.pending_since is not None
                        and self.clock.now - self.pending_since >= self.INTERVAL)
        before = self.pending | gone
        if gone and not self.pending:
            self.pending_since = self.clock.now
        named_now: set[int] = set()
        new = list(range(self.next_seq, stats.next_seq))
        for seq in new:
            [row] = self.box.get([seq])
            assert row.type == "gateway.data_loss" and row.lane == LANE_ALARM
            data = json.loads(row.body)["data"]
            named = set(iter_ranges(data["seq_ranges"]))
            assert len(named) == data["evicted"] > 0
            assert sum(v["count"] for v in data["by_type"].values()) == data["evicted"]
            assert len(data["seq_ranges"]) <= self.MAX_RANGES
            assert named <= before and not named & named_now, "named twice or never evicted"
            named_now |= named
            self.model[seq] = Retention.ALARM
        if new:
            note_event("reported " + ("due" if due else "for size"))
        if due:
            assert named_now == before, "a due report was not emitted whole"
        elif new:  # only a report cut for its size, while evicting: it is full
            assert gone, "a report was emitted before it was due"
            assert all(len(json.loads(r.body)["data"]["seq_ranges"]) == self.MAX_RANGES
                       for r in self.box.get(new)), "a report was emitted before it was due"
        self.pending = before - named_now
        self.explained |= named_now
        if not self.pending:
            self.pending_since = None
        elif named_now:
            self.pending_since = self.clock.now  # cut for size: a new report started
        self.next_seq = stats.next_seq

    @rule(kinds=st.lists(st.sampled_from("ttra"), min_size=1, max_size=10),
          pad=st.integers(0, 600))
    def append(self, kinds: list[str], pad: int) -> None:
        self.counter += 1
        seqs = self.box.append([make(k, self.counter, pad) for k in kinds])
        assert seqs == list(range(self.next_seq, self.next_seq + len(kinds)))
        self.model.update((s, RET[k]) for s, k in zip(seqs, kinds, strict=True))
        self.next_seq += len(kinds)
        self.settle(flush=False)
        if self.box.stats().bytes > self.CAP:
            note_event("over cap, alarms only")

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.model)), unique=True))
        noise = data.draw(st.lists(st.integers(-2, self.next_seq + 5), max_size=3))
        hit = (set(chosen) | set(noise)) & set(self.model)
        assert self.box.delete(chosen + noise) == len(hit)
        for s in hit:
            del self.model[s]
        self.acked |= hit

    @rule(seconds=st.one_of(st.sampled_from([0.1, 59.9, 60.0]), st.floats(0, 90)))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def flush(self) -> None:
        had = bool(self.pending)
        note_event(f"flush, pending={had}")
        seq = self.box.flush_loss_report()
        assert (seq is not None) == had
        self.settle(flush=True)
        assert seq is None or seq == self.next_seq - 1
        assert not self.pending

    @rule()
    def reopen(self) -> None:
        self.box.close()
        self.box = self.open()
        assert self.box.epoch == self.epoch and self.box.quarantined is None
        self.settle(flush=True)  # close() emitted the report

    @rule()
    def crash(self) -> None:
        """Drop the connection without close(): committed state only, report still pending."""
        note_event(f"crash, pending={bool(self.pending)}")
        self.box._live().close()
        self.box = self.open()
        assert self.box.epoch == self.epoch and self.box.quarantined is None
        assert self.box.stats().next_seq == self.next_seq

    @invariant()
    def matches_the_model(self) -> None:
        stats = self.box.stats()
        rows = all_rows(self.box)
        assert {r.seq: r.lane for r in rows} == {
            s: LANE_ALARM if r == Retention.ALARM else LANE_NORMAL for s, r in self.model.items()}
        assert stats.events == len(rows)
        assert stats.bytes == sum(row_size(r) for r in rows)
        only_alarms = all(r == Retention.ALARM for r in self.model.values())
        assert stats.bytes <= self.CAP or only_alarms
        assert stats.next_seq == self.next_seq and stats.epoch == self.epoch
        assert stats.evicted_total == len(self.explained) + len(self.pending)
        assert stats.loss_pending == len(self.pending)
        report = pending_report(self.box)
        if self.pending:
            assert report is not None
            assert set(iter_ranges(report["seq_ranges"])) == self.pending
            assert report["seq_ranges"] == to_ranges(self.pending)
            assert len(report["seq_ranges"]) <= self.MAX_RANGES
            assert report["pending_since"] == self.pending_since
        else:
            assert report is None
        everything = set(range(1, self.next_seq))
        parts = (set(self.model), self.acked, self.explained, self.pending)
        assert everything == set().union(*parts)
        assert len(everything) == sum(len(p) for p in parts), "a seq is in two places"
        oldest = min(self.model, default=None)
        assert (stats.oldest_created is None) == (oldest is None)


OutboxModel.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_outbox_model = OutboxModel.TestCase


def test_a_pending_report_from_before_unconfirmed_was_kept_counts_all_as_unconfirmed() -> None:
    """A loss report persisted by an older agent has no `unconfirmed`: whether its rows
    were sent is not known, so none of them may be called `lost`."""
    from edge_agent.outbox._loss import parse_loss

    old = json.dumps({"evicted": 3, "seq_ranges": [[2, 4]], "pending_since": 1.0,
                      "by_type": {"smoke.reading": {"count": 3, "first_time": "t",
                                                    "last_time": "t"}}})
    loss = parse_loss(old, next_seq=10, evicted_total=3, epoch="0" * 16)
    assert loss.data()["unconfirmed"] == 3 and loss.data()["lost"] == 0
    assert json.loads(loss.to_json())["unconfirmed"] == 3


async def test_waiting_counts_no_ack_twice_while_its_delete_runs(path: Path) -> None:
    """The last ack of a backlog lands while the previous acks' delete runs on the thread:
    `waiting()` is 0 then (the uplink logs `backlog_drained` on it), not the rows being
    deleted counted again."""
    outbox = await OutboxThread.open(path, max_bytes=BIG, hierarchy=H)
    try:
        for _ in range(20):
            seqs = await outbox.append([telemetry(i) for i in range(10)])
            outbox.ack(seqs[:5])
            outbox._flush_acks()  # the write-behind delete starts now (as after ACK_FLUSH_S)
            assert outbox.waiting() == 5
            await asyncio.sleep(0)  # the delete task is on its way to the thread
            outbox.ack(seqs[5:])
            assert outbox.waiting() == 0, "rows taken for deletion were counted as waiting"
            await outbox.fetch(lane=0, after_seq=0, limit=100, max_bytes=BIG)
            assert outbox.waiting() == 0 and outbox.stats().events == 0
    finally:
        await outbox.close()
