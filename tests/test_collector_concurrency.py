"""Several collector processes on one store: concurrent first opens, out-of-order commits.

Real processes (multiprocessing, spawn) on a real file, never mocks: the store is named
by the `store_url` fixture so the same tests can run against another backend.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.store import Origin, StoreError, open_store
from collector.store.sqlite import SqliteStore
from collector.validate import check_payload
from tests.test_collector_support import batch, new_epoch, reading, topics

pytestmark = pytest.mark.slow

GATEWAY = "gw-a"
ORIGIN = Origin(f"cd/v1/371312/371312001001/{GATEWAY}/events", GATEWAY)


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    """A store URL no process has opened yet (the file does not exist)."""
    yield f"sqlite:///{tmp_path / 'new' / 'district.db'}"


def _open_at(url: str, start_at: float) -> str | None:
    """Child process: open (create) the store at `start_at`; the error text, or None."""
    while time.time() < start_at:
        pass  # spin, so every process hits the new file within a few milliseconds
    try:
        open_store(url).close()
    except Exception as exc:  # reported to the parent as text
        return f"{type(exc).__name__}: {exc}"
    return None


def _ingest_batches(url: str, payloads: list[bytes], start_at: float) -> int:
    """Child process: ingest `payloads` (batches of one stream) in the given order."""
    store = open_store(url)
    try:
        while time.time() < start_at:
            time.sleep(0.001)
        inserted = 0
        for payload in payloads:
            verdict = check_payload(payload, topics(GATEWAY))
            inserted += store.ingest(ORIGIN, verdict.accepted, verdict.rejected).inserted
        return inserted
    finally:
        store.close()


def test_many_collectors_first_opening_one_new_store_all_succeed(store_url: str) -> None:
    """24 processes create the same new store at once: none sees `database is locked`."""
    n = 24
    with mp.get_context("spawn").Pool(n) as pool:
        start_at = time.time() + 3.0  # every child imported and spinning by then
        errors = [e for e in pool.starmap(_open_at, [(store_url, start_at)] * n) if e]
    assert errors == []
    store = open_store(store_url, create=False)
    try:
        assert store.stats().events == 0
    finally:
        store.close()


def test_watermarks_right_when_two_collectors_commit_one_stream_out_of_order(
        store_url: str) -> None:
    """Two processes commit batches of one gateway's stream concurrently, interleaved and
    in reverse, with some batches sent to both (a resend after a failover): the stream's
    watermarks end exact and no gap is reported."""
    epoch, size, count = new_epoch(), 10, 60
    batches = [batch([reading(GATEWAY, epoch, s) for s in range(i * size + 1, (i + 1) * size + 1)])
               for i in range(count)]
    first = batches[0::2][::-1]                 # even batches, newest first
    second = batches[1::2] + batches[20:30]     # odd batches in order, then resends
    open_store(store_url).close()
    with mp.get_context("spawn").Pool(2) as pool:
        start_at = time.time() + 3.0
        inserted = pool.starmap(_ingest_batches, [(store_url, first, start_at),
                                                  (store_url, second, start_at)])
    last = size * count
    assert sum(inserted) == last  # every seq inserted once, the resends were duplicates
    store = open_store(store_url, create=False)
    try:
        (stream,) = store.stats().streams
        assert (stream.high_seq, stream.received, stream.contiguous_through) == (last, last, last)
        assert store.gaps() == []
    finally:
        store.close()


def test_a_store_locked_longer_than_the_busy_timeout_is_a_clear_error(tmp_path: Path) -> None:
    """Another process holding the new file locked past the timeout: StoreError naming the
    file, with a hint, after retrying (never a traceback from the CLI)."""
    path = tmp_path / "district.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as err:
            SqliteStore(path, busy_timeout_s=0.5).open()
        assert time.monotonic() - started >= 0.5  # it waited, then gave up
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert str(path) in str(err.value) and "database is locked" in str(err.value)
    assert "another process holds the file locked" in str(err.value)
