"""The one back-off policy (edge_agent.contract.backoff): full jitter, bounds, growth, cap,
reset; with a pinned random source and a fake sleep, no clock."""

from __future__ import annotations

import asyncio
import random

import pytest
from tenacity import AsyncRetrying, RetryError, stop_after_attempt

from edge_agent.contract.backoff import Backoff, ceiling_s, full_jitter_s, wait_full_jitter


def top(low: float, high: float) -> float:
    return high


def bottom(low: float, high: float) -> float:
    return low


def test_the_ceiling_starts_at_initial_doubles_and_stops_at_max() -> None:
    assert [ceiling_s(0.2, 1.0, n) for n in range(6)] == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert ceiling_s(1.0, 60.0, 10_000) == 60.0  # no overflow after a long outage
    assert ceiling_s(5.0, 1.0, 0) == 1.0  # max_s bounds every wait, even the first


def test_every_wait_is_drawn_between_zero_and_the_ceiling() -> None:
    draws: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        draws.append((low, high))
        return (low + high) / 2

    backoff = Backoff(0.5, 30.0, uniform=record)
    waits = [backoff.next_s() for _ in range(8)]
    assert draws == [(0.0, c) for c in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0)]
    assert waits == [c / 2 for c in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0)]


def test_real_random_waits_stay_inside_the_bounds() -> None:
    rng = random.Random(7)
    backoff = Backoff(1.0, 60.0, uniform=rng.uniform)
    for failures in range(200):
        bound = backoff.ceiling_s
        assert bound == min(60.0, 2.0 ** failures)
        assert 0.0 <= backoff.next_s() <= bound
    assert backoff.failures == 200


def test_reset_brings_the_ceiling_back_to_initial() -> None:
    backoff = Backoff(0.1, 0.5, uniform=top)
    assert [backoff.next_s() for _ in range(4)] == [0.1, 0.2, 0.4, 0.5]
    backoff.reset()
    assert backoff.ceiling_s == 0.1
    assert backoff.next_s() == 0.1
    assert Backoff(0.1, 0.5, uniform=bottom).next_s() == 0.0  # full jitter: may be at once


def test_full_jitter_s_is_the_same_policy_without_state() -> None:
    assert full_jitter_s(0.2, 1.0, 2, top) == 0.8
    assert full_jitter_s(0.2, 1.0, 2, bottom) == 0.0


def test_delays_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Backoff(0, 1.0)


async def test_sleep_sleeps_the_drawn_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    backoff = Backoff(1.0, 3.0, uniform=top)
    assert [await backoff.sleep() for _ in range(3)] == [1.0, 2.0, 3.0]
    assert slept == [1.0, 2.0, 3.0]


async def test_the_tenacity_wait_follows_the_same_policy() -> None:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    retrying = AsyncRetrying(wait=wait_full_jitter(0.2, 1.0, uniform=top),
                             stop=stop_after_attempt(6), sleep=fake_sleep)
    with pytest.raises(RetryError):
        async for attempt in retrying:
            with attempt:
                raise ConnectionError("refused")
    assert waits == [0.2, 0.4, 0.8, 1.0, 1.0]
