"""Bounds on what the quarantine keeps: rate per gateway, caps per gateway and in total.

Quarantine is evidence, not a second store: a gateway sending junk must not be able to
fill the district's disk (195 KiB of tiny junk events once became 100,000 rows). So:
- the rejections of one payload that carry no ack key (not an object, no well-formed
  epoch/seq) are kept as ONE entry (`condense`), whatever their number;
- each gateway may add `rows_per_minute_per_gateway` entries a minute (a token
  bucket with that burst; `RateGate`), in this process;
- the store keeps at most `max_rows_per_gateway` / `max_bytes_per_gateway` and
  `max_rows` / `max_bytes` in total, and deletes entries older than `retention_days`.
What is not kept is counted per gateway and cause (`quarantine_dropped`, shown by
`edge-collector stats`); the edge is acked either way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from collector.model import Rejected
from collector.store.schema import RAW_CAP
from edge_agent.contract.settings import ByteSize, Strict

DropCause = Literal["rate", "gateway_cap", "total_cap", "expired"]
#: How many gateways' buckets are remembered (least recently used forgotten first).
MAX_BUCKETS = 10_000


class QuarantineLimits(Strict):
    """`quarantine:` in the collector config."""

    max_rows: int = Field(default=100_000, ge=1)
    max_bytes: ByteSize = 256 * 1024 * 1024
    max_rows_per_gateway: int = Field(default=10_000, ge=1)
    max_bytes_per_gateway: ByteSize = 32 * 1024 * 1024
    rows_per_minute_per_gateway: int = Field(default=60, ge=1)
    retention_days: float = Field(default=30, gt=0, le=3650)


def stored_size(entry: Rejected) -> int:
    """Bytes an entry's raw payload takes in the store (capped at RAW_CAP)."""
    return min(len(entry.raw), RAW_CAP)


def condense(rejected: Sequence[Rejected]) -> list[Rejected]:
    """Keep ackable rejections one by one; fold all others of the payload into one entry."""
    ackable = [r for r in rejected if r.epoch is not None and r.seq is not None]
    loose = [r for r in rejected if r.epoch is None or r.seq is None]
    if len(loose) <= 1:
        return list(rejected)
    raw = b"[" + b",".join(r.raw for r in loose) + b"]"
    folded = Rejected(f"{len(loose)} events of one payload rejected; the first: {loose[0].reason}",
                      raw[:RAW_CAP])
    return [*ackable, folded]


class RateGate:
    """Token buckets, one per gateway: `per_minute` entries a minute, bursts up to that."""

    def __init__(self, per_minute: int, max_buckets: int = MAX_BUCKETS) -> None:
        self.capacity = float(per_minute)
        self.per_second = per_minute / 60.0
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, gateway: str, wanted: int, now: float) -> int:
        """How many of `wanted` entries `gateway` may add at monotonic time `now`."""
        tokens, then = self._buckets.pop(gateway, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.per_second)
        granted = min(wanted, int(tokens))
        self._buckets[gateway] = (tokens - granted, now)
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return granted
