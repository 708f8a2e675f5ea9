"""Polling: one loop per link. A serial bus is one queue; TCP devices poll concurrently.

Rules the scheduler keeps:
- One request at a time per link, paced by the link (3.5 character times on RTU, plus
  the bus's `pause_ms`), whoever sends it: a poll or an audited write.
- A device that fails (timeout, garbage, lost connection) or refuses every request
  (exception responses) backs off: the wait before its next poll is drawn under the one
  back-off policy (`edge_agent.contract.backoff`, full jitter) below a ceiling of
  period, 2x, 4x ... up to `max_backoff_s`, and is never shorter than the period. After
  `offline_after` failed polls it is reported OFFLINE (the pipeline emits
  `device.offline`); refusals are reported at once as ERROR with the device's exception
  code. The first good poll reports ONLINE (`device.online`).
- On a serial bus a device whose last poll got no answer is a *suspect*. Probing it
  takes the bus for its worst case (timeout plus the quiet time after it), so room is
  made first: the healthy devices due within that window are polled *early* (each at
  most once ahead of its schedule; polls keep their phase, so its rate is unchanged),
  then the suspect is probed. Live devices are never late because of a dead one. Only
  when no room can be made (a healthy device's period is shorter than the probe) does
  the suspect wait one more back-off interval and then get probed anyway.
- An exception response to one request of a poll keeps the values of the others and
  reports ERROR with the reason.
- Nothing a device or network does ends a loop: every failure is caught per poll; the
  loops themselves run under `edge_agent.sdk.supervise.supervise`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from drivers.modbus.decode import DecodeError
from drivers.modbus.device import ModbusDevice
from drivers.modbus.extractor import compile_request
from drivers.modbus.planner import ReadRequest
from drivers.modbus.transport import Link, ModbusError, ModbusExceptionResponse
from edge_agent.contract.backoff import Backoff
from edge_agent.contract.logs import get_logger
from edge_agent.sdk.api import DeviceState, EventSink, report_poll_error
from edge_agent.sdk.rules import DeviceRules

__all__ = ["TCP_BURST_MAX", "TICK_S", "DevicePoller", "SerialBusLoop", "TcpDeviceLoop",
           "tcp_slots"]

log = get_logger("drivers.modbus")

#: Loops wake at least this often, so rule heartbeats fall due between slow polls.
TICK_S = 1.0
#: TCP devices with the same period poll in bursts of at most this many (`tcp_slots`).
TCP_BURST_MAX = 100


def tcp_slots(periods: Sequence[float], start: float) -> list[float]:
    """The phase of each TCP device: devices with the same period share as few slots as
    bursts of TCP_BURST_MAX allow, slots spread evenly over the period, devices spread
    round-robin over the slots. Identical phases make identical timer deadlines."""
    by_period: dict[float, list[int]] = {}
    for index, period in enumerate(periods):
        by_period.setdefault(period, []).append(index)
    phases = [start] * len(periods)
    for period, members in by_period.items():
        slots = math.ceil(len(members) / TCP_BURST_MAX)
        for position, index in enumerate(members):
            phases[index] = start + (position % slots) * period / slots
    return phases


class DevicePoller:
    """One device: its read plan, rules, health and schedule."""

    def __init__(self, cfg: ModbusDevice, requests: Sequence[ReadRequest], rules: DeviceRules,
                 sink: EventSink, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.requests = list(requests)
        self._extractors = [compile_request(r) for r in self.requests]
        self.rules = rules
        self.sink = sink
        self.clock = clock
        self.state = DeviceState.UNKNOWN
        self.reason = ""
        self.failures = 0  # consecutive failed or refused polls
        self._backoff = Backoff(cfg.period_s, max(cfg.max_backoff_s, cfg.period_s))
        self._retry_s = cfg.period_s  # the wait drawn at the last failure
        self.suspect = False  # the last poll got no answer at all
        self.ahead = False  # the last poll was early (to make room for a suspect's probe)
        self.next_due = clock()
        self.polls = 0
        self.errors = 0
        self.last_error = ""
        self._decode_errors: dict[str, str] = {}

    @property
    def offline(self) -> bool:
        return self.state is DeviceState.OFFLINE

    async def poll(self, link: Link) -> None:
        """One poll of every request; never raises for anything but cancellation."""
        started = self.clock()
        self.polls += 1
        self.ahead = started < self.next_due
        try:
            await self._poll(link, started)
        except ModbusError as exc:
            self._failed(str(exc), started, answered=False)
        except Exception as exc:  # a bug: log it, count it, keep polling
            log.exception("modbus_poll_crashed", device=self.cfg.id, error=type(exc).__name__)
            self._failed(f"internal error: {type(exc).__name__}", started, answered=True)

    async def _poll(self, link: Link, started: float) -> None:
        observed = time.time()
        values: dict[str, Any] = {}
        refused: list[str] = []
        for req, decode in zip(self.requests, self._extractors, strict=True):
            try:
                raw = await link.read(req.table, req.start, req.count, self.cfg.unit_id,
                                      timeout_s=self.cfg.timeout_s)
            except ModbusExceptionResponse as exc:
                refused.append(str(exc))
                continue
            values.update(decode(raw))
        if refused and not values:
            self._failed("; ".join(refused), started, answered=True)
            return
        self._answered(started, refused)
        self._log_decode_errors(values)
        self.rules.update(values, observed_at=observed)

    def _answered(self, started: float, refused: list[str]) -> None:
        if self.state in (DeviceState.OFFLINE, DeviceState.ERROR) and not refused:
            log.info("modbus_device_online", device=self.cfg.id, failures=self.failures)
        self.failures = 0
        self._backoff.reset()
        self.suspect = False
        if refused:
            self.errors += 1
            self.last_error = "; ".join(refused)
            report_poll_error(self.sink, self.cfg.id, self.last_error)
            self._set_state(DeviceState.ERROR, self.last_error)
        else:
            self._set_state(DeviceState.ONLINE, "answers")
        self.next_due += self.cfg.period_s
        if self.next_due < started:  # fell behind: skip missed polls, never burst
            self.next_due = started + self.cfg.period_s

    def _failed(self, reason: str, started: float, *, answered: bool) -> None:
        """No usable answer. `answered`: the device refused (exception codes), it is there."""
        self.errors += 1
        self.failures += 1
        self.suspect = not answered
        self.last_error = reason
        report_poll_error(self.sink, self.cfg.id, reason)
        if self.failures == 1:
            log.warning("modbus_poll_failed", device=self.cfg.id, error=reason)
        if answered:
            self._set_state(DeviceState.ERROR, reason)
        elif self.failures >= self.cfg.offline_after and not self.offline:
            self.rules.reset()
            self._set_state(DeviceState.OFFLINE, f"{reason} ({self.failures} failed polls)")
            log.warning("modbus_device_offline", device=self.cfg.id, error=reason,
                        failures=self.failures)
        self._retry_s = max(self.cfg.period_s, self._backoff.next_s())
        self.next_due = started + self.backoff_s()

    def backoff_s(self) -> float:
        """The wait after the last failure: drawn below period, 2x, 4x ... after 1, 2, 3 ...
        failures (at most max_backoff_s), never below the period; the period when healthy."""
        return self._retry_s if self.failures > 0 else self.cfg.period_s

    def _set_state(self, state: DeviceState, reason: str) -> None:
        if state is self.state and (state is not DeviceState.ERROR or reason == self.reason):
            return
        self.state, self.reason = state, reason
        self.sink.device_state(self.cfg.id, state, reason)

    def _log_decode_errors(self, values: Mapping[str, Any]) -> None:
        """A point that cannot be decoded is logged when its problem starts or changes."""
        for name, value in values.items():
            if isinstance(value, DecodeError):
                if self._decode_errors.get(name) != str(value):
                    self._decode_errors[name] = str(value)
                    log.warning("modbus_decode_error", device=self.cfg.id, point=name,
                                error=str(value))
            else:
                self._decode_errors.pop(name, None)


class TcpDeviceLoop:
    """A TCP device polls on its own connection, concurrently with the others.

    Polls start on the device's slot: `phase + k * period_s`. Devices given the same
    phase (`tcp_slots`) poll in one burst, so the agent wakes once per burst instead of
    once per device: on a gateway each wake-up from idle costs tens of µs, more than the
    poll itself (docs/benchmarks.md). A device that backs off or fell behind polls at
    the first slot after it is due, so it rejoins its burst.
    """

    def __init__(self, poller: DevicePoller, link: Link, *, phase: float | None = None) -> None:
        self.poller = poller
        self.link = link
        self.phase = poller.next_due if phase is None else phase

    def slot_at(self, t: float) -> float:
        """The first slot of this device at or after `t`."""
        period = self.poller.cfg.period_s
        k = math.ceil((t - self.phase) / period - 1e-9)
        return self.phase + max(0, k) * period

    async def run(self) -> None:
        poller = self.poller
        try:
            while True:
                _honour_cancellation()
                slot = self.slot_at(poller.next_due)
                wait = slot - poller.clock()
                if wait > 0:
                    await asyncio.sleep(min(wait, TICK_S))
                else:
                    poller.next_due = slot  # on the grid: the next one is slot + period
                    await poller.poll(self.link)
                poller.rules.tick()
        finally:
            self.link.close()


def _honour_cancellation() -> None:
    """Python 3.11's asyncio.wait_for (used inside pymodbus) can swallow a cancellation
    when a reply lands in the same loop step (fixed in 3.12): the loop would then poll on
    and SIGTERM would never end the agent. Re-raise a cancellation still pending."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class SerialBusLoop:
    """All devices on one serial port share one queue, ordered by when each is due."""

    def __init__(self, pollers: Sequence[DevicePoller], link: Link) -> None:
        self.pollers = list(pollers)
        self.link = link

    async def run(self) -> None:
        try:
            while True:
                _honour_cancellation()
                poller, wait = self.pick(self.pollers[0].clock() if self.pollers else 0.0)
                if poller is None:
                    await asyncio.sleep(min(wait, TICK_S))
                else:
                    await poller.poll(self.link)
                for p in self.pollers:
                    p.rules.tick()
        finally:
            self.link.close()

    def probe_cost_s(self, poller: DevicePoller) -> float:
        """The bus time a dead device's poll takes: one timeout, then a quiet line."""
        return poller.cfg.timeout_s + self.link.quiet_s + self.link.pause_s

    def pick(self, now: float) -> tuple[DevicePoller | None, float]:
        """The device to poll now, or None and how long to wait."""
        healthy = [p for p in self.pollers if not p.suspect]
        due = [p for p in healthy if p.next_due <= now]
        if due:
            return min(due, key=lambda p: p.next_due), 0.0
        suspects = sorted((p for p in self.pollers if p.suspect), key=lambda p: p.next_due)
        for s in suspects:
            if s.next_due > now:
                break
            end = now + self.probe_cost_s(s)
            blocking = [p for p in healthy if p.next_due < end]
            if not blocking:
                return s, 0.0
            if not any(p.ahead for p in blocking):  # make room: poll them early, once
                return min(blocking, key=lambda p: p.next_due), 0.0
            if now - s.next_due >= s.backoff_s():  # no room can be made: probe anyway
                return s, 0.0
        upcoming = [p.next_due for p in self.pollers if p.next_due > now]
        return None, max(0.001, min([*upcoming, now + TICK_S]) - now)
