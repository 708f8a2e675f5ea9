"""Back-off for every retry and reconnect loop of the agent, its drivers and the collector.

One policy, "full jitter" (the AWS Architecture Blog's name; tenacity's
`wait_random_exponential` is the same): the wait after the n-th consecutive failure
(n = 0 for the first) is drawn uniformly from `[0, min(max_s, initial_s * 2**n)]`. The
ceiling starts at `initial_s`, doubles with each failure, stops at `max_s`, and goes back
to `initial_s` once the loop has succeeded (`reset`). So `initial_s` and `max_s` bound
every wait from above; a wait may be shorter, never longer. Jitter is what keeps a
thousand gateways that lost the same broker from reconnecting in step.

`Backoff` is the stateful form for hand-written loops; `wait_full_jitter` is the same
policy as a tenacity wait strategy for `AsyncRetrying` (it counts the attempts itself).
Both take the random source (`uniform(low, high)`) so tests can pin it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from tenacity import RetryCallState
from tenacity.wait import wait_base

__all__ = ["Backoff", "Uniform", "ceiling_s", "full_jitter_s", "wait_full_jitter"]

#: A random source: a float drawn uniformly from [low, high] (`random.uniform`).
Uniform = Callable[[float, float], float]

_MAX_EXPONENT = 60  # 2**60 * any initial_s is past any max_s: no overflow, same result


def ceiling_s(initial_s: float, max_s: float, failures: int) -> float:
    """The upper bound of the wait after `failures` earlier consecutive failures:
    `min(max_s, initial_s * 2**failures)` (`max_s` wins should it be below `initial_s`)."""
    return min(max_s, initial_s * 2.0 ** min(max(failures, 0), _MAX_EXPONENT))


def full_jitter_s(initial_s: float, max_s: float, failures: int,
                  uniform: Uniform = random.uniform) -> float:
    """One wait under the policy: uniform in `[0, ceiling_s(initial_s, max_s, failures)]`."""
    return uniform(0.0, ceiling_s(initial_s, max_s, failures))


class Backoff:
    """Waits for one retry loop: `next_s()` (or `await sleep()`) after each failure,
    `reset()` after a success."""

    def __init__(self, initial_s: float, max_s: float, *,
                 uniform: Uniform = random.uniform) -> None:
        if initial_s <= 0 or max_s <= 0:
            raise ValueError(f"back-off delays must be positive (initial_s={initial_s:g}, "
                             f"max_s={max_s:g})")
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0
        self._uniform = uniform

    @property
    def ceiling_s(self) -> float:
        """The bound of the next wait."""
        return ceiling_s(self.initial_s, self.max_s, self.failures)

    def next_s(self) -> float:
        """The next wait (seconds); the ceiling of the one after doubles, up to `max_s`."""
        wait = full_jitter_s(self.initial_s, self.max_s, self.failures, self._uniform)
        self.failures += 1
        return wait

    async def sleep(self) -> float:
        """Sleep the next wait; returns it."""
        wait = self.next_s()
        await asyncio.sleep(wait)
        return wait

    def reset(self) -> None:
        """The loop succeeded: the next wait is bounded by `initial_s` again."""
        self.failures = 0


class wait_full_jitter(wait_base):
    """The policy as a tenacity wait: attempt 1 failed → bound `initial_s`, and so on."""

    def __init__(self, initial_s: float, max_s: float, *,
                 uniform: Uniform = random.uniform) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._uniform = uniform

    def __call__(self, retry_state: RetryCallState) -> float:
        return full_jitter_s(self.initial_s, self.max_s, retry_state.attempt_number - 1,
                             self._uniform)
