"""When an unacknowledged batch is sent again, and how many batches may be in flight.

Pure: no clock, no I/O, no MQTT (times are passed in, the random source too), so the
uplink (`edge_agent.uplink.session`) and the city bench's simulated gateways
(`bench/_city_gateway.py`) run the same code and the bench measures the agent's policy.

Why: with one fixed ack timeout, acks that come later than it (a collector behind, a store
stalled) make every gateway resend its whole window every `ack_timeout_s`; the collectors
then spend their transactions on duplicates, the queues in front of them grow, acks come
later still, and overload collapses (docs/benchmarks.md, "Issue 11: city load": 1,325
events/s offered → 70 committed) instead of queueing. Two mechanisms, as TCP has them:

- **per-batch exponential back-off** bounds how often one batch is resent while acks do
  not come (a stalled collector): once the back-off is at its cap, one resend per
  `ack_timeout_max_s / 2` to `ack_timeout_max_s`, not one per `ack_timeout_s`;
- **a congestion window (AIMD)** bounds how much each gateway has queued in front of the
  collectors: when acks are late it halves, so the queue (and the ack latency) shrinks back
  under the ack timeout, and each gateway's events wait in its outbox and leave in fewer,
  fuller batches, which a collector commits at the same cost per payload. The back-off
  alone leaves eight one-event batches per gateway queued (measured in the same file:
  "resend back-off").

Invariants
R1. A batch's first ack timeout is `ack_timeout_s`, exactly: with a healthy collector
    nothing waits longer, and nothing is resent sooner, than with the fixed timeout.
R2. After its n-th timeout (n ≥ 1) a batch waits for its ack a time drawn uniformly from
    `[max(ack_timeout_s, c / 2), c]`, `c = min(ack_timeout_max_s, ack_timeout_s × 2ⁿ)`:
    never less than `ack_timeout_s`, never more than `ack_timeout_max_s`; the jitter keeps
    gateways that timed out together (one collector, one stall) from resending in step.
    `ack_timeout_max_s == ack_timeout_s` is the fixed timeout of before.
R3. A fresh ack (for a batch sent once, hence acked within its first timeout: no doubt
    which send it answers) resets the back-off of every batch in flight last sent before
    that batch: its count starts again, and it is resent at the latest `ack_timeout_s`
    from now (a later batch being acked first says its copy was lost, not queued).
R4. The window starts at `max_inflight_batches`. A timeout halves it (down to 1), once
    per congestion event: the timeout of a batch sent before the last cut does not cut
    it again. Each fresh ack grows it by 1 / window (one batch per window of on-time
    acks), up to `max_inflight_batches`. It limits telemetry and records only: alarm
    batches may use all `max_inflight_batches` slots, so an alarm never waits for a slot
    the window holds back.
R5. Resends on a collector's presence (session invariants 8 and 9) are not timeouts: they
    stay immediate and change neither the back-off nor the window.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from edge_agent.contract.backoff import Uniform, ceiling_s

__all__ = ["CongestionWindow", "InFlight", "ResendPolicy"]


class InFlight(Protocol):
    """What the policy reads and sets on a batch in flight."""

    sent_at: float  #: monotonic time of its last send
    timeouts: int  #: ack timeouts it had so far: its back-off
    wait_s: float  #: how long its last send waits for an ack


@dataclass(frozen=True, slots=True)
class ResendPolicy:
    """How long a batch waits for its ack (R1, R2). `uniform` is the random source."""

    ack_timeout_s: float
    ack_timeout_max_s: float
    uniform: Uniform = random.uniform

    def bounds_s(self, timeouts: int) -> tuple[float, float]:
        """The range the wait is drawn from after the batch's `timeouts`-th timeout."""
        if timeouts <= 0:
            return self.ack_timeout_s, self.ack_timeout_s
        high = max(self.ack_timeout_s,
                   ceiling_s(self.ack_timeout_s, self.ack_timeout_max_s, timeouts))
        return min(high, max(self.ack_timeout_s, high / 2)), high

    def wait_s(self, timeouts: int) -> float:
        """The ack timeout of a batch sent after `timeouts` timeouts of it."""
        low, high = self.bounds_s(timeouts)
        return low if low == high else self.uniform(low, high)

    def restart(self, batches: Iterable[InFlight], sent_before: float, now: float) -> None:
        """A fresh ack for a batch sent at `sent_before` (R3): the batches last sent before
        it start their back-off again and wait at most `ack_timeout_s` more from `now`."""
        for batch in batches:
            if batch.timeouts and batch.sent_at < sent_before:
                batch.timeouts = 0
                batch.wait_s = min(batch.wait_s, now + self.ack_timeout_s - batch.sent_at)

    def max_timeouts(self, within_s: float) -> int:
        """The most timeouts one batch can have within `within_s` s of its first send:
        every wait at its lower bound."""
        n, elapsed = 0, self.bounds_s(0)[0]
        while elapsed <= within_s:
            n += 1
            elapsed += self.bounds_s(n)[0]
        return n


class CongestionWindow:
    """How many telemetry batches may be in flight (R4): additive increase on fresh acks,
    multiplicative decrease on timeouts."""

    def __init__(self, max_batches: int) -> None:
        if max_batches < 1:
            raise ValueError(f"max_batches must be at least 1, not {max_batches}")
        self.max_batches = max_batches
        self.size = float(max_batches)
        self._cut_at = -math.inf

    @property
    def limit(self) -> int:
        """Batches of the telemetry lane that may be in flight now."""
        return max(1, int(self.size))

    def on_time(self) -> None:
        """A fresh ack: one more batch per window of them."""
        self.size = min(float(self.max_batches), self.size + 1 / self.size)

    def timed_out(self, sent_at: float, now: float) -> bool:
        """A batch last sent at `sent_at` timed out at `now`; True if that cut the window
        (a batch sent before the last cut belongs to the same congestion event)."""
        if sent_at < self._cut_at:
            return False
        self.size = max(1.0, self.size / 2)
        self._cut_at = now
        return True
