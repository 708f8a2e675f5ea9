"""Simulated devices: a realistic mix of readings and alarms with no hardware.

Each device is a smoke detector, a water sensor or a gate controller that reports
every `period_s` and now and then raises an alarm that clears after a while.
Used by the README demo, the tests and the benchmarks (a high `burst` makes load).

Imports `edge_agent.sdk` and `edge_agent.contract` only.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from edge_agent.sdk.api import DeviceState, DriverSpec, EventSink
from edge_agent.sdk.config import DeviceConfig


class SimulatedDevice(DeviceConfig):
    kind: Literal["smoke", "water", "gate"] = Field(description="what the device pretends to be")
    period_s: float = Field(default=5.0, gt=0, le=3600, description="seconds between reports")
    alarm_every_s: float = Field(default=600.0, gt=0,
                                 description="mean seconds between alarms (exponential)")
    alarm_duration_s: float = Field(default=30.0, gt=0, description="seconds an alarm stays up")
    burst: int = Field(default=1, ge=1, le=10000,
                       description="readings per period (load generation)")
    seed: int | None = Field(default=None, description="random seed for repeatable runs")


class _Device:
    def __init__(self, cfg: SimulatedDevice, sink: EventSink) -> None:
        self.cfg = cfg
        self.sink = sink
        self.rng = random.Random(cfg.seed if cfg.seed is not None else cfg.id)
        self.alarm_id: str | None = None
        self.alarm_until = 0.0
        self.next_alarm = time.monotonic() + self.rng.expovariate(1 / cfg.alarm_every_s)
        self.battery = self.rng.uniform(70, 100)
        self.door_open = False

    async def run(self) -> None:
        self.sink.device_state(self.cfg.id, DeviceState.ONLINE, "simulated")
        period = self.cfg.period_s
        next_tick = time.monotonic() + self.rng.uniform(0, period)  # spread start-up
        while True:
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick += period
            if next_tick < time.monotonic():  # fell behind (suspend, overload): skip, don't burst
                next_tick = time.monotonic() + period
            for _ in range(self.cfg.burst):
                self.report()
            self.maybe_alarm()

    def report(self) -> None:
        r, dev = self.rng, self.cfg.id
        self.battery = max(0.0, self.battery - r.uniform(0, 0.001))
        battery = round(self.battery, 1)
        if self.cfg.kind == "smoke":
            density = 0.9 if self.alarm_id else r.uniform(0.0, 0.05)
            self.sink.emit(dev, "smoke.reading", {"density_db_m": round(density, 3),
                                                  "temperature_c": round(r.gauss(24, 1.5), 1),
                                                  "battery_pct": battery})
        elif self.cfg.kind == "water":
            level = r.gauss(1.2, 0.02) + (0.5 if self.alarm_id else 0)
            self.sink.emit(dev, "water.level", {"level_m": round(level, 3), "battery_pct": battery})
            self.sink.emit(dev, "water.pressure", {"pressure_kpa": round(r.gauss(310, 6), 1)})
        else:
            card = f"{r.randrange(10**8):08d}"
            digest = hashlib.sha256(f"sim-salt:{card}".encode()).hexdigest()
            self.sink.emit(dev, "gate.access", {
                "result": "granted" if r.random() < 0.95 else "denied",
                "credential_hash": f"sha256:{digest}", "method": r.choice(["card", "face", "qr"]),
                "direction": r.choice(["in", "out"])})
            self.door_open = not self.door_open
            self.sink.emit(dev, "gate.state", {"door": "open" if self.door_open else "closed",
                                               "lock": "unlocked" if self.door_open else "locked"})

    def maybe_alarm(self) -> None:
        now = time.monotonic()
        alarm_type = {"smoke": "smoke.alarm", "water": "water.leak",
                      "gate": "gate.forced_open"}[self.cfg.kind]
        if self.alarm_id is None and now >= self.next_alarm:
            self.alarm_id = f"{self.cfg.id}-{int(time.time() * 1000)}"
            self.alarm_until = now + self.cfg.alarm_duration_s
            self.sink.emit(self.cfg.id, alarm_type, {"state": "raised", "alarm_id": self.alarm_id})
        elif self.alarm_id is not None and now >= self.alarm_until:
            self.sink.emit(self.cfg.id, alarm_type, {"state": "cleared", "alarm_id": self.alarm_id})
            self.alarm_id = None
            self.next_alarm = now + self.rng.expovariate(1 / self.cfg.alarm_every_s)


class SimulatedDriver:
    def __init__(self, devices: Sequence[DeviceConfig], sink: EventSink) -> None:
        self.devices = [_Device(d, sink) for d in devices if isinstance(d, SimulatedDevice)]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for dev in self.devices:
                tg.create_task(dev.run())


DRIVER = DriverSpec(name="simulated", options=SimulatedDevice, build=SimulatedDriver,
                    summary="simulated smoke, water and gate devices")
