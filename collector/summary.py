"""The collector's periodic summary: one log line per interval (default a minute).

Pure bookkeeping, fed by the ingest loop after each commit: events per second, lag
(commit time minus the oldest event time of each payload: the worst and the 99th
percentile over the interval's payloads), quarantined and dropped rejections, and how
many distinct gateways were seen. `take()` returns the line's fields and starts afresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: Lags kept per interval for the percentile; beyond it only the maximum is exact.
MAX_LAGS = 100_000
#: Distinct gateways counted per interval; beyond it the count says "at least".
MAX_GATEWAYS = 100_000


@dataclass
class Summary:
    started: float
    messages: int = 0
    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    dropped: int = 0
    store_failures: int = 0
    lag_max_s: float | None = None
    lags: list[float] = field(default_factory=list)
    gateways: set[str] = field(default_factory=set)

    def add(self, *, gateway: str | None, inserted: int, duplicates: int, quarantined: int,
            dropped: int, lag_s: float | None) -> None:
        """One payload committed; `lag_s`: commit time minus its oldest event's time."""
        self.messages += 1
        self.inserted += inserted
        self.duplicates += duplicates
        self.quarantined += quarantined
        self.dropped += dropped
        if gateway is not None and len(self.gateways) < MAX_GATEWAYS:
            self.gateways.add(gateway)
        if lag_s is not None:
            self.lag_max_s = lag_s if self.lag_max_s is None else max(self.lag_max_s, lag_s)
            if len(self.lags) < MAX_LAGS:
                self.lags.append(lag_s)

    def failed(self) -> None:
        self.store_failures += 1

    def take(self, now: float) -> dict[str, Any]:
        """The summary line's fields for the interval up to `now`; resets the counts."""
        interval = max(now - self.started, 1e-9)
        line = {
            "interval_s": round(interval, 1),
            "messages": self.messages,
            "events": self.inserted,
            "events_per_s": round(self.inserted / interval, 1),
            "duplicates": self.duplicates,
            "lag_max_s": _round(self.lag_max_s),
            "lag_p99_s": _round(percentile(self.lags, 0.99)),
            "quarantined": self.quarantined,
            "dropped": self.dropped,
            "gateways_seen": len(self.gateways),
            "store_failures": self.store_failures,
        }
        fresh = Summary(now)
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
