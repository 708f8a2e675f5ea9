"""When an unacknowledged batch is sent again, and how many batches may be in flight.

Pure: no clock, no I/O, no MQTT (times are passed in, the random source too), so the
uplink (`edge_agent.uplink.session`) and the city bench's simulated gateways
(`bench/_city_gateway.py`) run the same code (`Pacing`) and the bench measures the agent's
policy.

Why: with one fixed ack timeout, acks that come later than it (a collector behind, a store
stalled) make every gateway resend its whole window every `ack_timeout_s`; the collectors
then spend their transactions on duplicates, the queues in front of them grow, acks come
later still, and overload collapses (docs/benchmarks.md, "Issue 11: city load": 1,325
events/s offered → 70 committed) instead of queueing. Three mechanisms, as TCP has them:

- **per-batch exponential back-off** bounds how often one batch is resent while no ack
  comes at all (a stalled collector): once at its cap, one resend per
  `ack_timeout_max_s / 2` to `ack_timeout_max_s`, not one per `ack_timeout_s`;
- **a congestion window (AIMD)** bounds how much each gateway has queued in front of the
  collectors: when acks come later than `ack_timeout_s` it halves, so the queue (and the
  ack latency) shrinks back, and each gateway's events wait in its outbox and leave in
  fewer, fuller batches, which a collector commits at the same cost per payload;
- **the first timeout follows the measured ack latency** (RFC 6298: smoothed latency
  plus four times its deviation) when that is longer than `ack_timeout_s`: thousands of
  gateways with one batch in flight each still make a queue longer than `ack_timeout_s`
  in front of a slow collector, and a fixed first timeout would resend every batch once.
Measured in docs/benchmarks.md ("resend back-off", 3,000 gateways offering 1,500 events/s
to today's collectors): 92 events/s committed before; 413 with the back-off and the
latency-following timeout but no window; 659 with the back-off and the window but a fixed
first timeout (about one resend per batch); 1,184 with all three, no resend once adapted.

Invariants
R1. A batch's first ack timeout is `ack_timeout_s` while acks come well within it (a
    healthy collector: nothing waits longer than with the fixed timeout); else the
    smoothed ack latency plus four deviations, never more than `ack_timeout_max_s`.
    The latency of every batch is measured from its first send to the ack that completes
    it (a resent batch's ack is most often for the first copy, queued; after a loss it
    over-estimates, the safe side).
R2. After its n-th timeout (n ≥ 1) a batch waits a time drawn uniformly from
    `[max(first, c / 2), c]`, `c = min(ack_timeout_max_s, first × 2ⁿ)`, `first` the
    first timeout of R1 now: never less than `ack_timeout_s`, never more than
    `ack_timeout_max_s`; the jitter keeps gateways that timed out together (one collector,
    one stall) from resending in step. `ack_timeout_max_s == ack_timeout_s` is the fixed
    timeout of before.
R3. A fresh ack (for a batch sent once) resets the back-off of every batch in flight last
    sent before that batch: its count starts again, and it is resent at the latest one
    first timeout from now (a later batch being acked first says its copy was lost).
R4. An ack later than `ack_timeout_s`, or a timeout, halves the window (down to 1), once
    per congestion event: a batch last sent before the last cut does not cut it again.
    Each ack within `ack_timeout_s` of a batch sent once grows it by 1 / window (one batch
    per window of them), up to `max_inflight_batches`. It limits telemetry and records
    only: alarm batches may use all `max_inflight_batches` slots, so an alarm never waits
    for a slot the window holds back.
R6. Slow start (TCP's, RFC 5681 with HyStart's delay exit): the window starts at
    `SLOW_START_BATCHES`, and again at most that after every reconnect (`restart`; the
    latency estimate is kept, it measures the collectors). Below the slow-start
    threshold (`max_inflight_batches` until a cut lowers it to the halved window) each
    ack in time grows it by one batch: it doubles per round of acks. An ack in time but
    later than `SLOW_START_EXIT` × `ack_timeout_s` ends slow start there (the threshold
    drops to the window): a queue is forming, and the window then grows by R4 only.
    Why: a gateway reconnecting with a backlog used to put its whole window on the wire
    at once, before any latency sample (first timeout `ack_timeout_s`); a street of them
    (100 × 8 × 200 events) queued more in front of the collectors than they commit in
    `ack_timeout_s`, so every window was resent once (duplicates, shed payloads), the
    windows were cut and the resends backed off towards `ack_timeout_max_s`: the burst
    drained in 78 s instead of ~30 (docs/benchmarks.md, "the street burst"). Two batches
    per gateway already keep the collectors' queue full; a lone gateway on a healthy
    collector reaches its full window in three round trips (~0.1 s).
R7. An ack restarts the timer of every batch sent after the acked one that has not timed
    out yet (RFC 6298 5.3: the timer restarts on an ack of new data): it waits at least
    one first timeout (R1) from now. Such a batch is queued behind the acked one, and its
    ack comes after it; the timer set at its send, before the latency of a growing queue
    was measured, would resend it while its first copy still waits (the street burst's
    resends). A batch sent before the acked one keeps its timer (R3: its copy may be lost),
    so a lost batch is resent at most one first timeout after the ack of the last batch
    sent before it.
R5. Resends on a collector's presence (session invariants 8 and 9) are not timeouts: they
    stay immediate and change neither the back-off nor the window.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from edge_agent.contract.backoff import Uniform, ceiling_s

__all__ = ["SLOW_START_BATCHES", "SLOW_START_EXIT", "AckLatency", "CongestionWindow",
           "InFlight", "Pacing", "ResendPolicy"]

#: The telemetry window of a gateway with nothing measured yet, and after a reconnect (R6).
SLOW_START_BATCHES = 2
#: An ack later than this fraction of `ack_timeout_s` ends slow start (R6).
SLOW_START_EXIT = 0.5


@dataclass
class InFlight:
    """A batch in flight: what the policy reads and sets on it (the uplink's batches and
    the city bench's are these)."""

    seqs: set[int]  #: the seqs it carries
    sent_at: float  #: monotonic time of its last send
    attempts: int = 1  #: sends so far
    timeouts: int = 0  #: ack timeouts it had so far: its back-off
    wait_s: float = 0.0  #: how long its last send waits for an ack
    first_sent_at: float = field(init=False)  #: monotonic time of its first send

    def __post_init__(self) -> None:
        self.first_sent_at = self.sent_at


@dataclass(frozen=True, slots=True)
class ResendPolicy:
    """How long a batch waits for its ack after a first timeout of `first_s` (R2)."""

    ack_timeout_s: float
    ack_timeout_max_s: float
    uniform: Uniform = random.uniform

    def bounds_s(self, timeouts: int, first_s: float | None = None) -> tuple[float, float]:
        """The range the wait is drawn from after the batch's `timeouts`-th timeout."""
        first = self.ack_timeout_s if first_s is None else first_s
        if timeouts <= 0:
            return first, first
        high = max(first, ceiling_s(first, self.ack_timeout_max_s, timeouts))
        return min(high, max(first, high / 2)), high

    def wait_s(self, timeouts: int, first_s: float | None = None) -> float:
        """The ack timeout of a batch sent after `timeouts` timeouts of it."""
        low, high = self.bounds_s(timeouts, first_s)
        return low if low == high else self.uniform(low, high)

    def max_timeouts(self, within_s: float) -> int:
        """The most timeouts one batch can have within `within_s` s of its first send
        (every wait at its lower bound, the first timeout at `ack_timeout_s`)."""
        n, elapsed = 0, self.bounds_s(0)[0]
        while elapsed <= within_s:
            n += 1
            elapsed += self.bounds_s(n)[0]
        return n


class AckLatency:
    """The smoothed ack latency and its deviation (RFC 6298, section 2)."""

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0

    def sample(self, seconds: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = seconds, seconds / 2
            return
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - seconds)
        self.srtt = 0.875 * self.srtt + 0.125 * seconds

    def timeout_s(self, floor_s: float, cap_s: float) -> float:
        """`srtt + 4 × rttvar` within `[floor_s, cap_s]` (`floor_s` before any sample)."""
        if self.srtt is None:
            return floor_s
        return max(floor_s, min(cap_s, self.srtt + 4 * self.rttvar))


class CongestionWindow:
    """How many telemetry batches may be in flight (R4, R6): slow start up to its
    threshold, then additive increase on acks in time; multiplicative decrease on late
    ones. `initial` defaults to `max_batches` (no slow start)."""

    def __init__(self, max_batches: int, initial: int | None = None) -> None:
        if max_batches < 1:
            raise ValueError(f"max_batches must be at least 1, not {max_batches}")
        self.max_batches = max_batches
        self.size = float(max_batches if initial is None else max(1, min(initial, max_batches)))
        #: below it each ack in time adds a whole batch (slow start)
        self.threshold = float(max_batches)
        self._cut_at = -math.inf

    @property
    def limit(self) -> int:
        """Batches of the telemetry lane that may be in flight now."""
        return max(1, int(self.size))

    @property
    def slow_start(self) -> bool:
        return self.size < self.threshold

    def on_time(self) -> None:
        """An ack in time: one more batch per ack in slow start, else per window of them."""
        step = 1.0 if self.slow_start else 1 / self.size
        self.size = min(float(self.max_batches), self.size + step)

    def settle(self) -> None:
        """Acks come in time but slower: end slow start at the window it reached."""
        self.threshold = min(self.threshold, self.size)

    def restart(self, initial: int) -> None:
        """A new session: slow start again from at most `initial` (the threshold stays)."""
        self.size = min(self.size, float(max(1, initial)))

    def late(self, sent_at: float, now: float) -> bool:
        """The ack of a batch last sent at `sent_at` is late at `now`; True if that cut the
        window (a batch sent before the last cut belongs to the same congestion event)."""
        if sent_at < self._cut_at:
            return False
        self.size = max(1.0, self.size / 2)
        self.threshold = self.size
        self._cut_at = now
        return True


class Pacing:
    """The whole policy for one gateway's uplink: what its batches wait (R1–R3, R7) and how
    many telemetry batches it may have in flight (R4, R6). `aimd=False` keeps the window at
    `max_batches` (for the bench's comparison only)."""

    def __init__(self, ack_timeout_s: float, ack_timeout_max_s: float, max_batches: int, *,
                 aimd: bool = True, uniform: Uniform = random.uniform,
                 initial_batches: int = SLOW_START_BATCHES) -> None:
        self.policy = ResendPolicy(ack_timeout_s, ack_timeout_max_s, uniform)
        self.latency = AckLatency()
        self.initial_batches = initial_batches
        self.window = CongestionWindow(max_batches, initial_batches)
        self.aimd = aimd

    def restart(self) -> None:
        """A new session (a reconnect): its backlog leaves in slow start again (R6)."""
        self.window.restart(self.initial_batches)

    @property
    def limit(self) -> int:
        """Telemetry batches that may be in flight now."""
        return self.window.limit if self.aimd else self.window.max_batches

    def first_wait_s(self) -> float:
        """The first ack timeout of a batch sent now (R1)."""
        return self.latency.timeout_s(self.policy.ack_timeout_s, self.policy.ack_timeout_max_s)

    def timed_out(self, batch: InFlight, now: float) -> None:
        """No ack within the batch's timeout: back off, and the window shrinks (R2, R4)."""
        batch.timeouts += 1
        if self.aimd:
            self.window.late(batch.sent_at, now)

    def sent_again(self, batch: InFlight, now: float) -> None:
        """The batch was published again at `now` (a timeout's or a presence's resend)."""
        batch.sent_at, batch.attempts = now, batch.attempts + 1
        batch.wait_s = self.policy.wait_s(batch.timeouts, self.first_wait_s())

    def completed(self, batch: InFlight, inflight: Iterable[InFlight], now: float) -> None:
        """An ack completed `batch` at `now` (`inflight`: the batches still out)."""
        inflight = list(inflight)
        latency = now - batch.first_sent_at
        self.latency.sample(latency)
        first = self.first_wait_s()
        for other in inflight:  # R7
            if not other.timeouts and other.sent_at >= batch.sent_at:
                other.wait_s = max(other.wait_s, now + first - other.sent_at)
        fresh = batch.attempts == 1
        if fresh:  # R3
            for other in inflight:
                if other.timeouts and other.sent_at < batch.sent_at:
                    other.timeouts = 0
                    other.wait_s = min(other.wait_s, now + first - other.sent_at)
        if not self.aimd:
            return
        if fresh and latency <= self.policy.ack_timeout_s:
            if self.window.slow_start and latency > SLOW_START_EXIT * self.policy.ack_timeout_s:
                self.window.settle()  # R6: a queue is forming
            self.window.on_time()
        elif latency > self.policy.ack_timeout_s:
            self.window.late(batch.sent_at, now)
