"""The Modbus simulator (`edge-agent simulate`): serves every profile, plays scenarios.

What it serves is read back through the driver's own Link and planner (and once
through the whole poller and rules engine), so the simulator and the driver check
each other: a value the simulator encodes wrongly would decode wrongly.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from drivers.modbus.decode import Value
from drivers.modbus.device import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.planner import extract
from drivers.modbus.points import Table
from drivers.modbus.profile import Profile, available_profiles, load_profile
from drivers.modbus.rtu_link import RtuLink
from drivers.modbus.simulator import server as sim
from drivers.modbus.simulator.config import (
    ScenarioRef,
    SimulateConfig,
    TcpListen,
    from_gateway,
    parse_scenario_ref,
    parse_tcp,
    parse_units,
)
from drivers.modbus.simulator.scenario import available_scenarios, load_scenario
from drivers.modbus.tcp_link import TcpLink
from drivers.modbus.transport import Link, ModbusExceptionResponse, ModbusTimeout, SerialSettings
from edge_agent.config.loader import ConfigError, load_model
from edge_agent.sdk.api import DeviceState
from edge_agent.sdk.testing import NullSink
from tests.aio import cancel_and_wait
from tests.peers import free_port, require_binary, wait_port

ROOT = Path(__file__).resolve().parent.parent
SCATTERED = ROOT / "tests" / "data" / "modbus" / "scattered-20.yaml"


async def read_all(link: Link, profile: Profile, unit: int) -> dict[str, Value]:
    """Every point of `profile`, read as the driver reads it (its plan, one poll)."""
    values: dict[str, Any] = {}
    for request in profile.plan():
        values.update(extract(request, await link.read(request.table, request.start,
                                                       request.count, unit)))
    return values


def close_to(a: dict[str, Value], b: dict[str, Value]) -> bool:
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, float) or isinstance(y, float):
            assert isinstance(x, int | float) and isinstance(y, int | float)
            if abs(x - y) > 1e-6 * max(1.0, abs(x)):
                return False
        elif x != y:
            return False
    return True


@contextlib.asynccontextmanager
async def tcp_simulation(*units: sim.SimUnit) -> AsyncIterator[tuple[sim.Simulation, Link]]:
    server = sim.SimServer(units, tcp=TcpListen(port=free_port()))
    link = TcpLink("127.0.0.1", server.tcp.port if server.tcp else 0, 0.5)
    async with sim.Simulation([server]) as simulation:
        try:
            yield simulation, link
        finally:
            link.close()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """socat joining two ptys: (the simulator's end, the driver's end)."""
    socat = require_binary("socat")
    a, b = str(tmp_path / "ttySIM"), str(tmp_path / "ttyAGENT")
    proc = subprocess.Popen([socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not (os.path.exists(a) and os.path.exists(b)):
            assert time.monotonic() < deadline, "socat made no ptys"
            time.sleep(0.02)
        yield a, b
    finally:
        proc.terminate()
        proc.wait(5)


# --------------------------------------------------------------------------- serving


@pytest.mark.parametrize("name", list(available_profiles()))
async def test_serves_each_shipped_profile_as_the_driver_reads_it(name: str) -> None:
    profile = load_profile(name)
    plain = sim.SimUnit(1, profile)
    battery = {"battery": 41} if any(p.name == "battery" for p in profile.points) else {}
    tuned = sim.SimUnit(7, profile, device="tuned", values=battery)
    async with tcp_simulation(plain, tuned) as (_, link):
        for unit in (plain, tuned):
            read = await read_all(link, profile, unit.unit_id)
            assert read == await unit.served()  # what it says it serves is what is read
            assert close_to(read, unit.initial)  # and that is what it meant to serve
    if battery:
        assert read["battery"] == 41


async def test_plausible_values_of_the_shipped_profiles() -> None:
    smoke = sim.SimUnit(1, load_profile("smoke-detector"))
    water = sim.SimUnit(2, load_profile("water-sensor"))
    gate = sim.SimUnit(3, load_profile("gate-controller"))
    async with tcp_simulation(smoke, water, gate) as (_, link):
        s = await read_all(link, smoke.profile, 1)
        w = await read_all(link, water.profile, 2)
        g = await read_all(link, gate.profile, 3)
    density, temperature, battery = s["density"], s["temperature"], s["battery"]
    assert isinstance(density, float) and isinstance(temperature, float)
    assert isinstance(battery, int)
    assert s["alarm"] is False and 0 < density < 0.05 and 15 < temperature < 30
    assert 80 <= battery <= 100
    assert w["leak"] is False and w["level"] == 1.25 and w["pressure"] == 310.5
    assert g == {**g, "door_open": False, "locked": True, "forced_open": False,
                 "access_result": 1, "card_number": 10012345}


async def test_every_byte_and_word_order_of_the_reference_map_reads_back() -> None:
    """scattered-20 mixes word/byte orders, strings, bits and scaling in five runs."""
    profile = load_profile(SCATTERED)
    unit = sim.SimUnit(1, profile)
    assert len(set(map(str, unit.initial.values()))) >= 15  # distinct values, not zeros
    async with tcp_simulation(unit) as (_, link):
        read = await read_all(link, profile, 1)
    assert len(profile.plan()) == 1
    assert close_to(read, unit.initial)


async def test_missing_unit_is_silent_and_unmapped_address_is_refused() -> None:
    unit = sim.SimUnit(1, load_profile("smoke-detector"))
    async with tcp_simulation(unit) as (simulation, link):
        with pytest.raises(ModbusTimeout):
            await link.read(Table.INPUT_REGISTER, 0, 4, 9)  # nobody is unit 9: no reply
        with pytest.raises(ModbusExceptionResponse) as refused:
            await link.read(Table.INPUT_REGISTER, 0, 10, 1)  # the profile maps 0..3
        assert refused.value.code == 2
        with pytest.raises(ModbusExceptionResponse):
            await link.read(Table.HOLDING_REGISTER, 0, 1, 1)  # no holding register mapped
        assert simulation.servers[0].dropped == 1


async def test_rtu_bus_with_several_units(pty_pair: tuple[str, str]) -> None:
    ours, theirs = pty_pair
    profile = load_profile("smoke-detector")
    units = [sim.SimUnit(u, profile, values={"battery": 80 + u}) for u in (1, 2, 5)]
    line = sim.RtuListen(port=ours, baudrate=9600)
    async with sim.Simulation([sim.SimServer(units, rtu=line)]):
        link = RtuLink.for_port(SerialSettings(theirs, 9600), 0.3)
        try:
            for u in (1, 2, 5):
                read = await read_all(link, profile, u)
                assert read["battery"] == 80 + u
            with pytest.raises(ModbusTimeout):
                await read_all(link, profile, 3)  # a unit nobody is: silence
            assert (await read_all(link, profile, 1))["battery"] == 81  # the bus still works
        finally:
            link.close()


class _PacingSpy:
    """The simulator module's `asyncio`, with its sleeps (the pacing) written down."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        await asyncio.sleep(delay)


async def test_paced_rtu_takes_the_wire_time_of_the_baud_rate(
        pty_pair: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request is paced once, by its transaction's wire time, and the reply waits for
    it (a lower bound). How close a paced bus comes to the physical limit is a figure of
    bench/modbus_rtu.py (docs/benchmarks.md), not of this test."""
    ours, theirs = pty_pair
    unit = sim.SimUnit(1, load_profile(SCATTERED))
    expected = sim.rtu_transaction_s(3, 55, baudrate=9600, bits_per_char=10)
    line = sim.RtuListen(port=ours, baudrate=9600, pace=True)
    spy = _PacingSpy()
    monkeypatch.setattr(sim, "asyncio", spy)
    async with sim.Simulation([sim.SimServer([unit], rtu=line)]):
        link = RtuLink.for_port(SerialSettings(theirs, 9600), 1.0)
        try:
            await link.read(Table.HOLDING_REGISTER, 0, 55, 1)  # connect
            spy.slept.clear()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await link.read(Table.HOLDING_REGISTER, 0, 55, 1)
            took = loop.time() - started
        finally:
            link.close()
    assert spy.slept == [expected]
    assert took >= 0.95 * expected, (took, expected)


async def test_port_in_use_is_a_clear_error() -> None:
    unit = sim.SimUnit(1, load_profile("water-sensor"))
    port = free_port()
    first = sim.SimServer([unit], tcp=TcpListen(port=port))
    await first.start()
    try:
        again = sim.SimServer([sim.SimUnit(1, unit.profile)], tcp=TcpListen(port=port))
        with pytest.raises(sim.SimulatorError, match=f"127.0.0.1:{port}: cannot listen"):
            await again.start()
    finally:
        await first.stop()


# --------------------------------------------------------------------------- scenarios


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


async def test_scenario_steps_change_what_is_read(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path / "quick-fire.yaml", """\
description: fire, fast
profile: smoke-detector
steps:
  - {at_s: 0.1, point: density, value: 0.41}
  - {at_s: 0.1, point: alarm, value: true}
  - {at_s: 0.4, answer: false, unit: 2}
  - {at_s: 1.5, answer: true, unit: 2}
  - {at_s: 1.5, point: alarm, value: false}
"""))
    profile = load_profile("smoke-detector")
    one, two = sim.SimUnit(1, profile), sim.SimUnit(2, profile)
    async with tcp_simulation(one, two) as (simulation, link):
        run = sim.ScenarioRun("quick-fire", scenario, [one, two])
        task = asyncio.create_task(run.run())
        before = await read_all(link, profile, 2)
        assert before["alarm"] is False and before["density"] == 0.012
        await asyncio.sleep(0.25)
        for unit in (1, 2):
            now = await read_all(link, profile, unit)
            assert now["alarm"] is True and now["density"] == 0.41
        await asyncio.sleep(0.3)  # 0.55 s: unit 2 is silent, unit 1 answers
        with pytest.raises(ModbusTimeout):  # 0.5 s timeout: still before 1.5 s
            await link.read(Table.DISCRETE_INPUT, 0, 2, 2)
        assert (await read_all(link, profile, 1))["alarm"] is True
        await task
        assert run.steps_done == 8  # value steps on both units, answer steps on unit 2
        assert (await read_all(link, profile, 2))["alarm"] is False
        assert simulation.servers[0].dropped >= 1


async def test_add_steps_count_and_wrap(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path / "counter.yaml", """\
description: two access records across the counter's wrap
profile: gate-controller
steps:
  - {at_s: 0, point: access_counter, value: 65535}
  - {at_s: 0, point: access_counter, add: 1}
  - {at_s: 0, point: access_counter, add: 2}
  - {at_s: 0, point: open_time, add: 5}
"""))
    gate = sim.SimUnit(1, load_profile("gate-controller"))
    async with tcp_simulation(gate) as (_, link):
        await sim.ScenarioRun("counter", scenario, [gate]).run()
        read = await read_all(link, gate.profile, 1)
    assert read["access_counter"] == 2 and read["open_time"] == 5  # 65535 + 1 is 0


async def test_a_bit_step_keeps_the_other_bits_of_its_register(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path / "bits.yaml", """\
description: forced, then held open, then no longer forced
profile: gate-controller
steps:
  - {at_s: 0, point: forced_open, value: true}
  - {at_s: 0, point: held_open, value: true}
  - {at_s: 0, point: forced_open, value: false}
"""))
    gate = sim.SimUnit(1, load_profile("gate-controller"))
    async with tcp_simulation(gate) as (_, link):
        await sim.ScenarioRun("bits", scenario, [gate]).run()
        read = await read_all(link, gate.profile, 1)
        (status,) = await link.read(Table.INPUT_REGISTER, 0, 1, 1)
    assert read["forced_open"] is False and read["held_open"] is True and status == 0b10


class RecordingSink(NullSink):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.states: list[tuple[str, DeviceState]] = []

    def emit(self, device: str, type_: str, data: dict[str, Any], *, severity: Any = None,
             observed_at: float | None = None) -> None:
        self.events.append((device, type_, data))

    def device_state(self, device: str, state: DeviceState, reason: str = "") -> None:
        if not self.states or self.states[-1] != (device, state):
            self.states.append((device, state))


async def test_the_poller_turns_a_forced_gate_scenario_into_events(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path / "forced.yaml", """\
description: forced door, then an access record, then silence and back
profile: gate-controller
steps:
  - {at_s: 0.3, point: door_open, value: true}
  - {at_s: 0.3, point: locked, value: false}
  - {at_s: 0.3, point: forced_open, value: true}
  - {at_s: 0.6, point: card_number, value: 4242}
  - {at_s: 0.6, point: access_counter, add: 1}
  - {at_s: 0.9, answer: false}
  - {at_s: 1.6, answer: true}
"""))
    gate = sim.SimUnit(1, load_profile("gate-controller"), device="gate-north")
    async with tcp_simulation(gate) as (_, _link):
        assert gate.server is not None and gate.server.tcp is not None
        device = ModbusDevice.model_validate({
            "id": "gate-north", "driver": "modbus", "profile": "gate-controller",
            "tcp": {"host": "127.0.0.1", "port": gate.server.tcp.port}, "unit_id": 1,
            "period_s": 0.1, "timeout_s": 0.15, "offline_after": 2, "max_backoff_s": 0.2})
        sink = RecordingSink()
        driver = ModbusDriver([device], sink)
        polling = asyncio.create_task(driver.run())
        await sim.ScenarioRun("forced", scenario, [gate]).run()
        await asyncio.sleep(0.6)
        await cancel_and_wait(polling)
    types = [t for _, t, _ in sink.events]
    assert types[0] == "gate.state"
    forced = [d for _, t, d in sink.events if t == "gate.forced_open"]
    assert forced and forced[0]["state"] == "raised"
    assert [t for t in types if t == "gate.access"] == ["gate.access"]
    access = next(d for _, t, d in sink.events if t == "gate.access")
    assert access["result"] == "granted" and "4242" not in json.dumps(access)
    states = [s for _, s in sink.states]
    assert DeviceState.OFFLINE in states
    assert states[-1] is DeviceState.ONLINE and states.index(DeviceState.OFFLINE) > 0


@pytest.mark.parametrize("name", list(available_scenarios()))
def test_shipped_scenarios_load_and_bind(name: str) -> None:
    scenario = load_scenario(name)
    profiles = [scenario.profile] if scenario.profile else list(available_profiles())
    for profile in profiles:
        unit = sim.SimUnit(1, load_profile(profile))
        run = sim.ScenarioRun(name, scenario, [unit], loop=True)
        assert run.plan and scenario.period_s and scenario.period_s <= 90  # within the demo
    assert name in ("fire", "leak", "forced-gate", "access", "silent-device")


def test_a_bad_scenario_is_reported_at_file_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", """\
description: every kind of mistake
profile: smoke-detector
loop: true
steps:
  - {at_s: 1, point: densty, value: 0.3}
  - {at_s: 2, point: alarm, value: on}
  - {at_s: 3, point: battery, value: 70000}
  - {at_s: 4, point: temperature, value: 0.04}
  - {at_s: 5, point: fault, add: 1}
""")
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    issues = [str(issue) for issue in caught.value.issues]
    assert issues == [
        f"{path}:3:7: loop: a looping scenario needs `period_s`, the cycle length (more "
        "than the last step's at_s 5)",
        f"{path}:5:22: steps.0.point: profile `smoke-detector` has no point `densty`; "
        "did you mean `density`?",
        f"{path}:6:36: steps.1.value: point `alarm` (discrete_input 0): takes true or "
        "false, got 'on'",
        f"{path}:7:38: steps.2.value: point `battery` (input_register 2): 70000 is out of "
        "range for uint16 (0..65535)",
        f"{path}:8:42: steps.3.value: point `temperature` would read 0.0, not 0.04: its "
        "resolution is 0.1 °C",
        f"{path}:9:34: steps.4.add: `add` needs a number point; `fault` is bool",
    ]


def test_a_malformed_step_is_reported_at_file_line(tmp_path: Path) -> None:
    path = write(tmp_path / "worse.yaml", """\
description: steps that are not steps
profile: nosuch-profile
steps:
  - {at_s: 1, point: alarm}
  - at_s: -1
    answer: false
    colour: red
""")
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    text = str(caught.value)
    assert f"{path}:4:5: steps.0: a step needs one of `value: ...`" in text
    assert f"{path}:5:11: steps.1.at_s: must be greater than or equal to 0" in text
    assert f"{path}:7:5: steps.1.colour: unknown key `colour`" in text
    with pytest.raises(ConfigError, match=r"unknown scenario `fir`.*did you mean `fire`"):
        load_scenario("fir")


def test_simulate_config_checks_targets_at_file_line(tmp_path: Path) -> None:
    path = write(tmp_path / "simulate.yaml", """\
servers:
  - tcp: {port: 15020}
    units:
      - {unit: 1, profile: gate-controller, device: gate-1}
      - {unit: 1, profile: smoke-detector, values: {batery: 3}}
scenarios:
  - {scenario: fire, devices: [gate-1]}
  - {scenario: leak}
""")
    with pytest.raises(ConfigError) as caught:
        load_model(path, SimulateConfig)
    text = str(caught.value)
    assert f"{path}:5:61: servers.0.units.1.values.batery: profile `smoke-detector` has " \
           "no point `batery`" in text
    # cross-checks run once the entries themselves are valid
    write(path, path.read_text().replace("batery", "battery").replace("unit: 1, profile: s",
                                                                      "unit: 2, profile: s"))
    with pytest.raises(ConfigError) as caught:
        load_model(path, SimulateConfig)
    issues = [str(issue) for issue in caught.value.issues]
    assert issues == [
        f"{path}:7:32: scenarios.0.devices.0: device `gate-1` serves profile "
        "`gate-controller`; scenario `fire` is for `smoke-detector`",
        f"{path}:8:16: scenarios.1.scenario: scenario `leak` is for profile "
        "`water-sensor`, which no server serves",
    ]


def test_command_line_shorthands() -> None:
    assert parse_units("1-4,7") == [1, 2, 3, 4, 7]
    assert [t.port for t in parse_tcp("15020-15022")] == [15020, 15021, 15022]
    assert {t.host for t in parse_tcp("15020")} == {"127.0.0.1"}  # never 0.0.0.0 by default
    assert parse_tcp("0.0.0.0:502")[0].host == "0.0.0.0"
    ref = parse_scenario_ref("fire@smoke-b1-01,3-4", None)
    assert ref == ScenarioRef(scenario="fire", devices=["smoke-b1-01"], units=[3, 4])
    for bad in ("1-", "5-2", "300"):
        with pytest.raises(ValueError):
            parse_units(bad)


def load_demo() -> ModuleType:
    """scripts/demo.py (`./run demo`), which lives in the checkout, not in the package."""
    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    assert spec and spec.loader
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_the_demo_gateway_config_is_served_with_its_scenarios() -> None:
    demo = load_demo()
    servers, skipped = from_gateway(ROOT / demo.GATEWAY_CONFIG)
    assert skipped == []
    assert sorted(s.tcp.port for s in servers if s.tcp) == list(demo.SIMULATOR_PORTS)
    assert all(s.tcp and s.tcp.host == "127.0.0.1" for s in servers)
    cfg = SimulateConfig(servers=servers,
                         scenarios=[parse_scenario_ref(s, True) for s in demo.SCENARIOS])
    simulation = sim.Simulation.from_config(cfg)
    devices = {u.device for u in simulation.units()}
    assert {"gate-north", "smoke-b1-01", "water-pump-01"} <= devices
    assert sorted(r.name for r in simulation.runs) == ["access", "fire", "forced-gate",
                                                        "leak", "silent-device"]
    assert all(run.loop for run in simulation.runs)


# --------------------------------------------------------------------------- the command


async def test_edge_agent_simulate_serves_logs_json_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent", "simulate", "--profile", "water-sensor",
        "--tcp", f"127.0.0.1:{port}", "--units", "1-2", "--set", "battery=55",
        "--scenario", "leak@2", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.to_thread(wait_port, port, 20)
        link = TcpLink("127.0.0.1", port, 1.0)
        try:
            profile = load_profile("water-sensor")
            read = await read_all(link, profile, 1)
            assert read["battery"] == 55 and read["leak"] is False
            assert (await read_all(link, profile, 2))["level"] == 1.25
        finally:
            link.close()
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out == b""  # nothing on stdout: logs only, on stderr
    lines = err.decode().splitlines()
    assert lines[0].startswith("simulate: 2 unit(s) on 1 server(s)")
    logged = [json.loads(line) for line in lines[1:]]
    events = [entry["event"] for entry in logged]
    assert events[:3] == ["simulator_serving", "simulator_ready", "scenario_started"]
    assert events[-1] == "simulator_stopped" and "scenario_step" in events
    step = next(e for e in logged if e["event"] == "scenario_step")
    assert step["unit"] == 2 and step["point"] == "leak" and step["value"] is False
    assert all({"level", "timestamp"} <= entry.keys() for entry in logged)
    assert logged[-1]["requests"] >= 4


@pytest.mark.parametrize(("args", "expected"), [
    (["--profile", "smoke-detector"], "exactly one of --tcp"),
    (["--profile", "smoke-detectr", "--tcp", "15999"], "did you mean `smoke-detector`"),
    (["--profile", "smoke-detector", "--tcp", "15999", "--scenario", "leak"],
     "which no server serves"),
    (["--profile", "smoke-detector", "--tcp", "15999", "--set", "alarm=on"],
     "takes true or false"),
    (["--profile", "smoke-detector", "--tcp", "15999", "--units", "1-"], "unit id or range"),
    (["--gateway", "configs/gateway.demo.yaml", "--profile", "x"], "exactly one of --config"),
])
def test_edge_agent_simulate_rejects_bad_options(args: list[str], expected: str) -> None:
    done = subprocess.run([sys.executable, "-m", "edge_agent", "simulate", *args], cwd=ROOT,
                          capture_output=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr.decode()
    assert done.stdout == b""
