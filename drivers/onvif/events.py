"""The PullPoint event channel of one camera: create, pull, renew before expiry, watch.

`EventChannel.run()` creates a subscription, then pulls in a loop. It renews the
subscription `renew_margin_s` before the camera's termination time (or at half its
lifetime, if the camera grants less than the margin), using the camera's own
CurrentTime/TerminationTime, so a camera clock that is off does not matter.

A fault on PullMessages or Renew means the subscription is gone (the camera rebooted,
or it expired): the channel reports the loss (`on_lost`) and re-creates it once, at
once; `on_up` follows when it works again. Anything else (network, auth)
ends `run()` with an `OnvifError`, and the camera's coordinator reconnects with
back-off. The liveness watch: when no pull has succeeded for `liveness_s` (a wedged
event service, a TCP connection that went silent), `run()` ends with `SubscriptionLost`
("event channel quiet"), which the coordinator reports and repairs.

Pulls are paced: after a pull that returned nothing the next starts no sooner than
`MIN_EMPTY_PULL_INTERVAL_S` after it, after one with messages no sooner than
`MIN_PULL_INTERVAL_S`, so a camera that ignores the long-poll Timeout cannot spin the
worker; such a camera is named in a rate-limited `pull_answered_early` warning.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from edge_agent.contract.logs import get_logger

from .client import CameraClient
from .errors import SoapFault, SubscriptionLost
from .notifications import parse_messages
from .options import EventOptions
from .topics import Notification

__all__ = ["EventChannel"]

log = get_logger("drivers.onvif.events")

T = TypeVar("T")
#: the least time from the start of a pull that returned nothing to the next pull
MIN_EMPTY_PULL_INTERVAL_S = 1.0
#: the least time from the start of a pull that returned messages to the next pull
MIN_PULL_INTERVAL_S = 0.05
#: an empty reply sooner than this share of the Timeout asked is "answered early"
EARLY_SHARE = 0.5
#: at most one `pull_answered_early` warning per camera in this many seconds
EARLY_WARN_EVERY_S = 300.0
OnMessages = Callable[[list[Notification]], Awaitable[None]]


class EventChannel:
    def __init__(self, client: CameraClient, options: EventOptions, on_messages: OnMessages,
                 on_up: Callable[[], None], on_lost: Callable[[str], None]) -> None:
        self.client, self.options = client, options
        self.on_messages, self.on_up, self.on_lost = on_messages, on_up, on_lost
        self.renewals = self.recreations = self.pulls = 0
        self.last_ok = time.monotonic()
        self.early_pulls = 0
        self._early_warned_at: float | None = None

    async def run(self) -> None:
        """Until cancelled or the channel cannot be kept: raises OnvifError."""
        recreate_allowed = True
        while True:
            lifetime = await self._create()
            try:
                await self._pull_loop(lifetime)
            except SoapFault as fault:
                if fault.operation not in ("PullMessages", "Renew") or not recreate_allowed:
                    raise
                log.warning("subscription_lost", device=self.client.device,
                            operation=fault.operation, reason=fault.detail)
                self.on_lost(fault.reason)
                self.recreations += 1
                recreate_allowed = False  # a second fault in a row goes to the coordinator
                continue

    async def _create(self) -> float:
        opts = self.options
        sub = await self.client.create_pullpoint(opts.termination_s)
        self.last_ok = time.monotonic()
        log.info("subscription_created", device=self.client.device, address=sub.address,
                 lifetime_s=round(sub.lifetime_s, 1))
        self.on_up()
        return sub.lifetime_s

    def _renew_in(self, lifetime: float) -> float:
        margin = self.options.renew_margin_s
        return lifetime - margin if lifetime > 2 * margin else lifetime / 2

    async def _pull_loop(self, lifetime: float) -> None:
        opts = self.options
        renew_at = time.monotonic() + self._renew_in(lifetime)
        while True:
            now = time.monotonic()
            if now >= renew_at:
                lifetime = await self._watched(self.client.renew(opts.termination_s), now)
                self.renewals += 1
                renew_at = time.monotonic() + self._renew_in(lifetime)
                self.last_ok = time.monotonic()
                log.debug("subscription_renewed", device=self.client.device,
                          lifetime_s=round(lifetime, 1))
                continue
            wait = max(1.0, min(opts.pull_timeout_s, renew_at - now))
            reply = await self._watched(
                self.client.pull(wait, opts.message_limit, self._left(now) + 1), now)
            self.pulls += 1
            self.last_ok = time.monotonic()
            messages = parse_messages(reply, opts.message_limit)
            if messages:
                await self.on_messages(messages)
            else:
                self._check_early(self.last_ok - now, wait)
            pause = (MIN_PULL_INTERVAL_S if messages else MIN_EMPTY_PULL_INTERVAL_S) \
                - (time.monotonic() - now)
            if pause > 0:
                await asyncio.sleep(pause)

    def _check_early(self, took: float, asked: float) -> None:
        """Warn (rate-limited) when an empty pull came back far sooner than asked."""
        if took >= asked * EARLY_SHARE:
            return
        self.early_pulls += 1
        now = time.monotonic()
        if self._early_warned_at is not None and now - self._early_warned_at < \
                EARLY_WARN_EVERY_S:
            return
        self._early_warned_at = now
        log.warning("pull_answered_early", device=self.client.device,
                    asked_timeout_s=round(asked, 1), answered_in_s=round(took, 3),
                    early_pulls=self.early_pulls,
                    hint="the camera ignores the PullMessages Timeout; pulls are paced "
                         f"to one per {MIN_EMPTY_PULL_INTERVAL_S:g}s")

    def _left(self, now: float) -> float:
        return max(self.last_ok + self.options.liveness_s - now, 0.1)

    async def _watched(self, awaitable: Awaitable[T], now: float) -> T:
        """`awaitable`, unless the channel has been silent for liveness_s by then."""
        try:
            async with asyncio.timeout(self._left(now)):
                return await awaitable
        except TimeoutError:
            quiet = time.monotonic() - self.last_ok
            raise SubscriptionLost(
                self.client.device, "PullMessages",
                f"event channel quiet: no answer for {quiet:.0f}s (liveness_s "
                f"{self.options.liveness_s:g})",
                "the camera's event service is wedged or the connection went silent; "
                "the subscription is re-created") from None
