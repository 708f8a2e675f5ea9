"""What the city bench's gateways report, minted with the contract's `new_event`.

Per gateway: a `gateway.heartbeat` every `heartbeat_s` (random phase), on-change telemetry
(`smoke.reading`, `water.level`) and alarms that are raised and later cleared under the same
`alarm_id` (`smoke.alarm`, `water.leak`). The total rate is shared out at random: each tick
mints `rate × dt` events (the fraction carried over) on random gateways.
"""

from __future__ import annotations

import heapq
import random
import time
from typing import Any

from bench._city_gateway import SimGateway
from edge_agent.contract.envelope import Event, Hierarchy, new_event, new_ulid

#: Share of the non-heartbeat events that are alarms (raise or clear).
ALARM_SHARE = 0.02


class Minter:
    """Mints one gateway's events; remembers which alarm is open."""

    def __init__(self, hierarchy: Hierarchy, rng: random.Random) -> None:
        self.hierarchy, self.rng = hierarchy, rng
        self.open_alarm: tuple[str, str, str] | None = None  # (type, device, alarm_id)
        self.started = time.time()

    def heartbeat(self, waiting: int, at: float | None = None) -> Event:
        now = time.time() if at is None else at
        return new_event(self.hierarchy, "gateway", "gateway.heartbeat",
                         {"uptime_s": round(max(0.0, now - self.started), 1),
                          "outbox_events": waiting}, observed_at=at)

    def change(self, at: float | None = None) -> Event:
        if self.rng.random() < ALARM_SHARE:
            return self.alarm(at)
        rng = self.rng
        if rng.random() < 0.7:
            return new_event(self.hierarchy, f"sd-{rng.randrange(40):03d}", "smoke.reading",
                             {"density_db_m": round(rng.uniform(0, 0.05), 3),
                              "temperature_c": round(rng.gauss(24, 2), 1),
                              "battery_pct": float(rng.randrange(60, 101))}, observed_at=at)
        return new_event(self.hierarchy, f"wl-{rng.randrange(10):02d}", "water.level",
                         {"level_m": round(rng.uniform(0.5, 3.0), 2)}, observed_at=at)

    def alarm(self, at: float | None = None) -> Event:
        data: dict[str, Any]
        if self.open_alarm is None:
            type_, device = self.rng.choice([("smoke.alarm", "sd-001"), ("water.leak", "wk-01")])
            self.open_alarm = (type_, device, new_ulid())
            data = {"state": "raised", "alarm_id": self.open_alarm[2]}
        else:
            type_, device, alarm_id = self.open_alarm
            self.open_alarm = None
            data = {"state": "cleared", "alarm_id": alarm_id}
        return new_event(self.hierarchy, device, type_, data, observed_at=at)


class Traffic:
    """The steady load of many gateways: `tick()` mints what is due since the last tick."""

    def __init__(self, gateways: list[SimGateway], rate: float, heartbeat_s: float,
                 rng: random.Random) -> None:
        self.gateways, self.rng = gateways, rng
        self.minters = [Minter(g.hierarchy, rng) for g in gateways]
        self.heartbeat_s = heartbeat_s
        hb_rate = len(gateways) / heartbeat_s if heartbeat_s > 0 else 0.0
        #: on-change events per second: what the total leaves after the heartbeats
        self.change_rate = max(0.0, rate - hb_rate)
        self._heartbeats: list[tuple[float, int]] = []
        self._carry = 0.0
        self._last = time.monotonic()

    def start(self) -> None:
        """From now on: nothing is owed for the time before (connecting, filling backlogs)."""
        now = self._last = time.monotonic()
        self._heartbeats = [(now + self.rng.uniform(0, self.heartbeat_s), i)
                            for i in range(len(self.gateways))]
        heapq.heapify(self._heartbeats)
        self._carry = 0.0

    def tick(self) -> int:
        now = time.monotonic()
        due = self.change_rate * (now - self._last) + self._carry
        self._last = now
        count = int(due)
        self._carry = due - count
        for _ in range(count):
            i = self.rng.randrange(len(self.gateways))
            self.gateways[i].add(self.minters[i].change())
        if self.heartbeat_s > 0:
            while self._heartbeats and self._heartbeats[0][0] <= now:
                at, i = heapq.heappop(self._heartbeats)
                self.gateways[i].add(self.minters[i].heartbeat(self.gateways[i].waiting))
                count += 1
                heapq.heappush(self._heartbeats, (at + self.heartbeat_s, i))
        return count


def fill_backlog(gateway: SimGateway, events: int, span_s: float, rng: random.Random) -> None:
    """A gateway whose uplink was down for `span_s`: `events` spread over that time, in its
    outbox before it connects (heartbeats among them, as the agent keeps writing them)."""
    minter = Minter(gateway.hierarchy, rng)
    start = time.time() - span_s
    step = span_s / max(1, events)
    every_hb = max(2, events // max(1, int(span_s // 60)))
    for i in range(events):
        at = start + i * step
        event = minter.heartbeat(i, at) if i % every_hb == 0 else minter.change(at)
        gateway.add(event)
