"""The ingest loop: broker → bounded inbox → validate → ONE store transaction per group →
COMMIT → acks.

Ack timing: the acks for a payload are published only after `Store.ingest_many` returned,
i.e. after the COMMIT of the transaction that held it (SQLite: WAL + synchronous=FULL;
PostgreSQL: synchronous commit), so the rows survive a power cut. A crash between commit
and ack costs only a resend, which the `id` dedupe absorbs.

Four tasks per broker session:

- the **reader** takes every message aiomqtt delivers and offers it to the `Inbox`,
  bounded in payloads and bytes (`inbox.Bounds`). When it is full the payload is shed:
  counted (`shed`), logged, not stored and not acked. Nothing acked is lost that way:
  paho has already PUBACKed it to the broker (it acknowledges QoS 1 on receipt, before
  our code runs), but the edge keeps every event in its outbox until OUR ack and resends
  it after `ack_timeout_s` (at once on a collector's presence change). So a flood costs
  the edge a resend, never data, and the collector's memory stays bounded. The reader
  never blocks. Before the inbox, aiomqtt's own queue (what paho received and the
  reader has not taken yet: under a flood paho's socket callbacks outrun the reader) is
  bounded in bytes too, by the same `queued_bytes` (`received.bounded_queue`); a message
  over it is shed the same way, counted and logged. So the collector holds at most twice
  `queued_bytes` of payloads plus the three groups, whatever the flood (1,500 x 300 KB
  took it to 359 MiB when that queue was unbounded: bench/collector_flood.py). Why not
  MQTT v5 Receive Maximum: it bounds the QoS 1 messages the broker sends before their PUBACK,
  and paho PUBACKs on receipt (aiomqtt has no manual acks), so it bounds nothing here;
  with manual PUBACKs after commit the broker would queue for us instead (Mosquitto:
  `max_queued_messages`, then it drops, silently, and a clean session loses its queue
  on a disconnect): no better than shedding where we can count it.
- the **validator** takes everything waiting (up to a group's caps: `group_payloads`,
  `group_bytes`) and validates it in its own thread, one group ahead of the store;
- the **committer** commits each validated group, in the single store thread, with ONE
  `ingest_many` (one fsync, one COPY on PostgreSQL); a transaction that fails (disk full,
  server gone) acks nothing of the group: the edge resends. Two threads, because
  validation (JSON Schema, ~2/3 of the thread's time with PostgreSQL) holds the GIL while
  the commit mostly waits for the database, which releases it: they overlap;
- the **acks** of a committed group are published concurrently, at most
  `acks_in_flight` awaiting their PUBACK, while the next group is committed; the
  committer never waits for an ack's PUBACK before the next transaction (it did: ~800
  payloads/s with one-event payloads, docs/benchmarks.md).

On stop, the groups already taken from the inbox are committed and their acks (and every
ack in flight) published before the session ends; what waits in the inbox is left to the
edge's resend. A lost broker session cancels all four; a commit still running in the
store thread finishes there, unacked.

Presence: with a `collector_id`, the collector says `online` (retained, QoS 1) on
`collector_presence_topic(id)` once its subscription is in place, leaves `offline` there
as its Last Will, and publishes `offline` itself on a clean stop.

Liveness (systemd's watchdog, `contract.watchdog`): `beats` has three stages. `broker`
beats while connecting, between attempts and while a session's tasks are all running;
`validate` and `commit` beat in their loops, idle too (waits of at most `BEAT_S`), and
rest between sessions. A stage stuck (a store call that never returns, a wedged session)
stops the beats, then the pings, and systemd restarts the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, TypeVar

import aiomqtt
from aiomqtt import ProtocolVersion
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from collector.acks import as_stored, build_acks
from collector.inbox import Bounds, Inbox, Message
from collector.model import EventRow, Rejected, Verdict
from collector.received import bounded_queue
from collector.registry import Registry
from collector.store import IngestResult, Origin, Payload, Store, StoreLost
from collector.store.hints import failure_hint
from collector.summary import Counters, Summary
from collector.text import storable
from collector.validate import Limits, check_payload
from edge_agent.contract.backoff import Backoff, wait_full_jitter
from edge_agent.contract.envelope import parse_time
from edge_agent.contract.logs import get_logger
from edge_agent.contract.mqtt import Endpoint, ProtocolChooser, make_client
from edge_agent.contract.settings import BackoffConfig
from edge_agent.contract.topics import (
    EVENTS_FILTER,
    PRESENCE_OFFLINE,
    PRESENCE_ONLINE,
    TopicError,
    collector_presence_topic,
    parse_topic,
    shared_subscription,
)
from edge_agent.contract.watchdog import BEAT_S, Beats, sleep_beating
from edge_agent.contract.wire import Ack

log = get_logger("collector.ingest")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one payload did to the store, and the acks owed for it.

    `oldest`: the time (Unix seconds) of the payload's oldest accepted event.
    """

    result: IngestResult
    gateway: str | None
    ack_topic: str | None = None
    acks: list[Ack] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    oldest: float | None = None
    #: the MQTT topic the payload came on (named by the `payload_quarantined` line)
    topic: str | None = None


def _no_registry() -> Registry | None:
    return None


@dataclass(frozen=True, slots=True)
class Checked:
    """One payload after its topic and validation, before the store.

    `verdict` is None for a topic that is not a gateway's events topic (no acks then).
    """

    item: Payload
    gateway: str | None
    ack_topic: str | None
    verdict: Verdict | None


class PayloadHandler:
    """Synchronous part of ingest (worker threads): topic and validation, then the store.

    `registry()` gives the gateway registry in force (None: every place is accepted).
    Calling it with a group of messages commits them in ONE transaction and returns one
    `Outcome` per message, in order; it raises (nothing committed) if the store fails.
    """

    def __init__(self, store: Store, limits: Limits,
                 registry: Callable[[], Registry | None] = _no_registry) -> None:
        self.store = store
        self.limits = limits
        self.registry = registry

    def __call__(self, messages: Sequence[Message]) -> list[Outcome]:
        return self.commit(self.check_all(messages))

    def check_all(self, messages: Sequence[Message]) -> list[Checked]:
        return [self.check(topic, payload) for topic, payload in messages]

    def commit(self, checked: Sequence[Checked]) -> list[Outcome]:
        """ONE transaction for all of `checked`; raises (nothing committed) if it fails."""
        results = self.store.ingest_many([c.item for c in checked])
        return [_outcome(c, r) for c, r in zip(checked, results, strict=True)]

    def check(self, topic: str, payload: bytes) -> Checked:
        try:
            gw, channel = parse_topic(topic)
            if channel != "events":
                raise TopicError(f"{topic!r}: not an events topic")
        except TopicError as exc:
            rejected = [Rejected(f"topic: {exc}", payload)]
            return Checked(Payload(Origin(topic, None), (), rejected), None, None, None)
        registry = self.registry()
        if registry is not None and registry.unregistered == "accept" \
                and not registry.knows(gw.gateway):
            log.warning("gateway_unregistered", gateway=gw.gateway,
                        hint="add it to the gateways file; until then its events are accepted "
                             "wherever they claim to be (gateways.unregistered: accept)")
        verdict = check_payload(payload, gw, self.limits, registry)
        return Checked(Payload(Origin(topic, gw.gateway), verdict.accepted, verdict.rejected),
                       gw.gateway, gw.ack, verdict)


def _outcome(checked: Checked, result: IngestResult) -> Outcome:
    topic = checked.item.origin.topic
    if checked.verdict is None:
        return Outcome(result, None, reasons=[r.reason for r in checked.item.rejected],
                       topic=topic)
    stored = as_stored(checked.verdict, result.diverted)
    return Outcome(result, checked.gateway, checked.ack_topic, build_acks(stored),
                   [r.reason for r in stored.rejected], _oldest(checked.verdict.accepted),
                   topic)


def _oldest(rows: Sequence[EventRow]) -> float | None:
    """The oldest event time among `rows`, as Unix seconds (for the summary's lag; a time
    that does not parse is left out rather than fail a payload already committed)."""
    times: list[float] = []
    for row in rows:
        with contextlib.suppress(ValueError, OverflowError, OSError):
            times.append(parse_time(row.time).timestamp())
    return min(times) if times else None


def _as_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


class SubscriptionRefused(aiomqtt.MqttError):
    pass


class Collector:
    """Subscribes to every gateway's events and ingests them until `run` is stopped."""

    def __init__(self, store: Store, endpoint: Endpoint, *, client_id: str,
                 share_group: str | None = None, limits: Limits | None = None,
                 backoff: BackoffConfig | None = None, ack_timeout_s: float = 5.0,
                 registry: Callable[[], Registry | None] = _no_registry,
                 collector_id: str | None = None, summary_interval_s: float = 60.0,
                 bounds: Bounds | None = None) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self.share_group = share_group
        self.backoff = backoff or BackoffConfig()
        self.ack_timeout_s = ack_timeout_s
        self.presence_topic = collector_presence_topic(collector_id) if collector_id else None
        self.handler = PayloadHandler(store, limits or Limits(), registry)
        self.bounds = bounds or Bounds()
        #: the most payloads ever waiting in the inbox (tests: the bound holds)
        self.inbox_high_water = 0
        self.counters = Counters()
        self.summary_interval_s = summary_interval_s
        self.summary = Summary(time.time())
        #: Set while subscribed (tests and health checks wait on it).
        self.subscribed = asyncio.Event()
        self._protocol = ProtocolChooser(endpoint.protocol)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="collector-store")
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="collector-validate")
        #: progress of each stage, read by the watchdog (collector.service)
        self.beats = Beats("broker", "validate", "commit")
        self._rest_session()

    def _rest_session(self) -> None:
        self.beats.rest("validate")
        self.beats.rest("commit")

    async def _sleep(self, seconds: float) -> None:
        await sleep_beating(seconds, lambda: self.beats.beat("broker"))

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until `stop` is set; the group in hand is committed and acked first."""
        sessions = asyncio.create_task(self._sessions(), name="collector-sessions")
        stopper = asyncio.create_task(stop.wait(), name="collector-stop")
        summaries = asyncio.create_task(self._summaries(), name="collector-summary")
        try:
            done, _ = await asyncio.wait({sessions, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if sessions in done:
                sessions.result()
        finally:
            summaries.cancel()
            stopper.cancel()
            sessions.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sessions
            self._checker.shutdown(wait=True)
            self._executor.shutdown(wait=True)
            log.info("collector_stopped", **asdict(self.counters))

    async def _summaries(self) -> None:
        """One `collector_summary` line per `summary_interval_s`."""
        while True:
            await asyncio.sleep(self.summary_interval_s)
            log.info("collector_summary", **self.summary.take(time.time(), self.counters))

    async def _sessions(self) -> None:
        while True:
            self.beats.beat("broker")
            try:
                async with AsyncExitStack() as stack:
                    client = await self._connect(stack)
                    try:
                        await self._consume(client)
                    except asyncio.CancelledError:
                        await self._say_offline(client)
                        raise
            except aiomqtt.MqttError as exc:
                log.warning("broker_lost", broker=self.endpoint.describe(), error=str(exc))
            finally:
                self.subscribed.clear()
            # a session ended: back-off starts afresh, never a tight loop against a broker
            # that accepts and then drops us at once
            await self._sleep(Backoff(self.backoff.initial_s, self.backoff.max_s).next_s())

    # ------------------------------------------------------------------ connecting

    async def _connect(self, stack: AsyncExitStack) -> aiomqtt.Client:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(aiomqtt.MqttError),
            wait=wait_full_jitter(self.backoff.initial_s, self.backoff.max_s),
            before_sleep=self._log_retry,
            sleep=self._sleep,
            reraise=True,
        )
        client: aiomqtt.Client | None = None
        async for attempt in retrying:
            with attempt:
                client = await self._connect_once(stack)
        assert client is not None
        attempts = retrying.statistics.get("attempt_number", 1)
        if attempts > 1:  # the failures between were rate-limited: say how many there were
            log.info("broker_reconnected", broker=self.endpoint.describe(), attempts=attempts)
        return client

    async def _connect_once(self, stack: AsyncExitStack) -> aiomqtt.Client:
        self.beats.beat("broker")
        async with AsyncExitStack() as attempt:  # a refused SUBSCRIBE disconnects this client
            try:
                client = await attempt.enter_async_context(self._client())
            except aiomqtt.MqttError as exc:
                if not self._protocol.failed(exc):
                    raise
                log.info("broker_protocol_fallback", broker=self.endpoint.describe(),
                         protocol=self._protocol.label, reason=str(exc))
                client = await attempt.enter_async_context(self._client())
            topic = self._subscription()
            granted = await client.subscribe(topic, qos=1, timeout=self.ack_timeout_s)
            codes = [getattr(g, "value", g) for g in granted]
            if any(c >= 0x80 for c in codes):
                raise SubscriptionRefused(f"broker refused the subscription to {topic} ({codes})")
            if self.presence_topic is not None:
                await client.publish(self.presence_topic, PRESENCE_ONLINE, qos=1, retain=True,
                                     timeout=self.ack_timeout_s)
            await stack.enter_async_context(attempt.pop_all())
        log.info("broker_connected", broker=self.endpoint.describe(), client_id=self.client_id,
                 protocol=self._protocol.label,
                 subscription=topic)
        return client

    def _client(self) -> aiomqtt.Client:
        # aiomqtt acknowledges incoming QoS 1 before our code sees the message (paho's default),
        # so a crash here loses the broker's copy. That is safe: the edge keeps every event
        # until our application-level ack and resends it. aiomqtt's queue is bounded in
        # bytes (what does not fit is shed, like the inbox's) and drained at once by the
        # reader into the inbox (module docstring).
        will = (aiomqtt.Will(self.presence_topic, PRESENCE_OFFLINE, qos=1, retain=True)
                if self.presence_topic is not None else None)
        return make_client(self.endpoint, self._protocol.current, identifier=self.client_id,
                           persistent=not self.shared, max_queued_incoming=0,
                           queue_type=bounded_queue(self.bounds.queued_bytes, self._shed),
                           timeout_s=self.ack_timeout_s, will=will)

    @property
    def shared(self) -> bool:
        """On a v5 shared subscription, the collector keeps no broker session.

        A member's persistent session outlives its process: Mosquitto keeps handing it
        its share of every gateway's batches while it is dead, and those batches, and
        every resend that lands there again, wait for its return. With clean start and
        session expiry 0 the session, and its membership of the group, end with the
        connection: the broker sends everything to the live members, the batches the
        dead one held are lost to it (the edge resends them: at once on its `offline`
        presence, else after `ack_timeout_s`). Alone (3.1.1, or no group), a persistent
        session still queues for a collector that restarts.
        """
        return self._protocol.current == ProtocolVersion.V5 and bool(self.share_group)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        """A clean stop: replace the retained `online` now rather than leave it to the Will."""
        if self.presence_topic is None:
            return
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(self.presence_topic, PRESENCE_OFFLINE, qos=1, retain=True,
                                 timeout=min(self.ack_timeout_s, 2.0))

    def _subscription(self) -> str:
        if self.shared and self.share_group:
            return shared_subscription(self.share_group)
        return EVENTS_FILTER

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("broker_connect_failed", broker=self.endpoint.describe(), error=str(exc),
                    attempt=state.attempt_number,
                    retry_in_s=round(state.next_action.sleep, 2) if state.next_action else None)

    # ------------------------------------------------------------------ consuming

    async def _consume(self, client: aiomqtt.Client) -> None:
        inbox = Inbox(self.bounds)
        #: validated groups waiting for the store: one, so validation runs one group ahead
        staged: asyncio.Queue[list[Checked] | None] = asyncio.Queue(maxsize=1)
        reader = asyncio.create_task(self._read(client, inbox), name="collector-reader")
        validator = asyncio.create_task(self._validate(inbox, staged), name="collector-validate")
        committer = asyncio.create_task(self._commit(client, staged), name="collector-commit")
        tasks = (reader, validator, committer)
        self.subscribed.set()
        try:
            done: set[asyncio.Task[None]] = set()
            while not done:  # the session's tasks all run: the broker stage beats
                self.beats.beat("broker")
                done, _ = await asyncio.wait(tasks, timeout=BEAT_S,
                                             return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise aiomqtt.MqttError("the broker's message stream ended")
        except asyncio.CancelledError:
            reader.cancel()
            inbox.close()
            # stopping: the groups already taken are committed and acked first
            await asyncio.gather(validator, committer, return_exceptions=True)
            raise
        finally:
            self.inbox_high_water = max(self.inbox_high_water, inbox.high_water)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._rest_session()

    def _shed(self, message: aiomqtt.Message) -> None:
        """A message aiomqtt's queue has no room for (paho received it faster than we read)."""
        self.counters.shed += 1
        log.warning("payload_shed", topic=message.topic.value, stage="received",
                    hint="the collector receives faster than it reads (a flood): this "
                         "payload is not acked, its gateway resends it")

    async def _read(self, client: aiomqtt.Client, inbox: Inbox) -> None:
        """Every message into the inbox, at once; one that does not fit is shed."""
        async for message in client.messages:
            topic = message.topic.value
            if not inbox.offer((topic, _as_bytes(message.payload))):
                self.counters.shed += 1
                log.warning("payload_shed", topic=topic, waiting=len(inbox),
                            hint="the collector's inbox is full (the store is behind): this "
                                 "payload is not acked, its gateway resends it")

    async def _validate(self, inbox: Inbox,
                        staged: asyncio.Queue[list[Checked] | None]) -> None:
        """Each group taken from the inbox, validated in its own thread; None once closed."""
        loop = asyncio.get_running_loop()
        while group := await self._beating("validate", inbox.take):
            checked = await loop.run_in_executor(self._checker, self.handler.check_all, group)
            await self._beating("validate", partial(staged.put, checked))
        await staged.put(None)

    async def _commit(self, client: aiomqtt.Client,
                      staged: asyncio.Queue[list[Checked] | None]) -> None:
        """Commit each group in the store thread, then publish its acks without waiting."""
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.bounds.acks_in_flight)
        flying: set[asyncio.Task[None]] = set()

        def landed(task: asyncio.Task[None]) -> None:
            flying.discard(task)
            slots.release()

        try:
            while (group := await self._beating("commit", staged.get)) is not None:
                try:
                    outcomes = await loop.run_in_executor(self._executor, self.handler.commit,
                                                          group)
                except StoreLost as exc:  # the file deleted: stop, systemd restarts us
                    self.counters.store_failures += len(group)
                    log.error("store_lost", store=self.handler.store.describe(),
                              payloads=len(group), error=str(exc))
                    raise
                except Exception as exc:  # disk full, server gone: no ack, the edge resends
                    self.counters.store_failures += len(group)
                    log.error("store_failed", store=self.handler.store.describe(),
                              payloads=len(group), topic=group[0].item.origin.topic,
                              error=repr(exc), hint=failure_hint(exc))
                    continue
                self.counters.transactions += 1
                for outcome in outcomes:
                    self._count(outcome)
                    # Committed: only now may the edge learn that these events are safe.
                    for ack in outcome.acks:
                        await slots.acquire()
                        task = asyncio.create_task(self._publish_ack(client, outcome, ack))
                        flying.add(task)
                        task.add_done_callback(landed)
            await asyncio.gather(*flying)
        except asyncio.CancelledError:
            for task in flying:
                task.cancel()
            raise

    async def _beating(self, stage: str, take: Callable[[], Awaitable[_T]]) -> _T:
        """`await take()`, beating `stage` at least every BEAT_S meanwhile (`take` must be
        safe to cancel: nothing is taken until it returns)."""
        while True:
            self.beats.beat(stage)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BEAT_S):
                    return await take()

    def _count(self, outcome: Outcome) -> None:
        c, r = self.counters, outcome.result
        c.messages += 1
        c.inserted += r.inserted
        c.duplicates += r.duplicates
        c.quarantined += r.quarantined
        c.dropped += r.dropped
        c.conflicts += r.conflicts
        now = time.time()
        self.summary.add(gateway=outcome.gateway,
                         lag_s=None if outcome.oldest is None else now - outcome.oldest)
        # A line per payload is a flood at city scale (1,500 payloads/s): the plain ones
        # are debug, the minute's `collector_summary` counts them; a payload with
        # duplicates, conflicts or losses is worth its own line.
        noteworthy = r.duplicates or r.quarantined or r.dropped or r.conflicts
        (log.info if noteworthy else log.debug)(
            "batch_ingested", gateway=outcome.gateway, inserted=r.inserted,
            duplicates=r.duplicates, quarantined=r.quarantined, dropped=r.dropped,
            conflicts=r.conflicts)
        if outcome.reasons:
            # One line a minute per gateway (RepeatLimiter): the reason is not an identity key.
            log.warning("payload_quarantined", gateway=outcome.gateway,
                        topic=None if outcome.topic is None else storable(outcome.topic, 300),
                        count=r.quarantined,
                        dropped=r.dropped, first_reason=storable(outcome.reasons[0], 500),
                        more=len(outcome.reasons) - 1)

    async def _publish_ack(self, client: aiomqtt.Client, outcome: Outcome, ack: Ack) -> None:
        assert outcome.ack_topic is not None
        try:
            await client.publish(outcome.ack_topic, ack.encode(), qos=1,
                                 timeout=self.ack_timeout_s)
            self.counters.acks_sent += 1
        except aiomqtt.MqttError as exc:
            # The rows are committed; the edge will resend, we dedupe and ack again.
            self.counters.ack_failures += 1
            log.warning("ack_failed", gateway=outcome.gateway, epoch=ack.epoch, error=str(exc))
