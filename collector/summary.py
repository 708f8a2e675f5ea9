"""The collector's counts: running totals (`Counters`) and the periodic summary line.

Pure bookkeeping, fed by the ingest loop after each commit. The summary (one log line
per interval, default a minute) is the totals' change over the interval (events per
second, duplicates, quarantined and dropped rejections, store failures, transactions and
payloads per transaction, payloads shed by the full inbox) plus what only
the interval keeps: the lag (commit time minus the oldest event time of each payload:
the worst and the 99th percentile over the interval's payloads) and how many distinct
gateways were seen. `take()` returns the line's fields and starts afresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

#: Lags kept per interval for the percentile; beyond it only the maximum is exact.
MAX_LAGS = 100_000
#: Distinct gateways counted per interval; beyond it the count says "at least".
MAX_GATEWAYS = 100_000


@dataclass
class Counters:
    """Running totals since the collector started."""

    messages: int = 0
    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    dropped: int = 0
    conflicts: int = 0
    acks_sent: int = 0
    ack_failures: int = 0
    store_failures: int = 0
    #: store transactions committed (each a group of payloads)
    transactions: int = 0
    #: payloads not taken because the inbox was full (not acked: the edge resends)
    shed: int = 0


@dataclass
class Summary:
    started: float
    #: the totals when the interval started
    base: Counters = field(default_factory=Counters)
    lag_max_s: float | None = None
    lags: list[float] = field(default_factory=list)
    gateways: set[str] = field(default_factory=set)

    def add(self, *, gateway: str | None, lag_s: float | None) -> None:
        """One payload committed; `lag_s`: commit time minus its oldest event's time."""
        if gateway is not None and len(self.gateways) < MAX_GATEWAYS:
            self.gateways.add(gateway)
        if lag_s is not None:
            self.lag_max_s = lag_s if self.lag_max_s is None else max(self.lag_max_s, lag_s)
            if len(self.lags) < MAX_LAGS:
                self.lags.append(lag_s)

    def take(self, now: float, totals: Counters) -> dict[str, Any]:
        """The summary line's fields for the interval up to `now`; starts afresh."""
        interval = max(now - self.started, 1e-9)
        b = self.base
        inserted = totals.inserted - b.inserted
        transactions = totals.transactions - b.transactions
        line = {
            "interval_s": round(interval, 1),
            "messages": totals.messages - b.messages,
            "events": inserted,
            "events_per_s": round(inserted / interval, 1),
            "duplicates": totals.duplicates - b.duplicates,
            "lag_max_s": _round(self.lag_max_s),
            "lag_p99_s": _round(percentile(self.lags, 0.99)),
            "quarantined": totals.quarantined - b.quarantined,
            "dropped": totals.dropped - b.dropped,
            "gateways_seen": len(self.gateways),
            "store_failures": totals.store_failures - b.store_failures,
            "transactions": transactions,
            "payloads_per_transaction": round((totals.messages - b.messages) / transactions, 1)
            if transactions else None,
            "shed": totals.shed - b.shed,
        }
        fresh = Summary(now, replace(totals))
        self.__dict__.update(fresh.__dict__)
        return line


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (`q` in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
