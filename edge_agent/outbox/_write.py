"""The body of one write transaction.

`write()` inserts rows, evicts TELEMETRY then RECORD rows, oldest first, while the cap
is exceeded (invariants 5 and 7), adds the evictions to the pending loss report, emits
that report as a data_loss row when it is due (invariant 6 (a)-(c)) and persists the
counters. It runs inside the caller's transaction and changes nothing in memory: the
caller takes over the returned `Written` once COMMIT succeeded.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from edge_agent.contract.envelope import Hierarchy, Retention, format_time
from edge_agent.outbox._loss import Evicted, Loss, add_loss
from edge_agent.outbox._schema import INSERT, Figures, Row, data_loss_row


@dataclass(frozen=True, slots=True)
class Written:
    """What a write did, to be taken over once it is committed."""

    figures: Figures
    evicted: list[Evicted]
    #: (seq, evicted) of each data_loss event this write emitted.
    reports: list[tuple[int, int]]
    #: the write left the outbox over its cap (only alarms are left).
    over_cap: bool


@dataclass(frozen=True, slots=True)
class Limits:
    """What the outbox was opened with: its cap and when the pending report is due."""

    max_bytes: int
    loss_report_interval_s: float
    hierarchy: Hierarchy


def is_due(loss: Loss, now: float, interval: float) -> bool:
    """Trigger (a): the pending report is old enough (or the clock went back past it)."""
    return now - loss.since >= interval or now < loss.since


def write(conn: sqlite3.Connection, before: Figures, rows: list[Row], now: float,
          limits: Limits, *, flush: bool, max_ranges: int, sent_through: int = 0) -> Written:
    """Insert `rows`; evict if over the cap and add the evictions to the pending loss
    report; emit that report if due (or `flush`), or in parts of `max_ranges` ranges;
    persist counters and the report. Evicted rows at or below `sent_through` (the
    highest seq the uplink sent) count as unconfirmed, the rest as lost. Must run inside a
    transaction."""
    if rows:
        conn.executemany(INSERT, rows)
    epoch, interval = before.epoch, limits.loss_report_interval_s
    total = before.bytes + sum(r[6] for r in rows)
    count = before.events + len(rows)
    next_seq = rows[-1][0] + 1 if rows else before.next_seq
    loss = before.loss
    # A write that finds the report due reports all it evicts too: nothing stays pending.
    emit = flush or (loss is not None and is_due(loss, now, interval))
    evicted: list[Evicted] = []
    reports: list[tuple[int, int]] = []
    report: Row | None = None  # the data_loss row of `loss`, built when it is due
    while True:
        if loss is not None and report is None and (emit or is_due(loss, now, interval)):
            report = data_loss_row(limits.hierarchy, loss, epoch, next_seq, now)
        need = total + (report[6] if report is not None else 0) - limits.max_bytes
        if need <= 0:
            break
        batch: list[Evicted] = []
        freed, n = _evict_oldest(conn, need, batch)
        if n == 0:
            break  # only alarms left: the cap is overshot
        total, count = total - freed, count - n
        evicted += batch
        loss, full = add_loss(loss, batch, now, max_ranges, sent_through)
        for done in full:  # trigger (b): too many ranges for one report
            row = data_loss_row(limits.hierarchy, done, epoch, next_seq, now)
            conn.execute(INSERT, row)
            reports.append((next_seq, done.evicted))
            total, count, next_seq = total + row[6], count + 1, next_seq + 1
        report = None  # `loss` changed: rebuild
    if loss is not None and (emit or is_due(loss, now, interval)):
        if report is None:
            report = data_loss_row(limits.hierarchy, loss, epoch, next_seq, now)
        conn.execute(INSERT, report)
        reports.append((next_seq, loss.evicted))
        total, count, next_seq = total + report[6], count + 1, next_seq + 1
        loss = None
    if loss is not before.loss:
        if loss is None:
            conn.execute("DELETE FROM meta WHERE key = 'loss_report'")
        else:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('loss_report', ?)",
                         (loss.to_json(),))
    evicted_total = before.evicted_total + len(evicted)
    if evicted:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'evicted_total'",
                     (str(evicted_total),))
    if next_seq != before.next_seq:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(next_seq),))
    after = Figures(epoch, next_seq, evicted_total, count, total, loss)
    return Written(after, evicted, reports, over_cap=total > limits.max_bytes)


def _evict_oldest(conn: sqlite3.Connection, need: int,
                  evicted: list[Evicted]) -> tuple[int, int]:
    """Delete the oldest TELEMETRY, then RECORD rows until `need` bytes are freed (or
    none are left). Appends (seq, type, time) of each to `evicted`."""
    freed = n = 0
    for retention in (Retention.TELEMETRY, Retention.RECORD):
        last = None
        cur = conn.execute(
            "SELECT seq, type, size, json_extract(body, '$.time'), created FROM events"
            " WHERE retention = ? ORDER BY seq", (int(retention),))
        try:
            for seq, type_, size, observed, created in cur:
                evicted.append((seq, type_, observed if isinstance(observed, str)
                                else format_time(created)))
                freed, n, last = freed + size, n + 1, seq
                if freed >= need:
                    break
        finally:
            cur.close()
        if last is not None:  # exactly the rows read above: the oldest of this class
            conn.execute("DELETE FROM events WHERE retention = ? AND seq <= ?",
                         (int(retention), last))
        if freed >= need:
            break
    return freed, n
