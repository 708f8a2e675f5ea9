"""PostgreSQL store: the same contract as the SQLite one, for several collectors at once.

Group commit (`_group`): the payloads waiting are ONE transaction and ONE `_insert_events`
call; a deadlock, a serialization failure or a key violation runs the whole group again.

A group is one transaction, committed before `ingest_many` returns (the acks follow
the COMMIT). Events are stored compact in `event_rows` (migration 0002; `events` is a view
with the public columns): the id as a uuid (`pg_keys`), the hierarchy as a `places` id,
the epoch as a bigint, `data` as JSON text. `event_rows` is partitioned by day on the id
(the ULID's mint time), so `PRIMARY KEY (id)` makes an id unique across partitions,
whatever `time` a resend carries. A group looks its ids up (`id = ANY`, pruned to the
partitions of its id range), then COPYs only the new rows (measured faster than
`INSERT … ON CONFLICT`: docs/benchmarks.md); should another collector commit one of those
ids in between, the COPY waits for it and fails on the key, and the group's transaction
is run again (`_RETRY`): it then sees a duplicate. Watermarks: the transaction takes
`pg_advisory_xact_lock` on each of its streams (sorted: no deadlock) before it reads the
stream row and the seqs already stored, so two collectors committing batches of one
stream are serialised on that stream only.

The schema is not created here: `edge-collector migrate` applies `migrations/pg/`, and
`open()` refuses an older schema. A background thread (`pg_partitions`) creates the days
ahead and drops whole partitions past `retention_days`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from collector.model import EVENT_COLUMNS, EventRow, Rejected
from collector.quarantine import DropCause, QuarantineLimits, RateGate, condense, stored_size
from collector.store._group import GroupCommit
from collector.store._rows import conflict_entry, content_hash, one_line
from collector.store.base import (
    DroppedCount,
    Gap,
    IngestResult,
    Origin,
    Payload,
    QuarantineEntry,
    StoreError,
    StoreStats,
    StreamInfo,
)
from collector.store.intervals import split_missing
from collector.store.pg_keys import epoch_int, epoch_text, ulid_uuid, uuid_ulid
from collector.store.pg_migrate import current_version, latest_version, missing_versions
from collector.store.pg_partitions import PartitionKeeper
from collector.store.schema import RAW_CAP
from collector.store.url import safe_postgres_url
from collector.text import storable
from edge_agent.contract.envelope import format_time, parse_time
from edge_agent.contract.logs import get_logger

log = get_logger("collector.store")
# The pool's own reconnect warnings repeat once per attempt while the server is away; the
# store reports failed payloads itself (and ingest retries them), so only errors pass.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

Conn = psycopg.Connection[Any]
Cur = psycopg.Cursor[Any]
StreamKey = tuple[str, str]
#: (district, street, community, gateway)
Place = tuple[str, str, str, str]

_COPY_EVENTS = (b"COPY event_rows (id, time, received_at, epoch, seq, place, type, device, "
                b"severity, data) FROM STDIN")
_STORED_IDS = (b"SELECT id FROM event_rows WHERE id = ANY(%s) AND id BETWEEN %s AND %s")
_CONTENT_COLUMNS = tuple(c for c in EVENT_COLUMNS if c != "received_at")
#: The stored content of some ids, in `_CONTENT_COLUMNS` order (the id as its uuid).
_STORED_CONTENT = (
    b"SELECT e.id, e.type, '/' || p.district || '/' || p.street || '/' || p.community || '/' "
    b"|| p.gateway || '/' || e.device, p.district, p.street, p.community, p.gateway, e.device, "
    b"e.time, e.epoch, e.seq, e.severity, e.data FROM event_rows e "
    b"JOIN places p ON p.id = e.place WHERE e.id = ANY(%s)")
_PLACES = (b"SELECT id, district, street, community, gateway FROM places "
           b"WHERE gateway = ANY(%s)")
_NEW_PLACE = (b"INSERT INTO places (district, street, community, gateway) VALUES (%s, %s, %s, %s) "
              b"ON CONFLICT DO NOTHING RETURNING id")
#: The rows of one stream: `place` is any of its gateway's places.
_STREAM_ROWS = "place IN (SELECT id FROM places WHERE gateway = %s) AND epoch = %s"
#: One statement per group, not per stream: with thousands of gateways a group holds
#: hundreds of streams of one event each, and a round trip per stream was most of its time.
#: The keys arrive sorted; a FunctionScan yields them in array order (`ORDER BY n` says so),
#: so two collectors take the locks of shared streams in one order (no deadlock).
_LOCK_STREAMS = (b"SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
                 b"FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n")
_STREAM_ROWS_OF = (b"SELECT s.gateway, s.epoch, s.first_seen, s.high_seq, s.received, "
                   b"s.contiguous_through FROM streams s JOIN unnest(%s::text[], %s::text[]) "
                   b"AS u(g, e) ON s.gateway = u.g AND s.epoch = u.e")
_UPSERT_STREAMS = b"""
INSERT INTO streams (gateway, epoch, first_seen, last_seen, high_seq, received, contiguous_through)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[],
                     %s::bigint[])
ON CONFLICT (gateway, epoch) DO UPDATE SET last_seen = excluded.last_seen,
  high_seq = excluded.high_seq, received = excluded.received,
  contiguous_through = excluded.contiguous_through
"""
_INSERT_QUARANTINE = """
INSERT INTO quarantine (received_at, topic, gateway_from_topic, reason, raw, raw_size, event_id)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""
_MISSING = """
SELECT prev + 1, seq - 1 FROM (
  SELECT seq, LAG(seq, 1, %s::bigint) OVER (ORDER BY seq) AS prev
  FROM (SELECT DISTINCT seq FROM event_rows WHERE """ + _STREAM_ROWS + """ AND seq > %s) s
) w WHERE seq > prev + 1
"""
_USAGE = "SELECT COUNT(*), COALESCE(SUM(LEAST(raw_size, %s)), 0)::bigint FROM quarantine"
_COUNT_DROPPED = """
INSERT INTO quarantine_dropped (gateway, cause, rows, bytes, first_at, last_at)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (gateway, cause) DO UPDATE SET rows = quarantine_dropped.rows + excluded.rows,
  bytes = quarantine_dropped.bytes + excluded.bytes, last_at = excluded.last_at
"""
#: Errors an event's values cause (a NUL character, a time PostgreSQL cannot hold): that
#: event is refused, the rest stored. Anything else (server gone, disk full) fails the
#: payload unacked.
_EVENT_FAULTS = (ValueError, OverflowError, psycopg.DataError, psycopg.errors.CheckViolation,
                 psycopg.errors.NotNullViolation)
#: Lock conflicts between collectors, and an id another collector committed between our
#: look-up and our COPY: the group's transaction is run again.
_RETRY = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
          psycopg.errors.UniqueViolation)
_REASON_MAX, _TOPIC_MAX, _ID_MAX = 2000, 300, 64


class PostgresStore(GroupCommit[Cur]):
    _event_faults = _EVENT_FAULTS

    def __init__(self, dsn: str, *, create: bool = True, retention_days: int | None = None,
                 clock: Callable[[], float] = time.time,
                 quarantine: QuarantineLimits | None = None,
                 maintain_every_s: float = 3600.0, pool_size: int = 2,
                 wait_connection_s: float = 10.0) -> None:
        self.dsn = dsn
        self._create = create
        self._clock = clock
        self.limits = quarantine or QuarantineLimits()
        self._rate = RateGate(self.limits.rows_per_minute_per_gateway)
        self._expired_at = float("-inf")
        self._pool: ConnectionPool[Conn] | None = None
        self._pool_size = pool_size
        #: how long a payload waits for a connection while the server is away, then fails
        self._wait_connection_s = wait_connection_s
        self.keeper = PartitionKeeper(dsn, retention_days=retention_days, clock=clock)
        self._maintain_every_s = maintain_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        try:  # first one plain connection: a wrong URL fails here, before any pool thread
            with psycopg.connect(self.dsn, connect_timeout=10) as conn:
                have, need = current_version(conn), latest_version()
                missing = missing_versions(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open store {self.describe()}: {one_line(exc)} (hint: is the "
                             "server up, and do the host, port, user and database in the "
                             "store URL exist?)") from None
        if missing and have <= need:
            raise StoreError(f"the PostgreSQL store has schema version {have}, this collector "
                             f"needs {need} (missing {', '.join(missing)}): run "
                             "`edge-collector migrate --store URL` first")
        if have > need:
            raise StoreError(f"the PostgreSQL store has schema version {have}, newer than this "
                             f"collector knows ({need}): upgrade the collector")
        pool: ConnectionPool[Conn] = ConnectionPool(
            self.dsn, min_size=1, max_size=self._pool_size, open=False, name="collector-store",
            check=ConnectionPool.check_connection, kwargs={"connect_timeout": 10},
            timeout=self._wait_connection_s, reconnect_timeout=0)
        try:
            pool.open(wait=True, timeout=15)
        except PoolTimeout as exc:
            pool.close()
            raise StoreError(f"cannot open store {self.describe()}: {one_line(exc)}") from None
        self._pool = pool
        if self._create:  # a running collector (not an inspection command) keeps the store
            self.keeper.run_once()
            self.expire_quarantine()
            self._thread = threading.Thread(target=self._maintain, name="pg-partitions",
                                            daemon=True)
            self._thread.start()

    def _maintain(self) -> None:
        while not self._stop.wait(self._maintain_every_s):
            try:
                self.keeper.run_once()
            except Exception as exc:  # retried at the next round; ingest goes on
                log.warning("partition_maintenance_failed", error=one_line(exc),
                            hint="retried within the hour; check the PostgreSQL log")

    def describe(self) -> str:
        return safe_postgres_url(self.dsn)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @property
    def pool(self) -> ConnectionPool[Conn]:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    # ------------------------------------------------------------------ writes

    def ingest_many(self, items: Sequence[Payload]) -> list[IngestResult]:
        if not items:
            return []
        now = self._clock()
        for attempt in range(3):
            try:
                return self._commit_group(items, now)
            except _RETRY as exc:
                if attempt == 2:
                    raise
                log.info("ingest_retried", payloads=len(items),
                         gateway=items[0].origin.gateway, error=one_line(exc))
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Cur]:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    def _savepoint(self, cur: Cur) -> contextlib.AbstractContextManager[psycopg.Transaction]:
        return cur.connection.transaction()

    def _insert_events(self, cur: Cur, rows: Sequence[EventRow],
                       now: str) -> tuple[list[EventRow], list[Rejected]]:
        if not rows:
            return [], []
        groups: dict[StreamKey, list[EventRow]] = defaultdict(list)
        for row in rows:
            groups[(row.gateway, row.epoch)].append(row)
        keys = sorted(groups)  # two collectors lock shared streams in the same order
        cur.execute(_LOCK_STREAMS, ([f"{g}\x1f{e}" for g, e in keys],))
        streams = _stream_rows(cur, keys)
        # Seqs above the stream's high_seq cannot be stored yet: only older ones are looked up.
        before = {key: _existing_seqs(cur, key, [r.seq for r in groups[key]
                                                 if r.seq <= streams[key][1]])
                  for key in keys}
        ids = {row.id: ulid_uuid(row.id) for row in rows}
        stored = _stored_ids(cur, list(ids.values()))
        inserted: list[EventRow] = []
        others: list[EventRow] = []
        for row in rows:
            if ids[row.id] in stored:
                others.append(row)
            else:
                stored.add(ids[row.id])  # a second copy in the same payload is a resend
                inserted.append(row)
        if inserted:  # new ids only: COPY needs no conflict handling
            places = _place_ids(cur, {_place(r) for r in inserted})
            with cur.copy(_COPY_EVENTS) as copy:
                # in id order: two collectors take the key locks in the same order (no
                # deadlock), and the primary key is appended to
                for row in sorted(inserted, key=lambda r: r.id):
                    copy.write_row((ids[row.id], row.time, now, epoch_int(row.epoch), row.seq,
                                    places[_place(row)], row.type, row.device, row.severity,
                                    row.data))
        conflicts = _conflicts(cur, others) if others else []
        new_by_stream: dict[StreamKey, set[int]] = defaultdict(set)
        for row in inserted:
            new_by_stream[(row.gateway, row.epoch)].add(row.seq)
            if row.type == "gateway.data_loss":
                _record_explained(cur, row)
        fresh = {key: seqs - before[key] for key, seqs in new_by_stream.items()}
        _advance_streams(cur, {key: _advanced(cur, key, streams[key], seqs, now)
                               for key, seqs in fresh.items() if seqs}, now)
        return inserted, conflicts

    def _insert_quarantine(self, cur: Cur, origin: Origin, rejected: Sequence[Rejected],
                           now: float) -> tuple[int, int]:
        """Write what the bounds allow; returns (entries written, rejections dropped)."""
        if not rejected:
            return 0, 0
        stamp = format_time(now)
        gateway = origin.gateway or ""
        entries = condense(rejected)
        allowed = self._rate.take(gateway, len(entries), now)
        drops: dict[DropCause, list[int]] = defaultdict(lambda: [0, 0])
        for entry in entries[allowed:]:
            drops["rate"][0] += 1
            drops["rate"][1] += len(entry.raw)
        lim = self.limits
        gw_rows, gw_bytes = _one(cur, _USAGE + " WHERE gateway_from_topic IS NOT DISTINCT FROM %s",
                                 (RAW_CAP, origin.gateway))
        all_rows, all_bytes = _one(cur, _USAGE, (RAW_CAP,))
        keep: list[Rejected] = []
        for entry in entries[:allowed]:
            size = stored_size(entry)
            cause: DropCause | None = None
            if gw_rows >= lim.max_rows_per_gateway or gw_bytes + size > lim.max_bytes_per_gateway:
                cause = "gateway_cap"
            elif all_rows >= lim.max_rows or all_bytes + size > lim.max_bytes:
                cause = "total_cap"
            if cause is not None:
                drops[cause][0] += 1
                drops[cause][1] += len(entry.raw)
                continue
            keep.append(entry)
            gw_rows, gw_bytes = gw_rows + 1, gw_bytes + size
            all_rows, all_bytes = all_rows + 1, all_bytes + size
        topic = _text(storable(origin.topic, _TOPIC_MAX))
        cur.executemany(_INSERT_QUARANTINE, [
            (stamp, topic, _opt(origin.gateway), _text(storable(r.reason, _REASON_MAX)),
             r.raw[:RAW_CAP], len(r.raw),
             _text(storable(r.event_id, _ID_MAX)) if r.event_id is not None else None)
            for r in keep
        ])
        for cause, (n, size) in drops.items():
            cur.execute(_COUNT_DROPPED, (_text(gateway), cause, n, size, stamp, stamp))
        return len(keep), sum(n for n, _ in drops.values())

    def expire_quarantine(self) -> int:
        now = self._clock()
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            return self._expire(cur, now)

    def _expire(self, cur: Cur, now: float) -> int:
        self._expired_at = now
        cutoff = format_time(now - self.limits.retention_days * 86400)
        stamp = format_time(now)
        by_gateway = cur.execute(
            "SELECT COALESCE(gateway_from_topic, ''), COUNT(*), SUM(raw_size)::bigint "
            "FROM quarantine WHERE received_at < %s GROUP BY 1", (cutoff,)).fetchall()
        if not by_gateway:
            return 0
        cur.execute("DELETE FROM quarantine WHERE received_at < %s", (cutoff,))
        for gateway, n, size in by_gateway:
            cur.execute(_COUNT_DROPPED, (gateway, "expired", n, size, stamp, stamp))
        return sum(int(n) for _, n, _ in by_gateway)

    # ------------------------------------------------------------------ reads

    def gaps(self, gateway: str | None = None) -> list[Gap]:
        sql = ("SELECT gateway, epoch, contiguous_through FROM streams "
               "WHERE contiguous_through < high_seq")
        args: tuple[Any, ...] = ()
        if gateway is not None:
            sql, args = sql + " AND gateway = %s", (gateway,)
        out: list[Gap] = []
        with self.pool.connection() as conn:
            for gw, epoch, contiguous in conn.execute((sql + " ORDER BY gateway, epoch").encode(),
                                                      args).fetchall():
                missing = conn.execute(_MISSING, (contiguous, gw, epoch_int(epoch),
                                                  contiguous)).fetchall()
                explained = conn.execute(
                    "SELECT from_seq, to_seq, reason FROM explained_gaps "
                    "WHERE gateway = %s AND epoch = %s", (gw, epoch)).fetchall()
                out.extend(Gap(gw, epoch, lo, hi, ok, reason)
                           for lo, hi, ok, reason in split_missing(missing, explained))
        return out

    def quarantined(self, limit: int = 50) -> list[QuarantineEntry]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, received_at, topic, gateway_from_topic, reason, raw, raw_size, "
                "event_id FROM quarantine ORDER BY id DESC LIMIT %s", (limit,)).fetchall()
        return [QuarantineEntry(i, at, topic, gw, reason, bytes(raw), size, ev)
                for i, at, topic, gw, reason, raw, size, ev in rows]

    def stats(self) -> StoreStats:
        with self.pool.connection() as c:
            streams = [StreamInfo(*row) for row in c.execute(
                "SELECT gateway, epoch, first_seen, last_seen, high_seq, received, "
                "contiguous_through FROM streams ORDER BY gateway, first_seen").fetchall()]
            quarantined, quarantine_bytes = _one(
                c.cursor(), "SELECT COUNT(*), COALESCE(SUM(raw_size), 0)::bigint "
                "FROM quarantine", ())
            dropped = [DroppedCount(*row) for row in c.execute(
                "SELECT gateway, cause, rows, bytes, last_at FROM quarantine_dropped "
                "ORDER BY gateway, cause").fetchall()]
            events, last = _one(c.cursor(), "SELECT COUNT(*), MAX(received_at) FROM event_rows",
                               ())
        return StoreStats(
            events=events, quarantined=quarantined,
            gateways=len({s.gateway for s in streams}),
            last_received_at=format_time(last.timestamp()) if last is not None else None,
            streams=streams, quarantine_bytes=quarantine_bytes, dropped=dropped)


# ---------------------------------------------------------------------- helpers


def _one(cur: Cur, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    row = cur.execute(sql.encode(), args).fetchone()
    assert row is not None
    return tuple(int(v) if isinstance(v, int) else v for v in row)


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL: quarantine rows keep it visible as \\x00."""
    return value.replace("\x00", "\\x00")


def _opt(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _place(row: EventRow) -> Place:
    return (row.district, row.street, row.community, row.gateway)


def _place_ids(cur: Cur, wanted: set[Place]) -> dict[Place, int]:
    """The `places` id of each place, the missing ones inserted (in this transaction)."""
    found = {tuple(r[1:]): int(r[0]) for r in cur.execute(
        _PLACES, (sorted({p[3] for p in wanted}),)).fetchall()}
    for place in sorted(wanted - found.keys()):
        row = cur.execute(_NEW_PLACE, place).fetchone()
        if row is None:  # another collector committed it meanwhile: a new statement sees it
            row = cur.execute(b"SELECT id FROM places WHERE district = %s AND street = %s "
                              b"AND community = %s AND gateway = %s", place).fetchone()
            assert row is not None
        found[place] = int(row[0])
    return {p: found[p] for p in wanted}


def _stored_ids(cur: Cur, ids: list[UUID]) -> set[UUID]:
    """Those of `ids` already stored (the range bounds prune to their days' partitions)."""
    cur.execute(_STORED_IDS, (ids, min(ids), max(ids)))
    return {i for (i,) in cur.fetchall()}


def _existing_seqs(cur: Cur, key: StreamKey, seqs: list[int]) -> set[int]:
    if not seqs:
        return set()
    cur.execute(("SELECT seq FROM event_rows WHERE " + _STREAM_ROWS + " AND seq = ANY(%s)")
                .encode(), (key[0], epoch_int(key[1]), seqs))
    return {int(s) for (s,) in cur.fetchall()}


def _conflicts(cur: Cur, rows: Sequence[EventRow]) -> list[Rejected]:
    """Rows whose id is stored: those with other content are conflicts."""
    cur.execute(_STORED_CONTENT, ([ulid_uuid(r.id) for r in rows],))
    stored = {uuid_ulid(r[0]): (uuid_ulid(r[0]), *r[1:9], epoch_text(r[9]), *r[10:])
              for r in cur.fetchall()}
    out: list[Rejected] = []
    for row in rows:
        have = stored.get(row.id)
        if have is None:
            continue  # its partition went with the retention: an old resend, a duplicate
        received = tuple(v for c, v in zip(EVENT_COLUMNS, row.values(""), strict=True)
                         if c != "received_at")
        if not _same(have, received):
            out.append(conflict_entry(row, content_hash(have), content_hash(received)))
    return out


def _same(stored: Sequence[Any], received: Sequence[Any]) -> bool:
    for col, a, b in zip(_CONTENT_COLUMNS, stored, received, strict=True):
        if col == "time":
            if a != parse_time(str(b)):
                return False
        elif col == "data":
            if json.loads(a) != json.loads(b):
                return False
        elif a != b:
            return False
    return True


#: A stream's watermark row: (first_seen, high_seq, received, contiguous_through).
Watermark = tuple[str | None, int, int, int]


def _stream_rows(cur: Cur, keys: Sequence[StreamKey]) -> dict[StreamKey, Watermark]:
    """The watermark row of each stream (zeros for a new one); read under their locks."""
    cur.execute(_STREAM_ROWS_OF, ([k[0] for k in keys], [k[1] for k in keys]))
    found = {(r[0], r[1]): (r[2], int(r[3]), int(r[4]), int(r[5])) for r in cur.fetchall()}
    return {key: found.get(key, (None, 0, 0, 0)) for key in keys}


def _advanced(cur: Cur, key: StreamKey, stream: Watermark, new_seqs: set[int],
              now: str) -> Watermark:
    """The watermark with newly seen seqs folded in (its advisory lock is held)."""
    first_seen, high, received, contiguous = stream
    high = max(high, max(new_seqs))
    received += len(new_seqs)
    contiguous = high if received == high else _contiguous_from(cur, key, contiguous)
    return (first_seen or now, high, received, contiguous)


def _advance_streams(cur: Cur, rows: dict[StreamKey, Watermark], now: str) -> None:
    """Write the advanced watermarks, every stream in one statement."""
    if not rows:
        return
    keys = list(rows)
    cur.execute(_UPSERT_STREAMS, (
        [k[0] for k in keys], [k[1] for k in keys], [rows[k][0] for k in keys],
        [now] * len(keys), [rows[k][1] for k in keys], [rows[k][2] for k in keys],
        [rows[k][3] for k in keys]))


def _contiguous_from(cur: Cur, key: StreamKey, through: int, page: int = 1000) -> int:
    while True:
        seqs = cur.execute(("SELECT seq FROM event_rows WHERE " + _STREAM_ROWS
                            + " AND seq > %s ORDER BY seq LIMIT %s").encode(),
                           (key[0], epoch_int(key[1]), through, page)).fetchall()
        for (seq,) in seqs:
            if seq == through + 1:
                through = seq
            elif seq > through + 1:
                return int(through)
        if len(seqs) < page:
            return int(through)


def _record_explained(cur: Cur, row: EventRow) -> None:
    data = json.loads(row.data)
    reason = data.get("reason")
    cur.executemany(
        "INSERT INTO explained_gaps (gateway, epoch, from_seq, to_seq, reason, event_id) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        [(row.gateway, row.epoch, lo, hi, reason, row.id)
         for lo, hi in data.get("seq_ranges") or [] if lo <= hi],
    )
