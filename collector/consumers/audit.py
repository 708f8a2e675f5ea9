"""The audit log of reads: a structlog line at once, a table row in batches.

Every read through the stream API calls `AuditLog.record`: the `consumer_read` line (who,
route, scope, events returned; never a token) is logged there and then, and the row is
queued. A writer thread inserts the queue every `flush_every_s` (1 s), or sooner once
`batch_max` rows wait, in one transaction: on SQLite (synchronous=FULL) a commit is an
fsync, ~1-5 ms on common disks, so one commit per read would cap reads at a few hundred
per second and add that to every request; batched, `record` is a list append (docs/
consumers.md has the figures). What a crash can cost: the rows of the last second, whose
log lines are already out.

Bounded: rows older than `retention_days` are deleted every `expire_every_s` (hourly);
while the store is away the queue keeps at most `max_pending` rows, the oldest go first
(counted, logged).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from collector.consumers.db import Db
from collector.text import storable
from edge_agent.contract.logs import get_logger

log = get_logger("collector.consumers")

_INSERT = "INSERT INTO consumer_audit (at, consumer, route, scope, events) VALUES (?, ?, ?, ?, ?)"
_LAST_USED = ("UPDATE consumer_tokens SET last_used_at = ? WHERE id = ? AND "
              "(last_used_at IS NULL OR last_used_at < ?)")
#: Anything shaped like a token in a route (a client that put it in the query) is masked.
_TOKENISH = re.compile(r"cdt_[A-Za-z0-9_-]*")
ROUTE_MAX, SCOPE_MAX = 300, 1000


def safe_route(route: str) -> str:
    return storable(_TOKENISH.sub("cdt_[redacted]", route), ROUTE_MAX)


class AuditLog:
    def __init__(self, db: Db, *, retention_days: int | None = 90, flush_every_s: float = 1.0,
                 batch_max: int = 500, max_pending: int = 100_000,
                 expire_every_s: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.retention_days = retention_days
        self.flush_every_s = flush_every_s
        self.batch_max = batch_max
        self.max_pending = max_pending
        self.expire_every_s = expire_every_s
        self.clock = clock
        self.dropped = 0
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time (see `flush`)
        self._rows: list[tuple[datetime, str, str, str, int]] = []
        self._last_used: dict[str, datetime] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._expired_at = float("-inf")
        self._thread = threading.Thread(target=self._run, name="consumer-audit", daemon=True)
        self._thread.start()

    def record(self, consumer: str, route: str, scope_text: str, events: int) -> None:
        route = safe_route(route)
        scope_text = storable(scope_text, SCOPE_MAX)
        log.info("consumer_read", consumer=consumer, route=route, scope=scope_text,
                 events=events, repeat_ok=True)
        at = datetime.fromtimestamp(self.clock(), UTC)
        with self._lock:
            self._rows.append((at, consumer, route, scope_text, events))
            if len(self._rows) > self.max_pending:
                cut = len(self._rows) - self.max_pending
                del self._rows[:cut]
                self.dropped += cut
            if len(self._rows) >= self.batch_max:
                self._wake.set()

    def used(self, token_id: str) -> None:
        """Remember a token's last use; written with the next batch."""
        with self._lock:
            self._last_used[token_id] = datetime.fromtimestamp(self.clock(), UTC)

    def flush(self) -> int:
        """Write what is queued now; returns the audit rows written. Once it returns, every
        row recorded before the call is written (a batch the writer thread took meanwhile
        included: flushes take turns)."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> int:
        with self._lock:
            rows, self._rows = self._rows, []
            used, self._last_used = self._last_used, {}
        try:
            if rows:
                self.db.many(_INSERT, [(self.db.ts(at), c, r, s, n) for at, c, r, s, n in rows])
            if used:
                self.db.many(_LAST_USED, [(self.db.ts(at), tid, self.db.ts(at))
                                          for tid, at in used.items()])
        except Exception as exc:
            with self._lock:  # back in front of what came meanwhile, within the bound
                self._rows[:0] = rows
                for tid, at in used.items():
                    self._last_used.setdefault(tid, at)
            log.warning("consumer_audit_write_failed", error=" ".join(str(exc).split()),
                        pending=len(self._rows),
                        hint="retried every second; rows kept up to max_pending")
            return 0
        return len(rows)

    def expire(self) -> int:
        """Delete rows older than the retention; returns how many went."""
        if self.retention_days is None:
            return 0
        cutoff = datetime.fromtimestamp(self.clock(), UTC) - timedelta(days=self.retention_days)
        with self.db.transaction() as tx:
            tx.run("DELETE FROM consumer_audit WHERE at < ?", (self.db.ts(cutoff),))
            gone = tx.rowcount()
        if gone:
            log.info("consumer_audit_expired", rows=gone, retention_days=self.retention_days)
        return gone

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            self.flush()
            if time.monotonic() - self._expired_at >= self.expire_every_s:
                self._expired_at = time.monotonic()
                try:
                    self.expire()
                except Exception as exc:
                    log.warning("consumer_audit_expire_failed",
                                error=" ".join(str(exc).split()), hint="retried within the hour")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
