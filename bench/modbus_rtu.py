"""Modbus RTU throughput: registers/s on a paced bus vs the RS-485 physical limit.

    .venv/bin/python bench/modbus_rtu.py [--seconds 20] [--bauds 9600,115200]

Set-up: a socat pty pair; on one end `edge-agent simulate --rtu ... --pace` serves a
125-register map (one unit, input registers 0-124, 8N2: 11-bit characters) in its own
process; on the other end the agent's Modbus driver (`ModbusDriver`: the bus loop,
the poller and the Link, exactly as `edge-agent run` builds them) polls it as fast as
it is allowed (period 1 ms: every poll is due at once, so the bus is never idle except
for the pauses the driver keeps).

Pacing: a pty moves bytes instantly and ignores the baud rate, so the simulator delays
each reply by the time the frames would take on the wire
(`drivers.modbus.simulator.server.rtu_transaction_s`): request (8 bytes) + reply (5 + 2 x 125
bytes) at 11 bits per character, plus the 3.5-character silence between request and
reply (1.75 ms above 19,200 baud, as the Modbus serial line spec recommends). The
silence after the reply is the driver's own pause (3.5 characters of its line
settings), so a slow driver shows as a shortfall.

Physical limit: 125 registers per (request + reply + two silences):
~404 registers/s at 9,600 baud and ~4,370 at 115,200.
Rounds: `driver` (the whole poller), `link` (Link.read in a loop with the same pause),
and `unpaced` (no pacing: what the pty, pymodbus and the driver manage at all).
Target: >= 80 % of the physical limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench._common import emit, summary  # noqa: E402
from drivers.modbus import profile as profile_module  # noqa: E402
from drivers.modbus.device import ModbusDevice  # noqa: E402
from drivers.modbus.driver import ModbusDriver  # noqa: E402
from drivers.modbus.points import Table  # noqa: E402
from drivers.modbus.rtu_link import RtuLink  # noqa: E402
from drivers.modbus.simulator.server import rtu_transaction_s, silence_s  # noqa: E402
from drivers.modbus.transport import SerialSettings  # noqa: E402
from edge_agent.contract.logs import configure  # noqa: E402
from edge_agent.sdk.api import DeviceState, NullSink  # noqa: E402

REGISTERS = 125
BITS_PER_CHAR = 11  # 8N2 here (8E1 is the other 11-bit framing; a pty refuses parity)
PROFILE = "bench-rtu-125"


def write_profile(folder: Path) -> Path:
    lines = [f"name: {PROFILE}",
             "description: 125 input registers, one full FC4 read (bench/modbus_rtu.py)",
             "points:"]
    lines += [f"  - {{name: r{i:03d}, table: input_register, address: {i}, type: uint16}}"
              for i in range(REGISTERS)]
    path = folder / f"{PROFILE}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def physical_limit(baud: int) -> float:
    """Registers/s of back-to-back 125-register reads on the wire (11-bit characters)."""
    per_request = rtu_transaction_s(4, REGISTERS, baudrate=baud, bits_per_char=BITS_PER_CHAR) \
        + silence_s(baud, BITS_PER_CHAR)
    return REGISTERS / per_request


class CountingSink(NullSink):
    def __init__(self) -> None:
        self.events = 0
        self.states: list[DeviceState] = []

    def emit(self, device: str, type_: str, data: dict[str, Any], *, severity: Any = None,
             observed_at: float | None = None) -> None:
        self.events += 1

    def device_state(self, device: str, state: DeviceState, reason: str = "") -> None:
        if not self.states or self.states[-1] != state:
            self.states.append(state)


@contextlib.contextmanager
def pty_pair(folder: Path) -> Any:
    a, b = folder / "ttySIM", folder / "ttyAGENT"
    for path in (a, b):
        path.unlink(missing_ok=True)
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            if time.monotonic() > deadline:
                raise SystemExit("socat made no ptys (apt-get install socat)")
            time.sleep(0.02)
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(5)


@contextlib.contextmanager
def simulator(profile: Path, port: str, baud: int, pace: bool, log: Path) -> Any:
    argv = [sys.executable, "-m", "edge_agent", "simulate", "--profile", str(profile),
            "--rtu", port, "--baudrate", str(baud), "--stopbits", "2", "--log-level", "warning"]
    if pace:
        argv.append("--pace")
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out)
    try:
        time.sleep(0.3)
        deadline = time.monotonic() + 20
        while b"simulate: 1 unit(s)" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the simulator did not start; see {log}")
            time.sleep(0.05)
        time.sleep(0.5)  # the summary line comes just before the server opens the port
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


async def run_driver(port: str, baud: int, seconds: float) -> dict[str, Any]:
    device = ModbusDevice.model_validate({
        "id": "rtu-bench", "driver": "modbus", "profile": PROFILE, "unit_id": 1,
        "rtu": {"port": port, "baudrate": baud, "stopbits": 2}, "period_s": 0.001,
        "timeout_s": 1.0})
    sink = CountingSink()
    driver = ModbusDriver([device], sink)
    poller = driver.bus_loops[0].pollers[0]
    task = asyncio.create_task(driver.run())
    try:
        while poller.polls < 2:  # connected and warm
            await asyncio.sleep(0.01)
            if task.done():
                task.result()
        polls0, t0 = poller.polls, time.perf_counter()
        await asyncio.sleep(seconds)
        polls, elapsed = poller.polls - polls0, time.perf_counter() - t0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return {"polls": polls, "seconds": round(elapsed, 2),
            "registers_per_s": round(polls * REGISTERS / elapsed, 1),
            "errors": poller.errors, "pause_ms": round(_pause_s(driver) * 1000, 3)}


def _pause_s(driver: ModbusDriver) -> float:
    """The silence the driver keeps after a reply (where it lives moved between versions)."""
    bus = driver.bus_loops[0]
    return float(getattr(bus.link, "pause_s", getattr(bus, "pause_s", 0.0)))


async def run_link(port: str, baud: int, seconds: float) -> dict[str, Any]:
    settings = SerialSettings(port, baud, 8, "N", 2)
    link = RtuLink.for_port(settings, 1.0)
    # a Link that keeps the inter-frame silence itself has `pause_s`; else keep it here
    pause = 0.0 if hasattr(link, "pause_s") else silence_s(baud, BITS_PER_CHAR)
    try:
        await link.read(Table.INPUT_REGISTER, 0, REGISTERS, 1)
        reads, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await link.read(Table.INPUT_REGISTER, 0, REGISTERS, 1)
            reads += 1
            if pause:
                await asyncio.sleep(pause)
        elapsed = time.perf_counter() - t0
    finally:
        link.close()
    return {"polls": reads, "seconds": round(elapsed, 2),
            "registers_per_s": round(reads * REGISTERS / elapsed, 1)}


@click.command(help=__doc__.splitlines()[0])
@click.option("--seconds", type=float, default=20, help="window per round")
@click.option("--bauds", default="9600,115200")
def main(**options: Any) -> None:
    args = SimpleNamespace(**options)
    configure("warning")
    bauds = [int(b) for b in args.bauds.split(",")]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        profile = write_profile(tmp)
        # the driver finds profiles on its search path; the bench's map is in a temp dir
        profile_module.DEFAULT_SEARCH_PATH = (*profile_module.DEFAULT_SEARCH_PATH, tmp)
        with pty_pair(tmp) as (ours, theirs):
            for baud in bauds:
                limit = physical_limit(baud)
                row: dict[str, Any] = {"physical_limit_registers_per_s": round(limit, 1)}
                for name, pace, runner in (("driver", True, run_driver),
                                           ("link", True, run_link),
                                           ("unpaced", False, run_driver)):
                    window = args.seconds if name != "unpaced" else min(5.0, args.seconds)
                    with simulator(profile, ours, baud, pace, tmp / f"sim-{baud}-{name}.log"):
                        got = asyncio.run(runner(theirs, baud, window))
                    got["share_of_limit"] = round(got["registers_per_s"] / limit, 3)
                    emit({"bench": "modbus_rtu", "baud": baud, "round": name, **got,
                          "physical_limit_registers_per_s": round(limit, 1)})
                    row[name] = got
                results[str(baud)] = row
        if os.environ.get("BENCH_KEEP_LOGS"):
            for log in tmp.glob("*.log"):
                sys.stderr.write(log.read_text())
    summary({
        "bench": "modbus_rtu",
        "figure": "registers/s on a paced RTU bus (125-register reads, 11-bit characters) vs "
                  "the physical limit; target >= 80 %",
        "by_baud": {baud: {"physical_limit": r["physical_limit_registers_per_s"],
                           "driver": r["driver"]["registers_per_s"],
                           "driver_share": r["driver"]["share_of_limit"],
                           "link_share": r["link"]["share_of_limit"],
                           "unpaced": r["unpaced"]["registers_per_s"],
                           "met": r["driver"]["share_of_limit"] >= 0.8}
                    for baud, r in results.items()},
        "pacing": "simulator sleeps request+reply wire time + one 3.5-char silence "
                  "(1.75 ms above 19,200 baud); the driver keeps the silence after the reply",
    })


if __name__ == "__main__":
    main()
