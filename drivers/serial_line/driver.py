"""The serial line driver: one task per device, reading lines until cancelled.

Per device: open the port (pyserial, non-blocking, read on the event loop), split the
byte stream into lines, check each line's checksum, decode it, match it against the
frames, then hand the frame's values to the `events:` rules (`DeviceRules.update`) and
its alarms to the per-zone `AlarmTracker`. Nothing a device does stops the task: a bad
line is counted and logged (rate-limited, a short prefix at most), a port that fails is
closed and reopened with back-off (`edge_agent.contract.backoff`), and the device's
state goes to the sink (`device.offline` / `device.online`).

Online means: the port is open and, when `idle_timeout_s` is set, a valid frame came
within that time. With an idle timeout the device turns online at its first valid
frame (an open port says nothing about the panel behind it); without one, as soon as
the port opens.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent.contract.backoff import Backoff
from edge_agent.contract.logs import get_logger
from edge_agent.sdk.api import (
    DeviceState,
    EventSink,
    credential_salt,
    report_poll_error,
    restored_alarms,
)
from edge_agent.sdk.config import DeviceConfig
from edge_agent.sdk.rules import DeviceRules

from .alarms import AlarmTracker
from .framing import (
    FrameError,
    LineSplitter,
    Matched,
    Overlong,
    Reason,
    decode,
    match_frame,
    preview,
    verify_checksum,
)
from .options import SerialLineDevice
from .port import PortError, SerialPort

__all__ = ["BAD_LOG_INTERVAL_S", "SerialLineDriver"]

log = get_logger("drivers.serial_line")

#: At most one log line about bad lines per device per this many seconds (the first at once).
BAD_LOG_INTERVAL_S = 60.0
#: Open failures with an unchanged reason are logged again after this long.
OPEN_LOG_INTERVAL_S = 300.0
#: How often rule heartbeats and the idle timeout are checked (at most).
TICK_S = 1.0
#: Restart pause for a device task that crashed (a bug, not a device problem).
CRASH_PAUSE_S = 5.0


class _BadLines:
    """Counts rejected lines; logs the first at once, then one summary per interval."""

    def __init__(self, device: str, prefix_chars: int, clock: Callable[[], float]) -> None:
        self.device = device
        self.prefix_chars = prefix_chars
        self.clock = clock
        self.window: Counter[str] = Counter()
        self.last_log: float | None = None

    def add(self, reason: Reason, message: str, sample: bytes | str | None) -> None:
        self.window[reason.value] += 1
        now = self.clock()
        if self.last_log is not None and now - self.last_log < BAD_LOG_INTERVAL_S:
            return
        extra: dict[str, Any] = {}
        if sample is not None:
            extra["sample"] = preview(sample, self.prefix_chars)
        log.warning("serial_line_bad_line", device=self.device, reason=reason.value,
                    detail=message, rejected=dict(self.window), **extra)
        self.window.clear()
        self.last_log = now


class _Device:
    """One configured device: its port loop, its frames, rules and alarms."""

    def __init__(self, cfg: SerialLineDevice, sink: EventSink, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.sink = sink
        self.clock = clock
        self.wall = wall
        self.splitter = LineSplitter(cfg.delimiter_bytes, cfg.max_line_bytes)
        self.frames = cfg.compiled_frames()
        self.checksum = cfg.checksum.compiled if cfg.checksum is not None else None
        self.rules = (DeviceRules(cfg.id, cfg.rules, sink, salt=credential_salt(sink))
                      if cfg.rules else None)
        self.alarms = AlarmTracker(cfg.id, sink)
        self.alarms.restore([spec for frame in cfg.frames for spec in frame.alarms],
                            restored_alarms(sink, cfg.id))
        self.counters: dict[str, int] = {f.count: 0 for f in cfg.frames if f.count}
        self.stats: Counter[str] = Counter()
        self.bad = _BadLines(cfg.id, cfg.log_line_prefix, clock)
        self.state = DeviceState.UNKNOWN
        self.reason = ""
        self.port_open = False
        self.last_frame = clock()
        self.rejected_since_frame: Counter[str] = Counter()
        self.frames_this_open = 0
        self.blocked_by: str | None = None  # another device already uses this port
        self._seed_counters()

    # ------------------------------------------------------------------ tasks

    async def run(self) -> None:
        if self.blocked_by is not None:
            self.set_state(DeviceState.OFFLINE, f"port {self.cfg.port} is already used by "
                                                f"device `{self.blocked_by}`; not opened")
            await asyncio.Event().wait()  # nothing to do, forever
        ticker = asyncio.create_task(self.ticker(), name=f"serial_line:{self.cfg.id}:tick")
        try:
            await self.serve()
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)

    async def serve(self) -> None:
        """Open, read, reopen: forever."""
        spec = self.cfg.reopen_backoff
        backoff = Backoff(spec.initial_s, spec.max_s)
        last_logged: tuple[str, float] | None = None
        while True:
            try:
                port = await SerialPort.open(self.cfg)
            except PortError as exc:
                reason = f"cannot open: {exc}"
                delay = backoff.next_s()
                now = self.clock()
                if last_logged is None or last_logged[0] != reason \
                        or now - last_logged[1] >= OPEN_LOG_INTERVAL_S:
                    log.warning("serial_line_open_failed", device=self.cfg.id, error=str(exc),
                                retry_in_s=round(delay, 2))
                    last_logged = (reason, now)
                report_poll_error(self.sink, self.cfg.id, reason)
                self.go_offline(reason)
                await asyncio.sleep(delay)
                continue
            last_logged = None
            opened_at = self.clock()
            with port:
                self.on_open()
                reason = await self.pump(port)
            self.port_open = False
            healthy = self.frames_this_open > 0 or self.clock() - opened_at >= spec.max_s
            if healthy:
                backoff.reset()
            delay = backoff.next_s()
            log.warning("serial_line_port_lost", device=self.cfg.id, error=reason,
                        retry_in_s=round(delay, 2))
            report_poll_error(self.sink, self.cfg.id, reason)
            self.go_offline(reason)
            await asyncio.sleep(delay)

    async def pump(self, port: SerialPort) -> str:
        """Read and handle bytes until the port fails; returns why it stopped."""
        while True:
            try:
                chunk = await port.read()
            except PortError as exc:
                return str(exc)
            try:
                self.feed(chunk, self.wall())
            except Exception as exc:  # a bug here must not kill the port loop
                log.exception("serial_line_internal_error", device=self.cfg.id,
                              error=type(exc).__name__)
                self.splitter.reset()
            await asyncio.sleep(0)  # a flooding port must not starve the other tasks

    async def ticker(self) -> None:
        idle = self.cfg.idle_timeout_s
        period = min(TICK_S, idle / 4) if idle > 0 else TICK_S
        while True:
            await asyncio.sleep(period)
            try:
                self.tick()
            except Exception as exc:
                log.exception("serial_line_internal_error", device=self.cfg.id,
                              error=type(exc).__name__)

    # ------------------------------------------------------------------ state

    def set_state(self, state: DeviceState, reason: str) -> None:
        if state == self.state and reason == self.reason:
            return
        self.state, self.reason = state, reason
        try:
            self.sink.device_state(self.cfg.id, state, reason)
        except Exception as exc:  # the sink never raises; never let it stop us either
            log.error("serial_line_sink_failed", device=self.cfg.id, error=type(exc).__name__)

    def on_open(self) -> None:
        self.port_open = True
        self.splitter.reset()
        self.frames_this_open = 0
        self.last_frame = self.clock()
        self.rejected_since_frame.clear()
        self.stats["opens"] += 1
        log.info("serial_line_port_open", device=self.cfg.id, port=str(self.cfg.port),
                 baudrate=self.cfg.baudrate)
        if self.cfg.idle_timeout_s <= 0:
            self.set_state(DeviceState.ONLINE, f"port {self.cfg.port} open")

    def go_offline(self, reason: str) -> None:
        was = self.state
        self.set_state(DeviceState.OFFLINE, reason)
        if was is not DeviceState.OFFLINE and self.rules is not None:
            self.rules.reset()  # readings are sent afresh on return; alarms stay raised
            self._seed_counters()

    def tick(self) -> None:
        if self.rules is not None:
            self.rules.tick()
        self.alarms.settle(self.wall())
        idle = self.cfg.idle_timeout_s
        if idle <= 0 or not self.port_open or self.state is DeviceState.OFFLINE:
            return
        quiet = self.clock() - self.last_frame
        if quiet < idle:
            return
        if self.frames_this_open == 0:
            reason = f"no valid frame within {idle:g} s of opening {self.cfg.port}"
        else:
            reason = f"no valid frame for {idle:g} s"
        if self.rejected_since_frame:
            top = ", ".join(f"{k} {v}" for k, v in self.rejected_since_frame.most_common(3))
            reason += f" ({sum(self.rejected_since_frame.values())} lines rejected: {top}; " \
                      "check baudrate, parity and the frames)"
        log.warning("serial_line_idle", device=self.cfg.id, reason=reason)
        self.go_offline(reason)

    def _seed_counters(self) -> None:
        """Give record rules their baseline, so the first counted line is a record."""
        if self.rules is not None and self.counters:
            self.rules.update(dict(self.counters), self.wall())

    # ------------------------------------------------------------------ lines

    def feed(self, chunk: bytes, observed_at: float) -> None:
        self.stats["bytes"] += len(chunk)
        for item in self.splitter.feed(chunk):
            self.handle(item, observed_at)

    def handle(self, item: bytes | Overlong, observed_at: float) -> None:
        self.stats["lines"] += 1
        if isinstance(item, Overlong):
            self.reject(FrameError(Reason.TOO_LONG, f"a line of {item.length} bytes is longer "
                                   f"than max_line_bytes ({self.cfg.max_line_bytes})",
                                   item.head))
            return
        line = item.strip() if self.cfg.strip else item
        if not line:
            self.stats["blank"] += 1
            return
        try:
            payload = verify_checksum(line, self.checksum) if self.checksum else line
            text = decode(payload, self.cfg.encoding, self.cfg.decode_errors,
                          strip=self.cfg.strip)
            matched = match_frame(text, self.frames)
        except FrameError as exc:
            if exc.sample is None or exc.reason in (Reason.CHECKSUM_MISSING,
                                                    Reason.CHECKSUM_MISMATCH):
                exc.sample = line
            self.reject(exc)
            return
        self.accept(matched, observed_at)

    def reject(self, exc: FrameError) -> None:
        self.stats[f"rejected.{exc.reason.value}"] += 1
        self.rejected_since_frame[exc.reason.value] += 1
        self.bad.add(exc.reason, str(exc), exc.sample)

    def accept(self, matched: Matched, observed_at: float) -> None:
        frame = matched.frame
        spec = self.cfg.frames[frame.index]
        self.stats["frames"] += 1
        self.stats[f"frame.{frame.name}"] += 1
        self.frames_this_open += 1
        self.last_frame = self.clock()
        self.rejected_since_frame.clear()
        if self.state is not DeviceState.ONLINE:
            self.set_state(DeviceState.ONLINE, "valid frames received")
        values = dict(matched.values)
        if spec.count is not None:
            self.counters[spec.count] += 1
            values[spec.count] = self.counters[spec.count]
        if values and self.rules is not None:
            self.rules.update(values, observed_at)
        if spec.clears_all:
            self.alarms.clear_all(spec.clears_all, observed_at)
        for alarm in spec.alarms:
            self.alarms.apply(alarm, matched.groups, observed_at)


class SerialLineDriver:
    """All `serial_line` devices of one gateway; each runs (and restarts) on its own."""

    def __init__(self, devices: Sequence[DeviceConfig], sink: EventSink) -> None:
        self.devices: list[_Device] = []
        owners: dict[str, str] = {}
        for cfg in devices:
            if not isinstance(cfg, SerialLineDevice):
                raise TypeError(f"device `{cfg.id}` is not a serial_line device "
                                f"({type(cfg).__name__}); validate it with the driver's options")
            dev = _Device(cfg, sink)
            key = os.path.normpath(str(cfg.port))
            if key in owners:
                dev.blocked_by = owners[key]
                log.error("serial_line_port_shared", device=cfg.id, port=str(cfg.port),
                          owner=owners[key], hint="one serial port, one device entry")
            owners.setdefault(key, cfg.id)
            self.devices.append(dev)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters by device: bytes, lines, frames, rejected.<reason>, opens, ..."""
        return {dev.cfg.id: dict(dev.stats) for dev in self.devices}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for dev in self.devices:
                tg.create_task(_keep_running(dev), name=f"serial_line:{dev.cfg.id}")


async def _keep_running(dev: _Device) -> None:
    """A crash in one device's task (a bug) restarts that device only."""
    while True:
        try:
            await dev.run()
        except Exception as exc:
            log.exception("serial_line_device_crashed", device=dev.cfg.id,
                          error=type(exc).__name__)
            dev.port_open = False
        await asyncio.sleep(CRASH_PAUSE_S)
