"""The delivery loop: one asyncio task per subscription, one aiohttp client session.

Per subscription: read a page after its cursor with its consumer's scope, plan a batch,
POST it until it is answered 2xx (the cursor then moves past it) or refused for good (a
dead letter; the cursor moves on too). A retried batch is the same bytes with the same
`Webhook-Id`; only the timestamp and signature are new. Waits follow the project's one
back-off policy (`edge_agent.contract.backoff`: full jitter, capped), lengthened to a
receiver's `Retry-After` (capped too). Each subscription waits alone: a slow or dead
receiver never delays another (its own task; the session's connector has no global
limit, `limit_per_host` keeps one receiver from taking many sockets).

A subscription whose consumer is gone or has no valid token pauses (checked before each
batch). Subscriptions added or removed by the CLI are picked up within `refresh_s`.
Nothing here logs a header or a secret; errors are logged as their class and text.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from collector.stream.filter import Filter
from collector.stream.reader import Reader
from collector.webhooks.plan import (
    CONTENT_TYPE,
    Batch,
    Verdict,
    classify,
    plan_batch,
    retry_after_s,
    wait_s,
)
from collector.webhooks.service import Subscription, Webhooks
from collector.webhooks.signing import signature
from edge_agent.contract.backoff import Backoff
from edge_agent.contract.logs import get_logger

log = get_logger("collector.webhooks")


@dataclass(frozen=True)
class DeliverySettings:
    max_events: int = 100
    max_bytes: int = 256 * 1024
    #: one POST, connect to the last byte of the answer
    timeout_s: float = 10.0
    #: how often an idle subscription looks for new events
    poll_s: float = 1.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 300.0
    #: attempts of a batch refused with a 4xx (other than 408/429) before it is dead-lettered
    reject_attempts: int = 3
    refresh_s: float = 5.0
    #: None: the system's trust store (tests give their own CA)
    ssl: ssl.SSLContext | None = None


@dataclass(frozen=True)
class Answer:
    status: int | None
    error: str
    retry_after: float | None = None


async def post(session: aiohttp.ClientSession, url: str, secret: str, batch_id: str,
               body: bytes, settings: DeliverySettings) -> Answer:
    """One signed POST; never raises for network trouble (status None)."""
    ts = int(time.time())
    headers = {"Content-Type": CONTENT_TYPE, "Webhook-Id": batch_id,
               "Webhook-Timestamp": str(ts),
               "Webhook-Signature": signature(secret, batch_id, ts, body)}
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                ssl=settings.ssl if settings.ssl is not None else True,
                                timeout=aiohttp.ClientTimeout(total=settings.timeout_s)) as resp:
            await resp.read()
            after = retry_after_s(resp.headers.get("Retry-After"), datetime.now(UTC))
            return Answer(resp.status, f"HTTP {resp.status}", after)
    except TimeoutError:
        return Answer(None, f"no answer within {settings.timeout_s:g} s")
    except aiohttp.ClientError as exc:
        return Answer(None, " ".join(f"{type(exc).__name__}: {exc}".split())[:300])


class Deliverer:
    def __init__(self, webhooks: Webhooks, reader: Reader,
                 settings: DeliverySettings | None = None) -> None:
        self.webhooks = webhooks
        self.reader = reader
        self.settings = settings or DeliverySettings()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=4)
        async with aiohttp.ClientSession(connector=connector) as session:
            try:
                while not stop.is_set():
                    try:
                        names = {s.name for s in await asyncio.to_thread(self.webhooks.all)}
                    except Exception as exc:  # the store is away: keep the tasks running
                        log.warning("webhooks_list_failed", error=_line(exc))
                        names = set(self._tasks)
                    for name in names - set(self._tasks):
                        self._tasks[name] = asyncio.create_task(self._one(session, name),
                                                                name=f"webhook {name}")
                    for name in set(self._tasks) - names:
                        self._tasks.pop(name).cancel()
                    for name, task in list(self._tasks.items()):
                        if task.done():  # crashed: restart it on the next round
                            del self._tasks[name]
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.refresh_s):
                            await stop.wait()
            finally:
                for task in self._tasks.values():
                    task.cancel()
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
                self._tasks.clear()

    async def _one(self, session: aiohttp.ClientSession, name: str) -> None:
        s = self.settings
        paused = False
        while True:
            try:
                sub = await asyncio.to_thread(self.webhooks.get, name)
                if sub is None:
                    return
                scope = await asyncio.to_thread(self.webhooks.scope_of, sub.consumer)
                if scope is None:
                    if not paused:
                        log.warning("webhook_paused", webhook=name, consumer=sub.consumer,
                                    reason="the consumer is gone or has no valid token")
                    paused = True
                    await asyncio.sleep(s.poll_s)
                    continue
                paused = False
                page = await asyncio.to_thread(self.reader.read, sub.cursor,
                                               Filter().narrowed(scope), s.max_events)
                batch = plan_batch(name, page.events, s.max_events, s.max_bytes)
                if batch is None:
                    if page.next != sub.cursor:
                        await asyncio.to_thread(self.webhooks.skip_to, name, page.next)
                    if not page.more:
                        await asyncio.sleep(s.poll_s)
                    continue
                await self._send(session, sub, batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is away, …: try again after a poll
                log.warning("webhook_loop_failed", webhook=name, error=_line(exc))
                await asyncio.sleep(s.poll_s)

    async def _send(self, session: aiohttp.ClientSession, sub: Subscription,
                    batch: Batch) -> None:
        """Until the batch is delivered or dead-lettered."""
        s = self.settings
        backoff = Backoff(s.backoff_initial_s, s.backoff_max_s)
        rejected = 0
        secret = sub.secret
        while True:
            answer = await post(session, sub.url, secret, batch.id, batch.body, s)
            verdict = classify(answer.status)
            if verdict is Verdict.DELIVERED:
                await asyncio.to_thread(self.webhooks.delivered, sub.name, batch)
                return
            if verdict is Verdict.REJECTED:
                rejected += 1
                if rejected >= s.reject_attempts:
                    assert answer.status is not None
                    await asyncio.to_thread(self.webhooks.dead_letter, sub.name, batch,
                                            answer.status, answer.error)
                    return
            await asyncio.to_thread(self.webhooks.attempted, sub.name, answer.error)
            wait = wait_s(backoff.next_s(), answer.retry_after, s.retry_after_max_s)
            log.info("webhook_retry", webhook=sub.name, batch_id=batch.id, error=answer.error,
                     wait_s=round(wait, 3))
            await asyncio.sleep(wait)
            fresh = await asyncio.to_thread(self.webhooks.get, sub.name)
            if fresh is None:
                return  # removed meanwhile
            secret = fresh.secret  # a rotation applies to the next attempt


async def replay(webhooks: Webhooks, name: str,
                 settings: DeliverySettings | None = None) -> tuple[int, int]:
    """Send the dead letters of `name` again (same body, same Webhook-Id), oldest first;
    returns (replayed, still failing). Stops at the first that is not answered 2xx."""
    s = settings or DeliverySettings()
    sub = await asyncio.to_thread(webhooks.get, name)
    if sub is None:
        from collector.webhooks.service import WebhookError

        raise WebhookError(f"no webhook {name!r} (hint: `edge-collector webhooks list`)")
    letters = await asyncio.to_thread(webhooks.dead_letters, name)
    done = 0
    async with aiohttp.ClientSession() as session:
        for letter in letters:
            answer = await post(session, sub.url, sub.secret, letter.batch_id, letter.body, s)
            if classify(answer.status) is not Verdict.DELIVERED:
                log.warning("webhook_replay_failed", webhook=name, batch_id=letter.batch_id,
                            error=answer.error)
                return done, len(letters) - done
            await asyncio.to_thread(webhooks.replayed, letter.id)
            done += 1
    log.info("webhook_replayed", webhook=name, batches=done)
    return done, 0


def _line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
