"""Modbus device simulator: serve any profile from pymodbus servers, play scenarios.

`edge-agent simulate` lets an installer test a gateway box before a single device is
wired: every profile can be served over Modbus TCP (127.0.0.1 unless told otherwise)
or RTU (a serial port, or one end of a pty pair made by socat), several unit ids per
server (a TCP gateway, or an RS-485 bus of smoke detectors), with values that read as
a healthy device at rest. Scenarios (the shipped `scenarios/*.yaml` beside this
module: a fire, a leak, a forced gate, access records, a device that goes silent; or
any file) change the values over time, by point name; values are encoded with the
profile's type, scaling and byte/word order (`drivers.modbus.decode.encode`), so what
the agent decodes is what the scenario says.

How it maps onto pymodbus 3.16:
- each unit is a `SimDevice` with four separate tables (coils, discrete inputs,
  holding, input registers) that span 0 .. the last address the profile maps; an
  address beyond answers exception 2 (illegal data address), as a real device does;
- values change at run time through `server.async_setValues` (the context's own
  setter silently does nothing);
- a unit id that is not served, or a unit that a scenario silenced, gets no answer at
  all (the server's `trace_pdu` hook drops the request), as on a real RS-485 bus,
  where pymodbus would otherwise answer exception 4;
- `pace: true` on an RTU server delays every reply by the time its frames take on the
  wire at the configured baud rate (a pty moves bytes instantly): request and reply
  characters plus one inter-frame silence (3.5 characters, or 1.75 ms above 19,200
  baud as the Modbus serial line spec recommends). The silence after the reply is the
  client's to keep (the poller does), so a paced bus is as fast as a real one.

Nothing is printed: everything is a structlog JSON line (`simulator_serving`,
`scenario_step`, ...), on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence
from typing import Any, cast

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.decode import Value, decode, encode
from drivers.modbus.points import PointType, Table
from drivers.modbus.profile import Profile
from drivers.modbus.simulator.config import (
    RtuListen,
    ScenarioRef,
    SimulateConfig,
    TcpListen,
    UnitSpec,
)
from drivers.modbus.simulator.scenario import Scenario, Step, load_scenario
from drivers.modbus.simulator.values import initial_values
from edge_agent.contract.logs import get_logger

__all__ = [
    "RtuListen",
    "ScenarioRef",
    "ScenarioRun",
    "SimServer",
    "SimUnit",
    "SimulateConfig",
    "Simulation",
    "SimulatorError",
    "TcpListen",
    "UnitSpec",
    "rtu_transaction_s",
    "serve",
    "silence_s",
    "summary",
]

log = get_logger("drivers.modbus.simulator.server")
# pymodbus logs a traceback at ERROR for every refused request; we log what matters.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

#: The function code whose table `async_getValues`/`async_setValues` address.
_TABLE_FC = {Table.COIL: 1, Table.DISCRETE_INPUT: 2, Table.HOLDING_REGISTER: 3,
             Table.INPUT_REGISTER: 4}
_INT_RANGES = {PointType.INT16: (-(1 << 15), (1 << 15) - 1),
               PointType.UINT16: (0, (1 << 16) - 1),
               PointType.INT32: (-(1 << 31), (1 << 31) - 1),
               PointType.UINT32: (0, (1 << 32) - 1)}


class SimulatorError(RuntimeError):
    """The simulator cannot do what it was asked (a port in use, a missing serial port)."""


# --------------------------------------------------------------------------- wire time


def rtu_transaction_s(function_code: int, count: int, *, baudrate: int,
                      bits_per_char: int = 11) -> float:
    """Seconds a request and its reply occupy an RS-485 line, plus the silence between.

    Frames (bytes): read request 8, read reply 5 + data (2 per register, 1 per 8 bits);
    write single 8 and 8; write multiple 9 + data and 8. One 3.5-character silence
    separates request and reply (1.75 ms above 19,200 baud). The silence after the
    reply, before the next request, is not included: the master keeps it.
    """
    char_s = bits_per_char / baudrate
    if function_code in (1, 2):
        request, reply = 8, 5 + (count + 7) // 8
    elif function_code in (3, 4):
        request, reply = 8, 5 + 2 * count
    elif function_code in (5, 6):
        request, reply = 8, 8
    elif function_code == 15:
        request, reply = 9 + (count + 7) // 8, 8
    elif function_code == 16:
        request, reply = 9 + 2 * count, 8
    else:
        request, reply = 8, 5
    return (request + reply) * char_s + silence_s(baudrate, bits_per_char)


def silence_s(baudrate: int, bits_per_char: int = 11) -> float:
    """The inter-frame silence: 3.5 characters, fixed 1.75 ms above 19,200 baud."""
    return 0.00175 if baudrate > 19200 else 3.5 * bits_per_char / baudrate


# --------------------------------------------------------------------------- one unit


class SimUnit:
    """One simulated device: a profile's points at one unit id of one server."""

    def __init__(self, unit_id: int, profile: Profile, *, device: str | None = None,
                 values: Mapping[str, Value] | None = None) -> None:
        self.unit_id = unit_id
        self.profile = profile
        self.device = device
        self.answering = True
        self.initial = initial_values(profile, values)
        self.server: SimServer | None = None

    def __repr__(self) -> str:
        where = self.server.address if self.server else "not served"
        return f"<SimUnit {self.label} {self.profile.name} at {where}>"

    @property
    def label(self) -> str:
        return self.device or f"unit {self.unit_id}"

    def tables(self) -> dict[Table, list[int] | list[bool]]:
        """The unit's memory with the initial values written in, per table."""
        sizes: dict[Table, int] = {}
        for point in self.profile.points:
            sizes[point.table] = max(sizes.get(point.table, 0), point.last_address + 1)
        memory: dict[Table, list[Any]] = {
            table: ([False] * size if table.is_bits else [0] * size)
            for table, size in sizes.items()}
        for point in self.profile.points:
            words = memory[point.table]
            current = words[point.address] if point.type is PointType.BIT else None
            words[point.address:point.last_address + 1] = encode(
                point, self.initial[point.name], current=current)
        return memory

    def sim_device(self, action: Any) -> SimDevice:
        memory = self.tables()

        def bits(table: Table) -> list[SimData]:
            return [SimData(0, values=memory.get(table) or [False] * 16,
                            datatype=DataType.BITS)]

        def registers(table: Table) -> list[SimData]:
            if table not in memory:  # no register mapped: every address is illegal
                return [SimData(0, datatype=DataType.INVALID)]
            return [SimData(0, values=cast(list[int], memory[table]),
                            datatype=DataType.REGISTERS)]

        return SimDevice(self.unit_id, action=action, simdata=(
            bits(Table.COIL), bits(Table.DISCRETE_INPUT),
            registers(Table.HOLDING_REGISTER), registers(Table.INPUT_REGISTER)))

    def _served_by(self) -> SimServer:
        if self.server is None or not self.server.running:
            raise SimulatorError(f"{self.label} is not being served")
        return self.server

    async def read(self, name: str) -> Value:
        """The value the unit answers for point `name` now."""
        point = self.profile.point(name)
        words = await self._served_by().get(self.unit_id, point.table, point.address,
                                            point.registers)
        return decode(point, words)

    async def served(self) -> dict[str, Value]:
        """Every point's value as the unit answers it now."""
        return {point.name: await self.read(point.name) for point in self.profile.points}

    async def set(self, name: str, value: Value) -> Value:
        """Change what the unit answers for `name`; returns the value as it now reads."""
        point = self.profile.point(name)
        server = self._served_by()
        current = None
        if point.type is PointType.BIT:
            (word,) = await server.get(self.unit_id, point.table, point.address, 1)
            current = int(word)
        await server.put(self.unit_id, point.table, point.address,
                         encode(point, value, current=current))
        return await self.read(name)

    async def add(self, name: str, delta: float) -> Value:
        """Add `delta` to a number point; integer types wrap (65535 + 1 -> 0)."""
        point = self.profile.point(name)
        now = await self.read(name)
        assert isinstance(now, int | float) and not isinstance(now, bool)
        if point.type in _INT_RANGES:
            low, high = _INT_RANGES[point.type]
            raw = round((now + delta - point.offset) / point.scale)
            raw = low + (raw - low) % (high - low + 1)
            target: Value = raw * point.scale + point.offset if point.is_scaled else raw
        else:
            target = now + delta
        return await self.set(name, target)


# --------------------------------------------------------------------------- one server


class SimServer:
    """One pymodbus server (a TCP port or a serial line) hosting one or more units."""

    def __init__(self, units: Sequence[SimUnit], *, tcp: TcpListen | None = None,
                 rtu: RtuListen | None = None) -> None:
        if (tcp is None) == (rtu is None):
            raise ValueError("a server listens on tcp or on rtu")
        self.tcp = tcp
        self.rtu = rtu
        self.units: dict[int, SimUnit] = {}
        for unit in units:
            if unit.unit_id in self.units:
                raise ValueError(f"unit id {unit.unit_id} twice on one server")
            self.units[unit.unit_id] = unit
        self.requests = 0  # requests passed to a unit
        self.dropped = 0  # requests for a missing or silent unit, left unanswered
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._internal = 0  # our own reads/writes of the memory: never paced
        self._wire_s = 0.0

    @property
    def address(self) -> str:
        listen = self.tcp or self.rtu
        assert listen is not None
        return listen.address

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        devices = [unit.sim_device(self._action) for unit in self.units.values()]
        # pymodbus types trace_pdu as returning a PDU; returning None drops the request.
        trace = cast(Any, self._trace_pdu)
        server: ModbusTcpServer | ModbusSerialServer
        if self.tcp is not None:
            server = ModbusTcpServer(devices, address=(self.tcp.host, self.tcp.port),
                                     ignore_missing_devices=True, trace_pdu=trace)
        else:
            assert self.rtu is not None
            server = ModbusSerialServer(
                devices, port=self.rtu.port, framer=FramerType.RTU,
                baudrate=self.rtu.baudrate, bytesize=self.rtu.bytesize,
                parity=self.rtu.parity, stopbits=self.rtu.stopbits,
                ignore_missing_devices=True, trace_pdu=trace)
        try:
            await server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:
            await _shutdown(server)
            raise SimulatorError(f"{self.address}: cannot listen: {exc}") from None
        self._server = server
        for unit in self.units.values():
            unit.server = self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await _shutdown(server)

    async def get(self, unit_id: int, table: Table, address: int, count: int
                  ) -> list[int] | list[bool]:
        server = self._require()
        self._internal += 1
        try:
            return list(await server.async_getValues(unit_id, _TABLE_FC[table], address,
                                                     count))
        finally:
            self._internal -= 1

    async def put(self, unit_id: int, table: Table, address: int,
                  values: list[int] | list[bool]) -> None:
        server = self._require()
        self._internal += 1
        try:
            await server.async_setValues(unit_id, _TABLE_FC[table], address, values)
        finally:
            self._internal -= 1

    def _require(self) -> ModbusTcpServer | ModbusSerialServer:
        if self._server is None:
            raise SimulatorError(f"{self.address} is not running")
        return self._server

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        if sending:
            return pdu
        unit = self.units.get(pdu.dev_id)
        if unit is None or not unit.answering:
            self.dropped += 1
            return None  # no reply: the client times out, as on a real bus
        self.requests += 1
        if self.rtu is not None and self.rtu.pace:
            self._wire_s = rtu_transaction_s(pdu.function_code, _pdu_count(pdu),
                                              baudrate=self.rtu.baudrate,
                                              bits_per_char=self.rtu.bits_per_char)
        return pdu

    async def _action(self, function_code: int, start_address: int, address: int,
                      count: int, registers: list[int],
                      values: list[int] | list[bool] | None) -> ExcCodes | None:
        """Called by pymodbus on each access to a unit's memory, before it answers."""
        if self._internal or not self._wire_s:
            return None
        wire, self._wire_s = self._wire_s, 0.0
        await asyncio.sleep(wire)
        return None


async def _shutdown(server: ModbusTcpServer | ModbusSerialServer) -> None:
    shutdown: Any = server.shutdown  # untyped in pymodbus 3.16
    with contextlib.suppress(Exception):
        await shutdown()


def _pdu_count(pdu: ModbusPDU) -> int:
    if pdu.function_code in (15, 16):
        data = pdu.registers if pdu.function_code == 16 else pdu.bits
        return len(data)
    return int(getattr(pdu, "count", 1) or 1)


# --------------------------------------------------------------------------- scenarios


class ScenarioRun:
    """One scenario playing on its target units, once or in a loop."""

    def __init__(self, name: str, scenario: Scenario, targets: Sequence[SimUnit], *,
                 loop: bool | None = None) -> None:
        if not targets:
            raise SimulatorError(f"scenario {name}: no unit to run on")
        wrong = [u for u in targets if not scenario.fits(u.profile)]
        if wrong:
            raise SimulatorError(f"scenario {name} is for profile {scenario.profile}; "
                                 f"{wrong[0].label} serves {wrong[0].profile.name}")
        self.name = name
        self.scenario = scenario
        self.targets = list(targets)
        self.loop = scenario.loop if loop is None else loop
        if self.loop and scenario.period_s is None:
            raise SimulatorError(f"scenario {name} cannot loop: it has no period_s")
        self.plan: list[tuple[Step, list[SimUnit]]] = []
        for index, step in enumerate(scenario.ordered_steps()):
            units = [u for u in self.targets
                     if (step.unit is None or u.unit_id == step.unit)
                     and (step.device is None or u.device == step.device)]
            if not units:
                raise SimulatorError(f"scenario {name}: step {index} at {step.at_s:g}s "
                                     f"names {step.target_label()}, which is not one of "
                                     f"its targets ({', '.join(u.label for u in targets)})")
            self.plan.append((step, units))
        self.steps_done = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        cycle = 0
        log.info("scenario_started", scenario=self.name, loop=self.loop,
                 period_s=self.scenario.period_s, steps=len(self.plan),
                 targets=[_where(u) for u in self.targets])
        while True:
            base = start + cycle * self.scenario.cycle_s
            for step, units in self.plan:
                await asyncio.sleep(max(0.0, base + step.at_s - loop.time()))
                for unit in units:
                    await self._apply(step, unit, cycle)
            if not self.loop:
                break
            cycle += 1
            await asyncio.sleep(max(0.0, start + cycle * self.scenario.cycle_s - loop.time()))
        log.info("scenario_finished", scenario=self.name, steps_done=self.steps_done)

    async def _apply(self, step: Step, unit: SimUnit, cycle: int) -> None:
        what: dict[str, Any] = {}
        try:
            if step.answer is not None:
                unit.answering = step.answer
                what["answer"] = step.answer
            elif step.add is not None:
                assert step.point is not None
                what = {"point": step.point, "add": step.add,
                        "value": await unit.add(step.point, step.add)}
            else:
                assert step.point is not None and step.value is not None
                what = {"point": step.point, "value": await unit.set(step.point, step.value)}
        except Exception as exc:  # a step must never stop the simulator
            log.error("scenario_step_failed", scenario=self.name, at_s=step.at_s,
                      **_where(unit), error=f"{type(exc).__name__}: {exc}")
            return
        self.steps_done += 1
        extra = {"note": step.note} if step.note else {}
        log.info("scenario_step", scenario=self.name, cycle=cycle, at_s=step.at_s,
                 **_where(unit), **what, **extra)


def _where(unit: SimUnit) -> dict[str, Any]:
    out: dict[str, Any] = {"server": unit.server.address if unit.server else None,
                           "unit": unit.unit_id}
    if unit.device:
        out["device"] = unit.device
    return out


# --------------------------------------------------------------------------- simulation


class Simulation:
    """Servers and scenario runs, started and stopped together."""

    def __init__(self, servers: Sequence[SimServer], runs: Sequence[ScenarioRun] = ()) -> None:
        self.servers = list(servers)
        self.runs = list(runs)
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_config(cls, cfg: SimulateConfig) -> Simulation:
        servers = [SimServer([_unit(spec) for spec in server.units], tcp=server.tcp,
                             rtu=server.rtu) for server in cfg.servers]
        sim = cls(servers)
        sim.runs = [sim.bind(ref) for ref in cfg.scenarios]
        return sim

    def units(self) -> list[SimUnit]:
        return [unit for server in self.servers for unit in server.units.values()]

    def bind(self, ref: ScenarioRef, scenario: Scenario | None = None) -> ScenarioRun:
        """A run of the scenario on the units `ref` names (every unit of its profile)."""
        scenario = scenario or load_scenario(ref.scenario)
        mine = [u for u in self.units() if scenario.fits(u.profile)]
        if ref.devices or ref.units:
            mine = [u for u in mine if u.device in ref.devices or u.unit_id in ref.units]
        return ScenarioRun(_scenario_name(ref.scenario), scenario, mine, loop=ref.loop)

    async def start(self) -> None:
        started: list[SimServer] = []
        try:
            for server in self.servers:
                await server.start()
                started.append(server)
                log.info("simulator_serving", server=server.address, units=[
                    {"unit": u.unit_id, "profile": u.profile.name,
                     **({"device": u.device} if u.device else {})}
                    for u in server.units.values()],
                    **({"pace_baud": server.rtu.baudrate}
                       if server.rtu is not None and server.rtu.pace else {}))
        except BaseException:
            for server in started:
                await server.stop()
            raise
        self._tasks = [asyncio.create_task(run.run(), name=f"scenario:{run.name}")
                       for run in self.runs]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for server in self.servers:
            await server.stop()

    async def __aenter__(self) -> Simulation:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _unit(spec: UnitSpec) -> SimUnit:
    return SimUnit(spec.unit, spec.load(), device=spec.device, values=spec.values)


def _scenario_name(name_or_path: str) -> str:
    return name_or_path.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")


def summary(cfg: SimulateConfig) -> str:
    """One line for a person: what is served where, which scenarios run."""
    units = sum(len(s.units) for s in cfg.servers)
    first = cfg.servers[0].address
    where = first if len(cfg.servers) == 1 else f"{first} and {len(cfg.servers) - 1} more"
    names = ", ".join(_scenario_name(ref.scenario) for ref in cfg.scenarios) or "none"
    return (f"simulate: {units} unit(s) on {len(cfg.servers)} server(s) ({where}); "
            f"scenarios: {names}; Ctrl-C stops")


async def serve(cfg: SimulateConfig | Simulation, *, stop: asyncio.Event | None = None
                ) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set), then stop every server cleanly."""
    sim = cfg if isinstance(cfg, Simulation) else Simulation.from_config(cfg)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        await sim.start()
        log.info("simulator_ready", servers=len(sim.servers), units=len(sim.units()),
                 scenarios=[run.name for run in sim.runs])
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await sim.stop()
        log.info("simulator_stopped", servers=len(sim.servers),
                 requests=sum(s.requests for s in sim.servers),
                 unanswered=sum(s.dropped for s in sim.servers))
