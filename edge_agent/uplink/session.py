"""Uplink: outbox rows → MQTT batches → collector acks → outbox deletes.

Invariants
1. A row leaves the outbox only when an Ack for this outbox's epoch names its seq.
   A PUBACK, a publish that raised or timed out, a reconnect: all "outcome unknown",
   the row stays and is sent again later with the same id (the collector dedupes).
2. At most `max_inflight_batches` unacknowledged batches are out at once, and of the
   telemetry lane at most the congestion window; a batch without an ack after its ack
   timeout is sent again (rows still present only), or at once when a collector comes
   online (see 8). The timeout starts at `ack_timeout_s` and backs off, with jitter, up
   to `ack_timeout_max_s` with each resend of the batch (and starts higher while acks
   take longer than `ack_timeout_s`); the window halves when acks are late and grows back
   when they are on time, and starts small after every (re)connect, doubling per round of
   acks in time (slow start): `edge_agent.uplink.resend` (its invariants R1–R6 say why
   and how; alarms never wait for a slot the window holds back).
3. Alarms first: lane 1 (alarm retention) is drained before lane 0 on every pick.
4. On every (re)connect all in-flight state is forgotten and sending restarts from
   the oldest row: the collector may have committed some of it; duplicates are free.
5. The uplink knows MQTT and the outbox API, nothing of drivers or devices.
6. Rows reach a batch in order of seq within a lane, each once per session (resends
   aside): from the outbox (`fetch` after the lane's cursor) until a fetch finds the
   lane empty, then from the rows each commit hands over (`offer`) — the lane is
   "caught up" and nothing is read back. Anything else that changes the outbox
   (an eviction, a data_loss report, a reconnect, an overfull hand-over buffer) sends
   the lane back to fetching from its cursor (`notify`), and a fetch that was under way
   then cannot mark the lane caught up (`_generation`).
7. An ack acts on in-flight seqs only: its ranges are intersected with them (never
   expanded), so what one ack can make the agent do is bounded by what is in flight;
   the rest is ignored, counted (`ack_seqs_ignored`) and logged (rate-limited).
8. A collector coming online (its presence on `COLLECTOR_PRESENCE_FILTER`: `online`
   after `offline`, the first `online` seen in a session, or any `online` it publishes
   live, i.e. not retained) makes every batch in flight at that moment be sent again at
   once, rather than after `ack_timeout_s`: it may have missed them (a broker drops what
   it has no subscriber for). Resends are free (the collector drops duplicates).
9. A collector going offline live (its Last Will or clean stop after `online`; not a
   retained `offline` found at subscribe time) resends the batches in flight at once
   too: on a shared subscription some of them were handed to it and died with it, and
   waiting `ack_timeout_s` for each would hold the window. So a dead member costs a
   gateway one broker round trip (SIGKILL: the broker sees the socket close at once) or,
   when its connection dies silently, its keepalive and then at most one ack timeout.
10. `beat` is called at least every `contract.watchdog.BEAT_S` while the uplink makes
   progress: by the send loop in a session (idle too), by the back-off waits between
   connects, and before each connect (connect and set-up: four steps, each bounded by
   `publish_timeout_s`). A session stuck
   elsewhere stops the beats, and systemd's watchdog restarts the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt
from aiomqtt import ProtocolVersion
from tenacity import AsyncRetrying, retry_if_exception_type

from edge_agent.config.models import UplinkConfig
from edge_agent.contract import batch_v2
from edge_agent.contract.backoff import Backoff, wait_full_jitter
from edge_agent.contract.envelope import BATCH_CONTENT_TYPE
from edge_agent.contract.logs import get_logger
from edge_agent.contract.mqtt import Endpoint, ProtocolChooser, make_client
from edge_agent.contract.topics import COLLECTOR_PRESENCE_FILTER, GatewayTopics
from edge_agent.contract.watchdog import BEAT_S, no_beat, sleep_beating
from edge_agent.contract.wire import Ack, AckError, encode_batch
from edge_agent.outbox import Appended, OutboxRow, OutboxThread
from edge_agent.uplink.resend import InFlight, Pacing

log = get_logger("edge_agent.uplink.session")

LANES = (1, 0)  # alarm lane first
ALARM_LANES = (1,)
#: Rows handed over and not yet sent, per lane, as a multiple of batch_max_events; beyond
#: it the buffer is dropped and the lane fetches from the outbox again.
FRESH_MAX_BATCHES = 8

#: Batches published this soon after (re)connecting are resent after FRESH_ACK_TIMEOUT_S
#: instead of ack_timeout_s: after a broker restart the collector may resubscribe a moment
#: after us, and the broker drops what it has no subscriber for. Resends are free.
FRESH_SESSION_S = 3.0
FRESH_ACK_TIMEOUT_S = 0.5
#: A collector's `online` makes the in-flight batches be resent at most this often.
PRESENCE_RESEND_MIN_S = 1.0


@dataclass
class Batch(InFlight):
    id: int = 0  #: this session's number for it (the ack names seqs, not batches)


@dataclass
class UplinkStatus:
    """Read by the heartbeat and the status page."""

    connected: bool = False
    since: float = field(default_factory=time.time)
    protocol: str = ""
    broker: str = ""
    last_ack_at: float | None = None
    batches_sent: int = 0
    events_sent: int = 0
    events_acked: int = 0
    #: payload bytes published (resends included)
    bytes_sent: int = 0
    resends: int = 0
    #: seqs named by acks that were not in flight (stale, duplicate or forged), ignored
    ack_seqs_ignored: int = 0
    last_error: str = ""


class SessionEnded(Exception):
    """A connected session ended; reconnect with a fresh back-off."""


class Uplink:
    def __init__(
        self,
        cfg: UplinkConfig,
        endpoint: Endpoint,
        topics: GatewayTopics,
        outbox: OutboxThread,
        *,
        client_id: str,
    ) -> None:
        self.cfg = cfg
        self.endpoint = endpoint
        self.topics = topics
        self.outbox = outbox
        self.client_id = client_id
        self.status = UplinkStatus(broker=endpoint.describe())
        self._protocol = ProtocolChooser(endpoint.protocol)
        self._wake = asyncio.Event()
        self._batch_ids = itertools.count(1)
        self._was_connected = False
        self._draining = False  # connected with a backlog: log once when it is gone
        self._session_started = 0.0
        #: bumped by every fall-back: a fetch that began before one never catches a lane up
        self._generation = 0
        #: collectors' last presence seen in this session (collector id -> payload)
        self._collectors: dict[str, str] = {}
        #: set when a collector came online: resend what was in flight then (invariant 8)
        self._presence = asyncio.Event()
        self._presence_at = -PRESENCE_RESEND_MIN_S
        #: kept across sessions: it measures the collectors, not the connection
        self._pacing = Pacing(cfg.ack_timeout_s, cfg.resend_cap_s, cfg.max_inflight_batches)
        self._reset_inflight()
        #: progress mark for systemd's watchdog (invariant 10)
        self.beat: Callable[[], None] = no_beat

    def notify(self) -> None:
        """The outbox changed in a way the uplink was not told row by row (a data_loss
        report, an eviction): read it again from each lane's cursor."""
        for lane in LANES:
            self._fall_back(lane)
        self._wake.set()

    def _fall_back(self, lane: int) -> None:
        """The lane reads the outbox again; a fetch already under way cannot catch it up."""
        self._caught_up[lane] = False
        self._fresh[lane].clear()
        self._generation += 1

    def offer(self, appended: Appended) -> None:
        """The rows one commit stored (the pipeline's `on_rows`): sent from memory once
        their lane is caught up (invariant 6)."""
        if not appended.alone:
            self.notify()
            return
        for row in appended.rows:
            fresh = self._fresh[row.lane]
            fresh.append(row)
            if len(fresh) > FRESH_MAX_BATCHES * self.cfg.batch_max_events:
                self._fall_back(row.lane)  # fell behind: read the outbox instead
        self._wake.set()

    def _reset_inflight(self) -> None:
        self._inflight: dict[int, Batch] = {}
        self._batch_of: dict[int, int] = {}
        self._cursor = {lane: 0 for lane in LANES}
        #: per lane: every row up to the cursor was sent and later rows arrive by `offer`
        self._caught_up = dict.fromkeys(LANES, False)
        self._fresh: dict[int, deque[OutboxRow]] = {lane: deque() for lane in LANES}
        self._generation += 1  # a fetch under way belongs to the old session

    # ------------------------------------------------------------------ connection

    async def run(self) -> None:
        """Forever: connect, serve, and reconnect with back-off (`contract.backoff`)."""
        while True:
            retrying = AsyncRetrying(
                wait=wait_full_jitter(self.cfg.reconnect.initial_s, self.cfg.reconnect.max_s),
                retry=retry_if_exception_type(aiomqtt.MqttError),
                before_sleep=self._log_retry,
                sleep=self._sleep,
                reraise=True,
            )
            with contextlib.suppress(SessionEnded):
                async for attempt in retrying:
                    with attempt:
                        await self._connect_and_serve()
            # A session ended: back-off starts afresh, but never in a tight loop against a
            # broker that accepts and then drops us at once.
            await self._sleep(Backoff(self.cfg.reconnect.initial_s,
                                      self.cfg.reconnect.max_s).next_s())

    async def _sleep(self, seconds: float) -> None:
        await sleep_beating(seconds, self.beat)

    def _log_retry(self, state: object) -> None:
        attempt = getattr(state, "attempt_number", 0)
        sleep = getattr(getattr(state, "next_action", None), "sleep", 0.0)
        if attempt in (1, 2, 5) or attempt % 20 == 0:
            log.warning("uplink_reconnecting", broker=self.status.broker, attempt=attempt,
                        wait_s=round(sleep, 2), error=self.status.last_error)

    async def _connect_and_serve(self) -> None:
        self.beat()
        self._was_connected = False
        will = aiomqtt.Will(self.topics.status, b"offline", qos=1, retain=True)
        client = make_client(self.endpoint, self._protocol.current, identifier=self.client_id,
                             persistent=True, will=will, timeout_s=self.cfg.publish_timeout_s)
        try:
            async with client:
                await self._serve(client)
        except aiomqtt.MqttError as exc:
            self._mark_down(str(exc))
            if not self._was_connected and self._protocol.failed(exc):
                log.info("uplink_protocol_switch", broker=self.status.broker,
                         to=self._protocol.label, reason=str(exc))
            if self._was_connected:
                raise SessionEnded from exc
            raise

    def _mark_down(self, error: str) -> None:
        self.status.last_error = error
        if self.status.connected:
            self.status.connected = False
            self.status.since = time.time()
            log.warning("uplink_down", broker=self.status.broker, error=error)

    async def _serve(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self.topics.ack, qos=1)
        self._collectors.clear()
        await client.subscribe(COLLECTOR_PRESENCE_FILTER, qos=1)
        await client.publish(self.topics.status, b"online", qos=1, retain=True,
                             timeout=self.cfg.publish_timeout_s)
        self._was_connected = True
        self._reset_inflight()
        self._pacing.restart()  # the backlog leaves in slow start (resend R6)
        self.status.connected, self.status.since = True, time.time()
        self._session_started = time.monotonic()
        self.status.protocol = self._protocol.label
        self.status.last_error = ""
        backlog = self.outbox.stats().events
        self._draining = backlog > 0
        log.info("uplink_connected", broker=self.status.broker, protocol=self.status.protocol,
                 backlog=backlog)
        self._wake.set()
        try:
            await self._run_session_tasks(client)
        except asyncio.CancelledError:
            # Shutting down: say so, rather than letting the broker fire the will later.
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.publish(self.topics.status, b"offline", qos=1, retain=True,
                                     timeout=2)
            raise

    async def _run_session_tasks(self, client: aiomqtt.Client) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive_acks(client))
                tg.create_task(self._send_loop(client, tg))
                tg.create_task(self._resend_loop(client, tg))
        except* aiomqtt.MqttError as group:
            raise group.exceptions[0] from None

    # ------------------------------------------------------------------ sending

    async def _send_loop(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        while True:
            self.beat()
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BEAT_S):  # idle: still beat (invariant 10)
                        await self._wake.wait()
                continue
            self._wake.clear()
            while len(self._inflight) < self.cfg.max_inflight_batches:
                # the window holds back telemetry and records, never alarms
                lanes = LANES if len(self._inflight) < self._pacing.limit else ALARM_LANES
                rows = await self._next_rows(lanes)
                if not rows:
                    break
                batch = Batch({r.seq for r in rows}, time.monotonic(), id=next(self._batch_ids))
                batch.wait_s = self._first_wait_s(batch)
                self._inflight[batch.id] = batch
                for seq in batch.seqs:
                    self._batch_of[seq] = batch.id
                # Before publishing: an evicted row is then never reported "lost" (known
                # never delivered) when it may have reached the collector.
                self.outbox.mark_sent(rows[-1].lane, rows[-1].seq)
                # Publishes run concurrently (PUBACK round trips overlap); one that fails
                # ends the session through the task group.
                tg.create_task(self._publish(client, rows))
                self.status.batches_sent += 1
                self.status.events_sent += len(rows)

    async def _next_rows(self, lanes: tuple[int, ...] = LANES) -> list[OutboxRow]:
        for lane in lanes:
            if self._caught_up[lane]:
                rows = self._take_fresh(lane)
            else:
                generation = self._generation
                rows = await self.outbox.fetch(lane=lane, after_seq=self._cursor[lane],
                                               limit=self.cfg.batch_max_events,
                                               max_bytes=self.cfg.batch_max_bytes)
                if not rows and generation == self._generation:
                    # sent all the lane held: from now on its rows are handed over
                    self._caught_up[lane] = True
                    rows = self._take_fresh(lane)
            if rows:
                self._cursor[lane] = rows[-1].seq
                return rows
        return []

    def _take_fresh(self, lane: int) -> list[OutboxRow]:
        """Handed-over rows after the lane's cursor, within the batch limits."""
        fresh, cursor = self._fresh[lane], self._cursor[lane]
        while fresh and fresh[0].seq <= cursor:  # also read from the outbox: sent
            fresh.popleft()
        rows: list[OutboxRow] = []
        used = 0
        while fresh and len(rows) < self.cfg.batch_max_events:
            size = len(fresh[0].body.encode())
            if rows and used + size > self.cfg.batch_max_bytes:
                break
            rows.append(fresh.popleft())
            used += size
        return rows

    async def _publish(self, client: aiomqtt.Client, rows: list[OutboxRow]) -> None:
        """Publish one batch. Raising here ends the session: the outcome is unknown."""
        v2 = self.cfg.wire == "v2"
        if v2:
            try:
                payload = batch_v2.encode([r.body for r in rows])
            except ValueError as exc:  # a row that is not a JSON object: never ours, but
                # the collector reads v1 too, and quarantines that row alone there
                log.warning("wire_v2_fallback", first_seq=rows[0].seq, error=str(exc)[:200])
                v2 = False
        if not v2:
            payload = encode_batch(r.body for r in rows)
        props = None
        if self._protocol.current == ProtocolVersion.V5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            # Announced for v5 readers; the payload says the same by itself (docs/wire.md).
            props = Properties(PacketTypes.PUBLISH)
            if v2:
                props.ContentType = batch_v2.CONTENT_TYPE  # the encoding: the 5th byte
            else:
                props.ContentType = BATCH_CONTENT_TYPE
        self.status.bytes_sent += len(payload)
        await client.publish(self.topics.events, payload, qos=1,
                             properties=props, timeout=self.cfg.publish_timeout_s)

    async def _resend_loop(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        period = max(0.05, min(0.25, self.cfg.ack_timeout_s / 4))
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._presence.wait()
            now = time.monotonic()
            online_at = self._presence_at if self._presence.is_set() else 0.0
            self._presence.clear()
            for batch in [b for b in self._inflight.values()
                          if now - b.sent_at >= b.wait_s or b.sent_at <= online_at]:
                rows = await self.outbox.get(sorted(batch.seqs))
                if not rows:  # evicted meanwhile
                    self._forget(batch, batch.seqs)
                    continue
                if batch.sent_at > online_at:  # a timeout, not a presence resend (R5)
                    self._timed_out(batch, now)
                self._pacing.sent_again(batch, time.monotonic())
                self.status.resends += 1
                log.warning("ack_timeout_resend", batch=batch.id, events=len(rows),
                            attempt=batch.attempts, first_seq=rows[0].seq,
                            next_wait_s=round(batch.wait_s, 2), window=self._pacing.limit)
                tg.create_task(self._publish(client, rows))

    def _first_wait_s(self, batch: Batch) -> float:
        """The pacing's (R1); shorter for a batch of a fresh session (FRESH_SESSION_S)."""
        if batch.sent_at - self._session_started < FRESH_SESSION_S:
            return min(self.cfg.ack_timeout_s, FRESH_ACK_TIMEOUT_S)
        return self._pacing.first_wait_s()

    def _timed_out(self, batch: Batch, now: float) -> None:
        """Its ack is late: back off and shrink the window (R2, R4). The short timeout of
        a fresh session is no sign of a slow collector and counts for neither."""
        if batch.attempts == 1 and batch.wait_s < self.cfg.ack_timeout_s:
            return
        self._pacing.timed_out(batch, now)

    # ------------------------------------------------------------------ acks

    async def _receive_acks(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            if str(message.topic) != self.topics.ack:
                if message.topic.matches(COLLECTOR_PRESENCE_FILTER):
                    self.handle_presence(str(message.topic), bytes(payload),
                                         retained=bool(message.retain))
                continue
            try:
                ack = Ack.decode(payload)
            except AckError as exc:
                log.warning("ack_invalid", error=str(exc), size=len(payload))
                continue
            await self.handle_ack(ack)

    def handle_presence(self, topic: str, payload: bytes, *, retained: bool) -> None:
        """A collector's presence (invariant 8): resend at once when one comes online."""
        collector = topic.split("/")[-2][:64]
        state = payload[:16].decode("ascii", "replace").strip().lower()
        if state not in ("online", "offline"):
            return
        before = self._collectors.get(collector)
        self._collectors[collector] = state
        if len(self._collectors) > 1024:  # bounded: forget the oldest
            del self._collectors[next(iter(self._collectors))]
        if state == "offline":
            # A collector went away (its Last Will, or a clean stop): the batches it held
            # will never be acked; resend them now to the members still there (invariant 9).
            if before == "online" and not retained:
                self._resend_now(collector, state)
            return
        if before == "online" and retained:
            return
        self._resend_now(collector, state, retained=retained)

    def _resend_now(self, collector: str, state: str, *, retained: bool = False) -> None:
        """Every batch in flight now is sent again at once (bounded: once a second)."""
        now = time.monotonic()
        if now - self._presence_at < PRESENCE_RESEND_MIN_S:
            return  # a burst of presence messages resends once
        self._presence_at = now
        self._presence.set()
        log.info(f"collector_{state}", collector=collector, retained=retained,
                 inflight_batches=len(self._inflight),
                 inflight_events=len(self._batch_of))

    async def handle_ack(self, ack: Ack) -> None:
        if ack.epoch != self.outbox.epoch:
            log.info("ack_other_epoch_ignored", epoch=ack.epoch, current=self.outbox.epoch)
            return
        # Only seqs in flight count (invariant 1 and 7): the ranges are intersected with
        # them, never expanded, so a hostile or stale ack costs at most the in-flight set.
        seqs = ack.seqs_among(sorted(self._batch_of))
        ignored = ack.named() - len(seqs)
        if ignored > 0:
            self.status.ack_seqs_ignored += ignored
            log.warning("ack_seqs_not_in_flight", topic=self.topics.ack, ignored=ignored,
                        ignored_total=self.status.ack_seqs_ignored,
                        ranges=len(ack.committed) + len(ack.rejected),
                        hint="acks for rows not sent in this session are ignored (resent "
                             "rows are acked again); many of them may mean a forged ack")
        if not seqs:
            return
        self.outbox.ack(seqs)  # deleted write-behind, with the next commit
        self.status.last_ack_at = time.time()
        if ack.rejected:
            log.error("events_rejected_by_collector", ranges=ack.rejected,
                      hint="the collector quarantined them; see edge-collector quarantine")
        touched: dict[int, set[int]] = {}
        for seq in seqs:
            bid = self._batch_of.pop(seq, None)
            if bid is not None:
                touched.setdefault(bid, set()).add(seq)
        for bid, done in touched.items():
            self.status.events_acked += len(done)
            batch = self._inflight.get(bid)
            if batch is not None:
                if batch.seqs == done:
                    self._pacing.completed(batch, self._inflight.values(), time.monotonic())
                self._forget(batch, done)
        if touched and self._draining and self.outbox.waiting() == 0:
            self._draining = False
            log.info("backlog_drained", acked_total=self.status.events_acked)

    def _forget(self, batch: Batch, seqs: set[int]) -> None:
        batch.seqs -= seqs
        for seq in seqs:
            self._batch_of.pop(seq, None)
        if not batch.seqs:
            del self._inflight[batch.id]
            self._wake.set()
