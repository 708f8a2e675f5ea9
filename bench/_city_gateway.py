"""One simulated gateway of the city bench: an in-memory outbox, batches, acks, resends.

It speaks the real wire format and behaves like the agent's uplink (edge_agent/uplink)
where the collector can tell: events minted with `new_event` and stamped with an epoch and
seq, batches of at most `batch_max` events (alarms first), at most `inflight` batches
unacknowledged, a batch without an ack after its ack timeout sent again with the same
ids, an event deleted only when an ack names its seq, and on every reconnect everything
unacked sent again from the oldest. Each gateway has its own MQTT connection, a
`bench._mqtt_lean.LeanClient` (not aiomqtt: the generator must not eat the cores of what
it measures; that module says why).

When to resend and how many telemetry batches may be in flight is the uplink's own code,
`edge_agent.uplink.resend` (timeouts backing off from `ack_timeout_s` to
`ack_timeout_max_s`, the congestion window and its slow start after each connect), so the
bench measures the agent's policy; `aimd=False` keeps the window at `inflight` (the
back-off alone), and `ack_timeout_max_s` equal to `ack_timeout_s` turns the back-off off.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from dataclasses import dataclass, field

from bench._mqtt_lean import LeanClient, MqttError
from edge_agent.contract.envelope import Event, Hierarchy, Retention, parse_time
from edge_agent.contract.mqtt import Endpoint
from edge_agent.contract.topics import GatewayTopics
from edge_agent.contract.wire import Ack, AckError, encode_batch
from edge_agent.uplink.resend import InFlight, Pacing

ALARM, OTHER = 1, 0
LANES = (ALARM, OTHER)


@dataclass(frozen=True, slots=True)
class Window:
    """The uplink settings the simulated gateways use (the agent's defaults)."""

    batch_max: int = 200
    inflight: int = 8
    ack_timeout_s: float = 5.0
    publish_timeout_s: float = 10.0
    ack_timeout_max_s: float = 30.0
    aimd: bool = True


@dataclass(slots=True)
class Stored:
    body: str
    lane: int
    created: float  # wall clock of minting (the event's `time`)


@dataclass
class Counters:
    """Shared by every gateway of one bench run."""

    offered: int = 0
    acked: int = 0
    batches: int = 0
    resends: int = 0
    #: events carried by those resends (each one a duplicate at the store unless its
    #: first copy was shed or lost)
    resent_events: int = 0
    reconnects: int = 0
    ack_ignored: int = 0
    #: (phase, latency s): the ack's arrival minus the event's time, per event
    latencies: dict[str, list[float]] = field(default_factory=dict)
    phase: str = "warmup"


class SimGateway:
    def __init__(self, hierarchy: Hierarchy, endpoint: Endpoint, window: Window,
                 counters: Counters) -> None:
        self.hierarchy = hierarchy
        self.topics = GatewayTopics(hierarchy.district, hierarchy.community, hierarchy.gateway)
        self.endpoint, self.window, self.counters = endpoint, window, counters
        self.epoch = os.urandom(8).hex()
        self.last_seq = 0
        self.outbox: dict[int, Stored] = {}
        self.unsent: dict[int, deque[int]] = {lane: deque() for lane in LANES}
        self.inflight: dict[int, InFlight] = {}
        self.batch_of: dict[int, int] = {}
        self._batch_ids = itertools.count(1)
        self.pacing = Pacing(window.ack_timeout_s, window.ack_timeout_max_s, window.inflight,
                             aimd=window.aimd)
        self._wake = asyncio.Event()
        self._client: LeanClient | None = None
        self.connected = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()

    # ------------------------------------------------------------------ the outbox

    def add(self, event: Event) -> None:
        """Commit one minted event to the in-memory outbox with the next seq."""
        self.last_seq += 1
        lane = ALARM if event.retention is Retention.ALARM else OTHER
        created = event_time(event)
        self.outbox[self.last_seq] = Stored(event.stamped(self.epoch, self.last_seq).to_json(),
                                            lane, created)
        self.unsent[lane].append(self.last_seq)
        self.counters.offered += 1
        self.drained.clear()
        self._wake.set()

    @property
    def waiting(self) -> int:
        return len(self.outbox)

    # ------------------------------------------------------------------ the session

    async def run(self, connects: asyncio.Semaphore | None = None) -> None:
        """Connect, send and take acks until cancelled; reconnect after any MQTT error."""
        ep = self.endpoint
        while True:
            client = LeanClient(ep.host, ep.port, self.hierarchy.gateway,
                                keepalive_s=ep.keepalive_s, username=ep.username,
                                password=ep.password.get_secret_value() if ep.password else None,
                                on_message=self._on_message,
                                timeout_s=self.window.publish_timeout_s)
            try:
                await self._connect(client, connects)
                try:
                    await client.subscribe(self.topics.ack, qos=1)
                    self._client = client
                    self._restart_from_oldest()
                    self.connected.set()
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(client.closed())  # raises when the connection drops
                        tg.create_task(self._send_loop(client, tg))
                finally:
                    client.disconnect()  # never waits, even on a broken socket
            except* (MqttError, TimeoutError):
                self.counters.reconnects += 1
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(0.2)

    @staticmethod
    async def _connect(client: LeanClient, connects: asyncio.Semaphore | None) -> None:
        """Connect, at most `connects` gateways at a time (the broker's listen backlog)."""
        if connects is None:
            await client.connect()
            return
        async with connects:
            await client.connect()

    def _restart_from_oldest(self) -> None:
        self.inflight.clear()
        self.batch_of.clear()
        self.pacing.restart()  # as the uplink does on every (re)connect
        for lane in LANES:
            self.unsent[lane] = deque(s for s, row in self.outbox.items() if row.lane == lane)
        self._wake.set()

    async def _send_loop(self, client: LeanClient, tg: asyncio.TaskGroup) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self.inflight) < self.window.inflight:
                lanes = LANES if len(self.inflight) < self.pacing.limit else (ALARM,)
                seqs = self._next_seqs(lanes)
                if not seqs:
                    break
                bid = next(self._batch_ids)
                self.inflight[bid] = InFlight(set(seqs), time.monotonic(),
                                           wait_s=self.pacing.first_wait_s())
                for s in seqs:
                    self.batch_of[s] = bid
                self.counters.batches += 1
                tg.create_task(self._publish(client, seqs))

    def _next_seqs(self, lanes: tuple[int, ...] = LANES) -> list[int]:
        for lane in lanes:
            queue, out = self.unsent[lane], []
            while queue and len(out) < self.window.batch_max:
                seq = queue.popleft()
                if seq in self.outbox:
                    out.append(seq)
            if out:
                return out
        return []

    async def _publish(self, client: LeanClient, seqs: list[int]) -> None:
        payload = encode_batch(self.outbox[s].body for s in seqs if s in self.outbox)
        await client.publish(self.topics.events, payload, qos=1)  # timeout: publish_timeout_s

    def resend_due(self, now: float) -> None:
        """Publish again every batch whose ack is overdue (called by the bench's ticker)."""
        client = self._client
        if client is None:
            return
        for batch in list(self.inflight.values()):
            if now - batch.sent_at < batch.wait_s:
                continue
            seqs = sorted(s for s in batch.seqs if s in self.outbox)
            self.pacing.timed_out(batch, now)
            self.pacing.sent_again(batch, now)
            self.counters.resends += 1
            self.counters.resent_events += len(seqs)
            task = asyncio.get_running_loop().create_task(self._publish(client, seqs))
            task.add_done_callback(_ignore_result)

    # ------------------------------------------------------------------ acks

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.on_ack(payload)  # the only subscription is the gateway's ack topic

    def on_ack(self, payload: bytes | bytearray) -> None:
        try:
            ack = Ack.decode(payload)
        except AckError:
            self.counters.ack_ignored += 1
            return
        if ack.epoch != self.epoch:
            self.counters.ack_ignored += 1
            return
        found = ack.seqs_among(sorted(self.batch_of))
        now, mono = time.time(), time.monotonic()
        lat = self.counters.latencies.setdefault(self.counters.phase, [])
        for seq in found:
            bid = self.batch_of.pop(seq)
            row = self.outbox.pop(seq, None)
            if row is not None:
                self.counters.acked += 1
                lat.append(now - row.created)
            batch = self.inflight.get(bid)
            if batch is not None:
                batch.seqs.discard(seq)
                if not batch.seqs:
                    del self.inflight[bid]
                    self.pacing.completed(batch, self.inflight.values(), mono)
        if found:
            self._wake.set()
        if not self.outbox:
            self.drained.set()


def event_time(event: Event) -> float:
    return parse_time(event.time).timestamp()


def _ignore_result(task: asyncio.Task[None]) -> None:
    """A failed resend is like a lost one: the batch stays in flight and is resent again."""
    if not task.cancelled():
        task.exception()
