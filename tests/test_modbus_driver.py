"""The Modbus driver against real pymodbus TCP servers: decoding, failures, outage, writes."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from drivers.modbus import driver as driver_module
from drivers.modbus import profile as profile_module
from drivers.modbus.device import check_buses
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.extractor import Extractor
from drivers.modbus.points import Table
from drivers.modbus.poller import TCP_BURST_MAX, tcp_slots
from drivers.modbus.profile import SHIPPED_PROFILES
from drivers.modbus.tcp_link import TcpLink
from drivers.modbus.transport import (
    ModbusConnectionError,
    ModbusExceptionResponse,
    ModbusProtocolError,
    ModbusTimeout,
)
from drivers.modbus.writes import (
    WriteFailed,
    WriteRefused,
    WriteValueError,
    write_point,
)
from edge_agent.rules.privacy import hash_credential
from edge_agent.sdk.api import DeviceState
from edge_agent.sdk.testing import running
from tests.harness import wait_until
from tests.modbus_servers import (
    GATE,
    RELAY,
    SMOKE,
    WATER,
    WRITABLE_PROFILE,
    JunkServer,
    ModbusServer,
    RecordingSink,
    Unit,
    tcp_device,
)
from tests.peers import free_port

# --------------------------------------------------------------------------- profiles


async def test_smoke_detector_end_to_end() -> None:
    async with ModbusServer([Unit.of(1, "smoke-detector", SMOKE)]) as server:
        sink = RecordingSink()
        driver = ModbusDriver([tcp_device("smoke-1", "smoke-detector", server.port)], sink)
        async with running(driver):
            await wait_until(lambda: sink.of("smoke.alarm"), 4, "smoke.alarm (debounce 2 s)")
    (reading,) = sink.of("smoke.reading")
    assert reading.data == {"density_db_m": 0.15, "temperature_c": -5.0, "battery_pct": 87}
    (alarm,) = sink.of("smoke.alarm")
    assert alarm.data["state"] == "raised" and alarm.data["density_db_m"] == 0.15
    assert alarm.severity == "critical"
    assert sink.current["smoke-1"] is DeviceState.ONLINE
    assert not sink.invalid


async def test_water_sensor_end_to_end_word_order_and_scaling() -> None:
    # level is a float32 with the low word first, pressure a uint32 scaled by 0.001
    async with ModbusServer([Unit.of(1, "water-sensor", WATER)]) as server:
        sink = RecordingSink()
        driver = ModbusDriver([tcp_device("water-1", "water-sensor", server.port)], sink)
        async with running(driver):
            await wait_until(lambda: sink.of("water.pressure"), 3)
            await server.set(1, level=2.25, pressure=250.5)
            await wait_until(lambda: len(sink.of("water.pressure")) == 2, 3)
            await wait_until(lambda: len(sink.of("water.level")) == 2, 3)
    assert [e.data for e in sink.of("water.level")] == [
        {"level_m": 1.5, "battery_pct": 100}, {"level_m": 2.25, "battery_pct": 100}]
    assert [e.data for e in sink.of("water.pressure")] == [
        {"pressure_kpa": 101.325, "battery_pct": 100}, {"pressure_kpa": 250.5, "battery_pct": 100}]
    assert not sink.of("water.leak")
    assert not sink.invalid


async def test_gate_controller_end_to_end_state_alarm_and_hashed_access() -> None:
    async with ModbusServer([Unit.of(1, "gate-controller", GATE)]) as server:
        sink = RecordingSink()
        driver = ModbusDriver([tcp_device("gate-1", "gate-controller", server.port)], sink)
        async with running(driver):
            await wait_until(lambda: sink.of("gate.held_open") and sink.of("gate.state"), 3)
            # a new access record: the controller updates registers 2..7 together
            await server.set(1, access_counter=42, access_result=2, access_method=3,
                             access_direction=2, card_number=87654321)
            await wait_until(lambda: sink.of("gate.access"), 3)
            await server.set(1, held_open=False, door_open=False, locked=True)
            await wait_until(lambda: len(sink.of("gate.held_open")) == 2, 3)
            await wait_until(lambda: len(sink.of("gate.state")) == 2, 3)
    assert [e.data for e in sink.of("gate.state")] == [
        {"door": "open", "lock": "unlocked"}, {"door": "closed", "lock": "locked"}]
    raised, cleared = sink.of("gate.held_open")
    assert raised.data["state"] == "raised" and raised.data["held_s"] == 95
    assert cleared.data["state"] == "cleared"
    assert cleared.data["alarm_id"] == raised.data["alarm_id"]
    (access,) = sink.of("gate.access")
    assert access.data == {"result": "denied", "method": "qr", "direction": "out",
                           "credential_hash": hash_credential(87654321, sink.credential_salt)}
    assert "87654321" not in access.to_json()
    assert not sink.of("gate.forced_open")
    assert not sink.invalid


# --------------------------------------------------------------------------- failures


async def test_exception_response_is_precise_and_gives_no_value() -> None:
    unit = Unit.of(3, "smoke-detector", SMOKE, exception=2)
    async with ModbusServer([unit]) as server:
        link = TcpLink("127.0.0.1", server.port, 0.5)
        with pytest.raises(ModbusExceptionResponse) as err:
            await link.read(Table.INPUT_REGISTER, 0, 4, 3)
        assert err.value.code == 2
        assert str(err.value) == (f"tcp://127.0.0.1:{server.port} unit 3: read input_register "
                                  "0..3: exception 2 (illegal data address)")
        assert link.connected, "a device that answers keeps its connection"
        link.close()

        sink = RecordingSink()
        driver = ModbusDriver([tcp_device("smoke-3", "smoke-detector", server.port, 3)], sink)
        async with running(driver):
            await wait_until(lambda: sink.current.get("smoke-3") is DeviceState.ERROR, 3)
            await asyncio.sleep(1.0)
        polls = len(server.polls_of(3, 2))
    assert not [t for t in sink.types() if t.startswith("smoke.")], "no value, no event"
    (offline,) = sink.of("device.offline")
    assert "unit 3: read discrete_input 0..1: exception 2 (illegal data address)" \
        in offline.data["reason"]
    assert "input_register 0..3: exception 2" in offline.data["reason"]
    # refused polls back off: 0.1, 0.2, 0.4, 0.4 ... s instead of every 0.1 s
    assert 3 <= polls <= 6, polls
    assert not sink.invalid


async def test_a_refused_request_keeps_the_values_of_the_others() -> None:
    # The device is a smoke detector, the config says water sensor: FC4 0..4 is refused
    # (the detector has registers 0..3 only), the leak input still reads.
    async with ModbusServer([Unit.of(1, "smoke-detector", {**SMOKE, "alarm": False})]) as server:
        sink = RecordingSink()
        driver = ModbusDriver([tcp_device("w", "water-sensor", server.port)], sink)
        async with running(driver):
            await wait_until(lambda: sink.current.get("w") is DeviceState.ERROR, 3)
            handle = driver.device("w")
            await wait_until(lambda: handle.poller.polls >= 3, 3)
            assert handle.poller.next_due - handle.poller.clock() <= 0.1 + 0.01, \
                "a device that answers keeps its period"
    (offline,) = sink.of("device.offline")
    assert "read input_register 0..4: exception 2 (illegal data address)" \
        in offline.data["reason"]
    assert not sink.invalid


async def test_garbage_reply_is_a_protocol_error_never_a_value() -> None:
    async with JunkServer() as junk:
        link = TcpLink("127.0.0.1", junk.port, 0.2)
        with pytest.raises(ModbusProtocolError, match=r"unit 1: read input_register 0\.\.3: no "
                           r"valid reply within 0\.2s, only f0 f1 f2 .* \(CRC error, framing "
                           "garbage or a reply from another unit\\)"):
            await link.read(Table.INPUT_REGISTER, 0, 4, 1)
        assert not link.connected, "a garbled connection is dropped"
        sink = RecordingSink()
        driver = ModbusDriver([tcp_device("junk", "smoke-detector", junk.port)], sink)
        async with running(driver):
            await wait_until(lambda: sink.current.get("junk") is DeviceState.OFFLINE, 3)
    assert sink.types() == ["device.offline"]
    assert "no valid reply" in sink.of("device.offline")[0].data["reason"]


async def test_reply_delayed_past_the_timeout_is_a_timeout() -> None:
    unit = Unit.of(1, "water-sensor", WATER, delay_s=0.5)
    async with ModbusServer([unit]) as server:
        link = TcpLink("127.0.0.1", server.port, 0.2)
        with pytest.raises(ModbusTimeout, match=r"unit 1: read input_register 0\.\.1: no reply "
                                                r"within 0\.2s$"):
            await link.read(Table.INPUT_REGISTER, 0, 2, 1)
        # given up at the timeout, not when the reply came: nothing was answered yet
        assert server.replies == 0 and len(server.requests) == 1
        assert not link.connected, "whatever arrives late dies with the connection"


async def test_a_late_reply_is_never_taken_for_the_next_request() -> None:
    # request A (level, registers 0..1) is answered after the timeout; B (pressure,
    # registers 2..3) follows at once: B gets its own registers, never A's.
    unit = Unit.of(1, "water-sensor", WATER, delay_s=0.4, delay_next=1)
    async with ModbusServer([unit]) as server:
        link = TcpLink("127.0.0.1", server.port, 0.2)
        with pytest.raises(ModbusTimeout):
            await link.read(Table.INPUT_REGISTER, 0, 2, 1)
        b = await link.read(Table.INPUT_REGISTER, 2, 2, 1)
        assert b == [0x0001, 0x8BCD]  # 101325 (101.325 kPa), not A's [0x0000, 0x3FC0]
        await asyncio.sleep(0.3)  # A's late reply has been sent by now
        assert await link.read(Table.INPUT_REGISTER, 2, 2, 1) == [0x0001, 0x8BCD]
        assert await link.read(Table.INPUT_REGISTER, 0, 2, 1) == [0x0000, 0x3FC0]
        link.close()


async def test_wrong_unit_id_times_out_and_goes_offline_after_n() -> None:
    async with ModbusServer([Unit.of(1, "smoke-detector", SMOKE)]) as server:
        link = TcpLink("127.0.0.1", server.port, 0.2)
        with pytest.raises(ModbusTimeout, match=r"unit 7: read discrete_input 0\.\.1: no reply"):
            await link.read(Table.DISCRETE_INPUT, 0, 2, 7)
        sink = RecordingSink()
        driver = ModbusDriver([tcp_device("smoke-7", "smoke-detector", server.port, 7,
                                          offline_after=3)], sink)
        async with running(driver):
            await wait_until(lambda: sink.current.get("smoke-7") is DeviceState.OFFLINE, 3)
            asked = len(server.polls_of(7))
    # the link's own read, then 3 failed polls (a 4th may start before the count is read:
    # the reason below says the device went offline on the 3rd)
    assert asked >= 1 + 3, "offline only after offline_after failed polls"
    assert sink.types() == ["device.offline"]
    reason = sink.of("device.offline")[0].data["reason"]
    assert reason.endswith("unit 7: read discrete_input 0..1: no reply within 0.2s "
                           "(3 failed polls)")


async def test_unreachable_device_is_a_connection_error() -> None:
    link = TcpLink("127.0.0.1", free_port(), 0.2)
    with pytest.raises(ModbusConnectionError, match="cannot connect: no Modbus TCP server "
                                                    "answers"):
        await link.read(Table.COIL, 0, 1, 1)


async def test_compressed_outage_ends_online_with_fresh_events_without_restart() -> None:
    """A long outage (hours on site) compressed into seconds: same driver task throughout."""
    server = ModbusServer([Unit.of(1, "water-sensor", WATER)])
    await server.start()
    sink = RecordingSink()
    driver = ModbusDriver([tcp_device("tank", "water-sensor", server.port)], sink)
    with structlog.testing.capture_logs() as logs:
        async with running(driver) as task:
            await wait_until(lambda: sink.of("water.level"), 3)
            await server.stop()
            await wait_until(lambda: sink.current.get("tank") is DeviceState.OFFLINE, 3)
            await asyncio.sleep(2.0)  # the outage
            before = len(sink.events)
            await server.set(1, level=1.75)
            await server.start()
            await wait_until(lambda: sink.current.get("tank") is DeviceState.ONLINE, 3)
            await wait_until(lambda: len(sink.of("water.level")) == 2, 3)
            assert not task.done()
        await server.stop()
    assert sink.types()[:2] == ["water.level", "water.pressure"]
    after = sink.types()[before:]
    assert after[0] == "device.online" and {"water.level", "water.pressure"} <= set(after)
    assert sink.of("water.level")[-1].data == {"level_m": 1.75, "battery_pct": 100}
    # backoff during the outage: capped at max_backoff_s 0.4, so few attempts in 2 s
    assert [s for _, s, _ in sink.states] == [DeviceState.ONLINE, DeviceState.OFFLINE,
                                              DeviceState.ONLINE]
    assert not [e for e in logs if e["event"] in ("task_crashed", "task_restarting")]
    assert not sink.invalid


async def test_a_poll_that_crashes_is_counted_and_polling_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = Extractor.__call__
    calls = {"n": 0}

    def flaky(self: Extractor, values: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("decoder bug")
        return real(self, values)

    monkeypatch.setattr(Extractor, "__call__", flaky)
    async with ModbusServer([Unit.of(1, "water-sensor", WATER)]) as server:
        sink = RecordingSink()
        driver = ModbusDriver([tcp_device("w", "water-sensor", server.port)], sink)
        with structlog.testing.capture_logs() as logs:
            async with running(driver):
                await wait_until(lambda: sink.of("water.level"), 3)
    assert [e["event"] for e in logs if e["event"] == "modbus_poll_crashed"] == \
        ["modbus_poll_crashed"]
    assert sink.current["w"] is DeviceState.ONLINE


async def test_many_tcp_devices_one_dead_the_others_keep_their_period() -> None:
    units = [Unit.of(u, "smoke-detector", SMOKE) for u in (1, 2, 3)]
    async with ModbusServer(units) as server:
        server.muted.add(3)
        devices = [tcp_device(f"s{u}", "smoke-detector", server.port, u, timeout_s=0.3)
                   for u in (1, 2, 3)]
        driver = ModbusDriver(devices, RecordingSink())
        async with running(driver):
            await asyncio.sleep(0.3)
            start = time.monotonic()
            await asyncio.sleep(1.5)
            end = time.monotonic()
    for unit in (1, 2):
        polls = [t for t in server.polls_of(unit, 2) if start <= t < end]
        assert len(polls) >= 0.8 * 1.5 / 0.1, (unit, len(polls))


# --------------------------------------------------------------------------- writes

@pytest.fixture
def relay_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "door-relay.yaml").write_text(WRITABLE_PROFILE, "utf-8")
    monkeypatch.setattr(profile_module, "DEFAULT_SEARCH_PATH", (SHIPPED_PROFILES, tmp_path))
    return "door-relay"


def _audits(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in ("log_level", "event")}
            for e in logs if e["event"] == "modbus_write"]


async def test_writes_are_allow_listed_encoded_and_audited(relay_profile: str) -> None:
    async with ModbusServer([Unit.of(1, relay_profile, RELAY)]) as server:
        device = tcp_device("door", relay_profile, server.port,
                            allow_writes=["unlock", "release_time", "relay_b", "keypad_code",
                                          "setpoint"])
        driver = ModbusDriver([device], RecordingSink())
        check = TcpLink("127.0.0.1", server.port, 0.5)
        who = {"actor": "operator:li", "reason": "visitor at the north gate"}
        with structlog.testing.capture_logs() as logs:
            result = await write_point(driver, "door", "unlock", True, **who)
            assert (result.function_code, result.address, result.count) == (5, 0, 1)
            assert await check.read(Table.COIL, 0, 1, 1) == [True]
            await write_point(driver, "door", "release_time", 2.5, **who)
            assert await check.read(Table.HOLDING_REGISTER, 0, 1, 1) == [25]  # scale 0.1
            await write_point(driver, "door", "relay_b", True, **who)  # read-modify-write
            assert await check.read(Table.HOLDING_REGISTER, 1, 1, 1) == [0b11]
            result = await write_point(driver, "door", "setpoint", 1.5, **who)
            assert (result.function_code, result.count) == (16, 2)
            assert await check.read(Table.HOLDING_REGISTER, 4, 2, 1) == [0x0000, 0x3FC0]
            await write_point(driver, "door", "keypad_code", 4711, **who)
            assert await check.read(Table.HOLDING_REGISTER, 2, 2, 1) == [0, 4711]
        check.close()
        driver.device("door").link.close()
    audits = _audits(logs)
    assert audits[0] == {"device": "door", "point": "unlock", "actor": "operator:li",
                         "reason": "visitor at the north gate", "result": "ok",
                         "value": True, "function_code": 5}
    assert [a["point"] for a in audits] == ["unlock", "release_time", "relay_b", "setpoint",
                                            "keypad_code"]
    assert all(a["result"] == "ok" for a in audits)
    assert "value" not in audits[-1], "a credential-like point's value is never logged"
    assert "4711" not in repr(logs)


async def test_writes_that_are_not_allowed_or_fail_are_refused_precisely(
        relay_profile: str) -> None:
    async with ModbusServer([Unit.of(1, relay_profile, RELAY)]) as server:
        device = tcp_device("door", relay_profile, server.port, allow_writes=["release_time",
                                                                              "keypad_code"])
        driver = ModbusDriver([device], RecordingSink())
        who = {"actor": "operator:li", "reason": "test"}
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(WriteRefused, match="`unlock` is not in device `door`'s "
                                                   "allow_writes"):
                await write_point(driver, "door", "unlock", True, **who)
            with pytest.raises(WriteRefused, match="no Modbus device `gate-9`"):
                await write_point(driver, "gate-9", "unlock", True, **who)
            with pytest.raises(WriteRefused, match="has no point `unlok`"):
                await write_point(driver, "door", "unlok", True, **who)
            with pytest.raises(WriteRefused, match="needs an actor"):
                await write_point(driver, "door", "release_time", 1, actor=" ", reason="x")
            with pytest.raises(WriteValueError, match=r"release_time.*out of range for uint16"):
                await write_point(driver, "door", "release_time", -1, **who)
            with pytest.raises(WriteValueError):
                await write_point(driver, "door", "keypad_code", 2**40, **who)
            server.muted.add(1)
            with pytest.raises(WriteFailed, match=r"write register 0\.\.0 \(FC6\): no reply") \
                    as failed:
                await write_point(driver, "door", "release_time", 1, **who)
            assert isinstance(failed.value.error, ModbusTimeout)
        driver.device("door").link.close()
    results = [(a["point"], a["result"]) for a in _audits(logs)]
    assert results == [("unlock", "refused"), ("unlock", "refused"), ("unlok", "refused"),
                       ("release_time", "refused"), ("release_time", "invalid"),
                       ("keypad_code", "invalid"), ("release_time", "failed")]
    assert str(2**40) not in repr(logs), "not even in an error message"


def test_no_network_path_can_write() -> None:
    """Only writes.py defines a write; nothing in the agent or the drivers calls it."""
    root = Path(__file__).resolve().parents[1]
    callers = [path for folder in ("edge_agent", "drivers", "collector")
               for path in (root / folder).rglob("*.py")
               if ("write_point" in path.read_text("utf-8")
                   or "modbus.writes" in path.read_text("utf-8"))
               and path.name != "writes.py"]
    assert callers == []
    assert not hasattr(driver_module.ModbusDriver, "write")


# --------------------------------------------------------------------------- poll bursts


def test_tcp_slots_make_bursts_of_at_most_the_limit_spread_over_the_period() -> None:
    assert tcp_slots([1.0] * 3, 50.0) == [50.0] * 3  # few devices: one burst
    phases = tcp_slots([1.0] * 250, 10.0)
    assert sorted(set(phases)) == [10.0, 10.0 + 1 / 3, 10.0 + 2 / 3]  # 3 slots of <= 100
    assert max(phases.count(p) for p in set(phases)) <= TCP_BURST_MAX
    mixed = tcp_slots([1.0, 5.0, 1.0, 5.0], 0.0)
    assert mixed == [0.0, 0.0, 0.0, 0.0]  # per period: one burst each


async def test_a_device_that_recovers_rejoins_its_burst() -> None:
    # Two devices share a slot; one is dead for a while, backs off off-grid, and when it
    # answers again it polls at the same instants as the other.
    units = [Unit.of(u, "smoke-detector", SMOKE) for u in (1, 2)]
    async with ModbusServer(units) as server:
        server.muted.add(2)
        # a back-off cap that is no multiple of the period puts s2 off its slot
        devices = [tcp_device(f"s{u}", "smoke-detector", server.port, u, timeout_s=0.05,
                              max_backoff_s=0.25) for u in (1, 2)]
        driver = ModbusDriver(devices, RecordingSink())
        async with running(driver):
            await asyncio.sleep(0.5)
            server.muted.discard(2)
            await wait_until(lambda: driver.device("s2").poller.failures == 0, 5)
            await asyncio.sleep(0.6)
            start = time.monotonic()
            await asyncio.sleep(0.5)
    one = [t for t in server.polls_of(1, 2) if t >= start]
    two = [t for t in server.polls_of(2, 2) if t >= start]
    assert len(one) >= 3 and len(two) >= 3
    # each poll of s2 is within a few ms of one of s1 (same slot), not half a period off
    assert all(min(abs(t - u) for u in one) < 0.03 for t in two), (one, two)


async def test_devices_behind_a_tcp_gateway_share_one_connection_one_request_at_a_time(
        ) -> None:
    # Three detectors behind one TCP-to-RTU gateway; each answer takes 30 ms (the RS-485
    # side). On one shared connection the requests never overlap.
    units = [Unit.of(u, "smoke-detector", SMOKE, delay_s=0.03) for u in (1, 2, 3)]
    async with ModbusServer(units) as server:
        devices = [tcp_device(f"s{u}", "smoke-detector", server.port, u, period_s=0.5,
                              tcp={"host": "127.0.0.1", "port": server.port, "gateway": True})
                   for u in (1, 2, 3)]
        sink = RecordingSink()
        driver = ModbusDriver(devices, sink)
        links = {id(driver.device(f"s{u}").link) for u in (1, 2, 3)}
        assert len(links) == 1 and not driver.tcp_loops and len(driver.bus_loops) == 1
        async with running(driver):
            await wait_until(lambda: all(sink.current.get(f"s{u}") is DeviceState.ONLINE
                                         for u in (1, 2, 3)), 5)
            await asyncio.sleep(1.0)
    starts = sorted(r.at for r in server.requests)
    assert len(starts) >= 9
    # one at a time: each request starts after the previous one's 30 ms answer
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.025


def test_devices_at_one_address_must_agree_on_gateway() -> None:
    devices = [tcp_device("a", "smoke-detector", 1502, 1,
                          tcp={"host": "10.0.0.9", "port": 1502, "gateway": True}),
               tcp_device("b", "smoke-detector", 1502, 2,
                          tcp={"host": "10.0.0.9", "port": 1502})]
    (problem,) = check_buses(devices)
    assert problem.startswith("device b: tcp://10.0.0.9:1502 is a gateway for a "
                              "(`tcp.gateway`) but not for this device")


PEER_20 = "peer-20"  # tests/data/modbus/peer-20.yaml


@pytest.mark.usefixtures("peer_profiles")
async def test_a_tcp_device_reads_the_peer_workload_in_one_request_per_poll() -> None:
    """20 registers in five runs over 0-54 with a 14-register hole: over TCP the gap fill
    follows the link (a round trip costs more than 14 registers), so one FC3 per poll."""
    values = {f"{run}{i}": 100 + n for n, (run, i) in
              enumerate(itertools.product("abcde", range(4)))}
    async with ModbusServer([Unit.of(1, PEER_20, values)]) as server:
        sink = RecordingSink()
        driver = ModbusDriver([tcp_device("peer-1", PEER_20, server.port, period_s=0.05)], sink)
        async with running(driver):
            await wait_until(lambda: len(server.polls_of(1)) >= 5, 5, "five polls")
    reads = {(r.function_code, r.address, r.count) for r in server.requests}
    assert reads == {(3, 0, 55)}, "one request per poll, the whole span"
    assert driver.device("peer-1").poller.cfg.link_cost().kind == "tcp"
