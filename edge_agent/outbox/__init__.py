"""Durable outbox: the SQLite file where events wait until the collector acknowledges them.

Owns the outbox file and nothing else: it knows SQLite, not devices or MQTT. Imports
`edge_agent.contract` (the envelope it stores, the ack ranges) and nothing of the other
stages. Its public surface is this package (`Outbox`, `OutboxThread` and the names
below); the modules starting with `_` are private to it.

Invariants (each is checked by tests/test_outbox.py; keep them true when changing this
package):

1. Durability. `append()` is one transaction (WAL, `synchronous=FULL`): when it returns,
   the rows, their seqs, the persisted `next_seq`, any eviction with its accounting (the
   pending loss report and `evicted_total`, see 6) and any data_loss event it emitted are
   on disk together; when it raises, none of it is and the file is as before. The same
   holds for `flush_loss_report()` and the flush in `close()`.
2. Sequence. Within one epoch seqs are 1, 2, 3, ... assigned without holes and never
   reused, across restarts and crashes too: `next_seq` lives in `meta` and is written in
   the same transaction as the rows (rows are deleted after ack, so MAX(seq) cannot tell).
3. Epoch. A new random epoch (`secrets.token_hex(8)`) is made only when an outbox file is
   created: on first start, or after a corrupt file was quarantined. Never otherwise.
4. Deletion. A row leaves the file only by `delete()` or `append(acked=...)` (after the
   collector's ack) or by eviction when a write would exceed `max_bytes`. Nothing else
   deletes data. A deletion need not survive power loss (a row that comes back is sent
   again with its id and the collector drops the duplicate), so `delete()` commits
   without an fsync (`synchronous=NORMAL` for that transaction; WAL keeps the file
   consistent); `append(acked=...)` deletes in the appending transaction, at no cost.
5. Eviction order. TELEMETRY oldest first (lowest seq), then RECORD oldest first. ALARM
   rows (lane 1, including data_loss reports) are never evicted: when only alarms are
   left the cap is overshot, logged and counted (`alarms_over_cap`).
6. Accounting. Every evicted row is added, in the transaction that evicts it, to ONE
   pending loss report kept in `meta` (key `loss_report`, JSON: `evicted`, `by_type`
   {count, first_time, last_time}, `seq_ranges` merged like `wire.to_ranges`,
   `pending_since` by the outbox's `clock`); `evicted_total` (persisted) is the running sum
   of evictions. The pending report becomes one `gateway.data_loss` event (reason
   `outbox_full`, data `evicted`/`by_type`/`seq_ranges` as in event-v1) and is cleared, in
   one transaction, when
   (a) a write finds it `loss_report_interval_s` old (default 60 s), or finds the clock
       set back before `pending_since`;
   (b) an eviction would give it more than `MAX_LOSS_RANGES` seq ranges: it is emitted
       as it is and a new one starts with that eviction;
   (c) `flush_loss_report()` is called; (d) `close()` is called.
   `open()` keeps a report left pending by a crash; the next trigger emits it. Emitting
   takes room like any row: telemetry evicted to make room for the report is named in
   that same report. So an outage costs one data_loss event per interval (plus one per
   `MAX_LOSS_RANGES` ranges), not one per append, and none names more than
   `MAX_LOSS_RANGES` ranges. Every seq below `next_seq` is present, was acknowledged, is
   named in exactly one data_loss event of this epoch, or is in the pending report —
   exactly one of these; `evicted_total` is the sum of `evicted` over the epoch's
   `outbox_full` events plus `stats().loss_pending`.
7. Bytes. `bytes == SUM(size)` over the rows, `size = len(body UTF-8) + ROW_OVERHEAD`.
   After any write, `bytes <= max_bytes` unless every row left is an alarm. The pending
   report lives in `meta` and is not counted: at most `MAX_LOSS_RANGES` ranges and one
   entry per event type, a few KiB.
8. Bodies. `body` is the text the uplink sends verbatim: the event stamped with this
   outbox's epoch and the row's seq, `Event.stamped(epoch, seq).to_json()` byte for byte.
9. No crash loop on a bad file. A file that is not a usable outbox (not a database,
   failing `PRAGMA quick_check`, missing or bad meta, unknown format, or one an earlier
   run saw fail with SQLITE_CORRUPT) is moved aside with its -wal/-shm to
   `<name>.corrupt-<UTC time>` and a fresh file starts with a new epoch and a data_loss
   event (`reason: outbox_corrupt`, `quarantined_file`). The check runs on a read-only
   connection, so a bad file is moved exactly as found (a read-write connection would
   checkpoint its WAL into it on close). Files are only ever renamed, never deleted. A
   file that cannot be opened for other reasons (locked by another process, permissions,
   I/O errors) is left alone and `open()` raises `OutboxError`.
10. One writer. While open, the file is held with SQLite's exclusive lock
   (`locking_mode=EXCLUSIVE`: the WAL index lives in process memory and no other
   connection can read or write); a second process gets `OutboxLockedError`.

Threading: not thread-safe. Make every call from one thread at a time (the agent uses a
single worker thread). `stats()` is the exception: it only returns an immutable snapshot
replaced after each change, so any thread may call it.

The read-write connection is injectable (`connect=`), so tests can wrap it, inject faults
or shrink `max_page_count` to get a real SQLITE_FULL. (The read-only check at open uses its
own `mode=ro` connection.) So is the clock (`clock=`, default `time.time`): it stamps
`created`, the time of data_loss events and `pending_since`, so tests advance a fake
clock instead of sleeping. Opening runs `PRAGMA quick_check` and one `SUM(size)` over the
file: O(file size), a few tens of ms per 100k rows here, longer on SD cards.

Modules, one job each: `store` (the `Outbox` class: append, fetch, delete, stats),
`thread` (`OutboxThread`: the outbox behind one worker thread, so fsyncs never stall the
event loop), `_open` (opening, the checks of invariant 9, quarantine, the exclusive
lock), `_schema` (tables, meta and the stored row), `_body` (the stamped body), `_write`
(one write: insert, evict, emit the loss report), `_loss` (the pending loss report),
`_reserve` (room kept for alarms on a full disk), `_transaction` (BEGIN/COMMIT/ROLLBACK
on the autocommit connection) and `_errors` (the exceptions, SQLite error names). Plain
`sqlite3` throughout (no sqlite-utils: docs/dependencies.md).
"""

from edge_agent.outbox.store import (
    LANE_ALARM,
    LANE_NORMAL,
    LOSS_REPORT_INTERVAL_S,
    ROW_OVERHEAD,
    Appended,
    Outbox,
    OutboxError,
    OutboxFullDiskError,
    OutboxLockedError,
    OutboxRow,
    OutboxStats,
)
from edge_agent.outbox.thread import OutboxThread

__all__ = ["LANE_ALARM", "LANE_NORMAL", "LOSS_REPORT_INTERVAL_S", "ROW_OVERHEAD", "Appended",
           "Outbox", "OutboxError", "OutboxFullDiskError", "OutboxLockedError", "OutboxRow",
           "OutboxStats", "OutboxThread"]
