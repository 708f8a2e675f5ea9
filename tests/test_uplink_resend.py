"""The uplink's resend policy, pure (`edge_agent.uplink.resend`): the back-off schedule, its
cap and jitter bounds, the first timeout following the ack latency, the reset on a fresh
ack, and the congestion window (AIMD, slow start)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edge_agent.config.models import ACK_TIMEOUT_MAX_S, UplinkConfig
from edge_agent.uplink.resend import (
    SLOW_START_BATCHES,
    AckLatency,
    CongestionWindow,
    Pacing,
    ResendPolicy,
)


def low(a: float, b: float) -> float:
    return a


def high(a: float, b: float) -> float:
    return b


@dataclass
class Sent:
    sent_at: float
    timeouts: int = 0
    wait_s: float = 5.0
    attempts: int = 1
    first_sent_at: float = 0.0


def test_the_first_timeout_is_ack_timeout_s_then_it_doubles_with_jitter_up_to_the_cap() -> None:
    policy = ResendPolicy(5.0, 30.0)
    assert [policy.bounds_s(n) for n in range(6)] == [
        (5.0, 5.0), (5.0, 10.0), (10.0, 20.0), (15.0, 30.0), (15.0, 30.0), (15.0, 30.0)]
    assert [ResendPolicy(5.0, 30.0, high).wait_s(n) for n in range(5)] == [5, 10, 20, 30, 30]
    assert [ResendPolicy(5.0, 30.0, low).wait_s(n) for n in range(5)] == [5, 5, 10, 15, 15]
    for n in range(40):  # the real random source stays within the bounds, never past the cap
        lo, hi = policy.bounds_s(n)
        assert 5.0 <= lo <= policy.wait_s(n) <= hi <= 30.0


def test_a_cap_equal_to_the_timeout_is_the_fixed_timeout_of_before() -> None:
    policy = ResendPolicy(5.0, 5.0)
    assert {policy.wait_s(n) for n in range(10)} == {5.0}
    assert policy.max_timeouts(60.0) == 12  # at 5, 10, ..., 60 s
    # a cap below twice the timeout: the waits stay within [ack_timeout_s, cap]
    assert ResendPolicy(5.0, 8.0).bounds_s(3) == (5.0, 8.0)


def test_max_timeouts_is_the_schedule_at_its_lower_bounds() -> None:
    policy = ResendPolicy(1.0, 8.0)  # lower bounds 1, 1, 2, 4, 4, 4 ...: at 1, 2, 4, 8, 12 s
    assert [policy.max_timeouts(t) for t in (0.5, 1.0, 1.9, 2.0, 7.9, 8.0, 12.0)] == [
        0, 1, 1, 2, 3, 4, 5]


def test_later_timeouts_back_off_from_the_first_one_in_force() -> None:
    policy = ResendPolicy(5.0, 30.0)
    assert [policy.bounds_s(n, first_s=8.0) for n in range(4)] == [
        (8.0, 8.0), (8.0, 16.0), (15.0, 30.0), (15.0, 30.0)]


def test_the_first_timeout_follows_the_ack_latency_above_ack_timeout_s_only() -> None:
    pacing = Pacing(5.0, 30.0, 8)
    assert pacing.first_wait_s() == 5.0  # nothing measured yet
    for _ in range(50):  # a healthy collector: acks in 30 ms
        pacing.completed(Sent(sent_at=0.0), [], now=0.03)
    assert pacing.first_wait_s() == 5.0  # exactly ack_timeout_s (R1)
    for _ in range(50):  # acks 7 s late, steadily: wait a little longer than that
        pacing.completed(Sent(sent_at=0.0), [], now=7.0)
    assert 7.0 < pacing.first_wait_s() < 8.0
    for _ in range(50):
        pacing.completed(Sent(sent_at=0.0), [], now=100.0)
    assert pacing.first_wait_s() == 30.0  # never beyond the cap
    latency = AckLatency()
    latency.sample(2.0)  # RFC 6298: the first sample sets srtt, and rttvar to half of it
    assert (latency.srtt, latency.rttvar, latency.timeout_s(1.0, 60.0)) == (2.0, 1.0, 6.0)


def test_a_fresh_ack_restarts_the_back_off_of_the_batches_sent_before_it() -> None:
    pacing = Pacing(5.0, 30.0, 8)
    old = Sent(sent_at=100.0, timeouts=3, wait_s=30.0)  # due at 130
    soon = Sent(sent_at=100.0, timeouts=2, wait_s=8.0)  # due at 108: not pushed later
    newer = Sent(sent_at=110.0, timeouts=1, wait_s=10.0)  # sent after the acked batch
    acked = Sent(sent_at=105.0, first_sent_at=105.0)
    pacing.completed(acked, [old, soon, newer], now=105.5)
    assert (old.timeouts, old.wait_s) == (0, 10.5)  # due at 110.5 = now + first timeout
    assert (soon.timeouts, soon.wait_s) == (0, 8.0)
    assert (newer.timeouts, newer.wait_s) == (1, 10.0)
    resent = Sent(sent_at=106.0, first_sent_at=101.0, attempts=2)  # not fresh: no reset
    pacing.completed(resent, [newer], now=106.1)
    assert newer.timeouts == 1


def test_the_window_halves_once_per_congestion_event_and_grows_back_by_one_per_window() -> None:
    w = CongestionWindow(8)
    assert w.limit == 8
    assert w.late(sent_at=10.0, now=15.0) and w.limit == 4
    # the rest of that window timing out is the same event
    assert not w.late(sent_at=11.0, now=16.0) and w.limit == 4
    assert w.late(sent_at=15.5, now=21.0) and w.limit == 2
    assert w.late(sent_at=22.0, now=27.0) and w.limit == 1
    assert w.late(sent_at=28.0, now=33.0) and w.limit == 1  # never below one
    acks = 0
    while w.limit < 8:
        w.on_time()
        acks += 1
    assert 25 <= acks <= 40  # 1 + 2 + ... + 7 = 28 windows' worth of on-time acks
    for _ in range(100):
        w.on_time()
    assert w.size == 8.0  # never above max_inflight_batches
    with pytest.raises(ValueError, match="at least 1"):
        CongestionWindow(0)


def test_the_cap_setting_defaults_to_30_s_or_the_ack_timeout_if_longer() -> None:
    assert ACK_TIMEOUT_MAX_S == 30.0
    assert UplinkConfig(broker="mqtt://127.0.0.1:1").resend_cap_s == 30.0
    assert UplinkConfig(broker="mqtt://127.0.0.1:1", ack_timeout_s=120).resend_cap_s == 120
    assert UplinkConfig(broker="mqtt://127.0.0.1:1", ack_timeout_s=2,
                        ack_timeout_max_s=2).resend_cap_s == 2


def test_the_pacing_window_shrinks_on_late_acks_and_timeouts_and_grows_on_acks_in_time() -> None:
    pacing = Pacing(5.0, 30.0, 8, initial_batches=8)  # a full window (slow start: below)
    pacing.completed(Sent(sent_at=0.0), [], now=6.0)  # acked, but later than ack_timeout_s
    assert pacing.limit == 4
    pacing.timed_out(Sent(sent_at=7.0), now=12.0)
    assert pacing.limit == 2
    for _ in range(3):  # 2 + 1/2 + 1/2.5 + 1/2.9
        pacing.completed(Sent(sent_at=20.0, first_sent_at=20.0), [], now=20.1)
    assert pacing.limit == 3
    batch = Sent(sent_at=30.0, first_sent_at=30.0)
    pacing.timed_out(batch, now=35.0)
    pacing.sent_again(batch, now=35.0)
    assert (batch.timeouts, batch.attempts, batch.sent_at) == (1, 2, 35.0)
    first = pacing.first_wait_s()  # above 5 s: the late ack above still weighs
    assert 5.0 < first <= batch.wait_s <= min(30.0, 2 * first)
    pacing.completed(batch, [], now=35.1)  # acked after a resend: the window does not grow
    assert pacing.limit == 1
    fixed = Pacing(5.0, 30.0, 8, aimd=False)  # the bench's comparison: no window
    fixed.timed_out(Sent(sent_at=0.0), now=5.0)
    assert fixed.limit == 8


def acked_in(pacing: Pacing, seconds: float, n: int = 1, at: float = 0.0) -> None:
    """`n` batches sent once at `at`, each acked `seconds` later."""
    for _ in range(n):
        pacing.completed(Sent(sent_at=at, first_sent_at=at), [], now=at + seconds)


def test_a_new_gateway_starts_at_two_batches_and_doubles_per_round_of_acks_in_time() -> None:
    pacing = Pacing(5.0, 30.0, 8)
    assert SLOW_START_BATCHES == 2 and pacing.limit == 2  # R6: nothing measured yet
    rounds = [pacing.limit]
    while pacing.limit < 8:  # a healthy collector: each round's acks in 50 ms
        acked_in(pacing, 0.05, n=pacing.limit)
        rounds.append(pacing.limit)
    assert rounds == [2, 4, 8]
    acked_in(pacing, 0.05, n=20)
    assert pacing.window.size == 8.0  # never above max_inflight_batches


def test_slow_start_ends_where_acks_come_later_than_half_the_ack_timeout() -> None:
    pacing = Pacing(5.0, 30.0, 8)
    acked_in(pacing, 1.0, n=2)  # in time and quick: 2 -> 4
    assert pacing.limit == 4
    acked_in(pacing, 3.0)  # in time, but a queue is forming: no more doubling
    assert not pacing.window.slow_start and pacing.limit == 4
    acked_in(pacing, 3.0, n=3)  # one batch per window of acks in time (R4)
    assert pacing.limit == 4 and pacing.window.size > 4.5
    acked_in(pacing, 3.0, n=2)
    assert pacing.limit == 5


def test_a_reconnect_restarts_slow_start_and_a_cut_lowers_where_it_stops() -> None:
    pacing = Pacing(5.0, 30.0, 8)
    acked_in(pacing, 0.05, n=6)
    assert pacing.limit == 8
    acked_in(pacing, 0.05, n=50)  # a healthy latency estimate, kept across sessions
    pacing.restart()
    assert pacing.limit == 2 and pacing.first_wait_s() == 5.0
    acked_in(pacing, 0.05, n=2)
    assert pacing.limit == 4
    pacing.timed_out(Sent(sent_at=10.0), now=15.0)  # a cut: halved, slow start over
    assert pacing.limit == 2 and not pacing.window.slow_start
    pacing.restart()
    assert pacing.limit == 2  # restart never grows a window
    acked_in(pacing, 0.05, n=2, at=20.0)  # additive now: up to the threshold the cut set
    assert pacing.limit == 2
    acked_in(pacing, 0.05, n=1, at=20.0)
    assert pacing.limit == 3


def test_slow_start_holds_back_telemetry_only_and_not_without_aimd() -> None:
    # the window is `limit`; callers let alarms use every max_inflight_batches slot (R4)
    pacing = Pacing(5.0, 30.0, 8)
    assert pacing.limit == 2 and pacing.window.max_batches == 8
    assert Pacing(5.0, 30.0, 8, aimd=False).limit == 8
    assert Pacing(5.0, 30.0, 1).limit == 1  # never above max_inflight_batches
    assert CongestionWindow(8).limit == 8  # no initial: the full window, no slow start


def test_an_ack_restarts_the_timer_of_the_batches_queued_behind_it_only() -> None:
    pacing = Pacing(5.0, 30.0, 8)
    before = Sent(sent_at=100.0, wait_s=5.0)  # sent before the acked one: may be lost (R3)
    behind = Sent(sent_at=101.0, wait_s=5.0)  # due at 106: now one first timeout from 104
    backing = Sent(sent_at=101.5, timeouts=1, wait_s=10.0)  # its back-off is its own
    later = Sent(sent_at=103.5, wait_s=30.0)  # due at 133.5 already: never shortened
    acked = Sent(sent_at=100.5, first_sent_at=100.5)
    pacing.completed(acked, [before, behind, backing, later], now=104.0)  # 3.5 s: a queue
    first = pacing.first_wait_s()
    assert first == 3.5 + 4 * 1.75  # RFC 6298's first sample
    assert (before.wait_s, behind.wait_s, backing.wait_s, later.wait_s) == (
        5.0, 104.0 + first - 101.0, 10.0, 30.0)
    pacing.completed(Sent(sent_at=101.0, first_sent_at=101.0), [later], now=120.0)
    assert later.wait_s == 120.0 + pacing.first_wait_s() - 103.5  # the timer follows the acks
