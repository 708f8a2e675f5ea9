"""Real Modbus peers for tests: pymodbus servers serving a profile's register layout.

`Unit` holds one simulated device: a profile and the *point values* it should read
as. The registers are produced with `drivers.modbus.decode.encode`, so byte and word
orders and scaling are exercised end to end. `ModbusServer` serves units over TCP
(127.0.0.1, a free port) or RTU (one end of a socat pty pair) and can, per unit:
go silent (`muted`: a dead device, or a unit id nobody has, as on a real RS-485 bus),
answer late (`delay_s`), answer with an exception code (`exception`) or corrupt its
replies (`corrupt`: the CRC on RTU). Every request it receives is recorded.

`RecordingSink` is an EventSink that mints each event with `new_event(...).stamped()`
and validates it against the envelope JSON Schema; device states become
`device.online`/`device.offline` events as the pipeline makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.decode import Value, encode
from drivers.modbus.device import ModbusDevice
from drivers.modbus.points import PointType, Table
from drivers.modbus.profile import Profile, load_profile
from edge_agent.contract.envelope import Hierarchy
from edge_agent.sdk.testing import RecordingSink as RecordingSink
from tests.harness import wait_until
from tests.peers import free_port, require_binary

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

H = Hierarchy(district="371312", street="371312001", community="371312001001", gateway="gw-t")
_TABLES = (Table.COIL, Table.DISCRETE_INPUT, Table.HOLDING_REGISTER, Table.INPUT_REGISTER)

#: Point values of the shipped profiles' devices, as they should read.
SMOKE = {"alarm": True, "fault": False, "density": 0.15, "temperature": -5.0, "battery": 87,
         "fault_code": 0}
WATER = {"leak": False, "level": 1.5, "pressure": 101.325, "battery": 100}
GATE = {"door_open": True, "locked": False, "forced_open": False, "held_open": True,
        "open_time": 95, "access_counter": 41, "access_result": 1, "access_method": 1,
        "access_direction": 1, "card_number": 12345678}

#: An Eastron SDM120 on a 230 V line, and an Armstrong booster pump running normally.
METER = {"voltage": 230.5, "current": 4.25, "active_power": 950.0, "apparent_power": 979.6,
         "reactive_power": 120.0, "power_factor": 0.97, "frequency": 50.01,
         "import_energy": 1234.5, "export_energy": 0.0, "import_reactive": 56.25,
         "export_reactive": 0.0, "total_energy": 1234.5}
PUMP = {"hand_mode": False, "off_mode": False, "auto_mode": True, "running": True,
        "pump_alarm": False, "run_feedback_alarm": False, "drive_fault": False,
        "speed": 80.0, "drive_current": 12.5, "drive_voltage": 400.0, "drive_power": 5.5,
        "speed_feedback": 79.5, "head": 42.0}

#: A test profile with writable points of every kind.
WRITABLE_PROFILE = """\
name: door-relay
description: A door relay with a remote unlock coil and a keypad code (test profile)
points:
  - {name: door_open, table: discrete_input, address: 0, type: bool}
  - {name: unlock, table: coil, address: 0, type: bool, writable: true}
  - {name: release_time, table: holding_register, address: 0, type: uint16, scale: 0.1,
     unit: s, writable: true}
  - {name: relay_a, table: holding_register, address: 1, type: bit, bit: 0, writable: true}
  - {name: relay_b, table: holding_register, address: 1, type: bit, bit: 1, writable: true}
  - {name: keypad_code, table: holding_register, address: 2, type: uint32, writable: true}
  - {name: setpoint, table: holding_register, address: 4, type: float32, word_order: little,
     writable: true}
events:
  - type: gate.state
    state:
      door: {point: door_open, map: {true: open, false: closed}}
"""
RELAY = {"door_open": False, "unlock": False, "release_time": 3.0, "relay_a": True,
         "relay_b": False, "keypad_code": 0, "setpoint": 0.0}


def layout(profile: Profile, values: dict[str, Value]) -> dict[Table, list[int] | list[bool]]:
    """Each table's contents from address 0 to the profile's last address, as encoded."""
    tables: dict[Table, dict[int, int | bool]] = {t: {} for t in _TABLES}
    for point in profile.points:
        if point.name not in values:
            continue
        words = tables[point.table]
        if point.type is PointType.BIT:
            current = int(words.get(point.address, 0))
            words[point.address] = int(encode(point, values[point.name], current=current)[0])
            continue
        for i, word in enumerate(encode(point, values[point.name])):
            words[point.address + i] = word
    out: dict[Table, list[int] | list[bool]] = {}
    for table in _TABLES:
        last = max((p.last_address for p in profile.points if p.table is table), default=0)
        if table.is_bits:
            out[table] = [bool(tables[table].get(a, False)) for a in range(last + 1)]
        else:
            out[table] = [int(tables[table].get(a, 0)) for a in range(last + 1)]
    return out


@dataclass
class Unit:
    """One simulated device on a server."""

    unit_id: int
    profile: Profile
    values: dict[str, Value]
    delay_s: float = 0.0  # answer this late
    exception: int | None = None  # answer every request with this exception code
    #: answer this many more requests late (then on time again); None: always `delay_s`
    delay_next: int | None = None

    @classmethod
    def of(cls, unit_id: int, profile: str, values: dict[str, Value], **kw: Any) -> Unit:
        return cls(unit_id, load_profile(profile), dict(values), **kw)

    async def action(self, fc: int, start: int, address: int, count: int,
                     registers: list[int], set_values: Any) -> ExcCodes | None:
        if self.delay_s and (self.delay_next is None or self.delay_next > 0):
            if self.delay_next is not None:
                self.delay_next -= 1
            await asyncio.sleep(self.delay_s)
        if self.exception is not None:
            return ExcCodes(self.exception)
        return None

    def sim_device(self) -> SimDevice:
        tables = layout(self.profile, self.values)
        blocks = []
        for table in _TABLES:
            kind = DataType.BITS if table.is_bits else DataType.REGISTERS
            blocks.append([SimData(0, values=list(tables[table]), datatype=kind)])
        return SimDevice(id=self.unit_id, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
                         action=self.action)


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic()
    unit: int
    function_code: int
    address: int
    count: int


class ModbusServer:
    """A pymodbus TCP or RTU server for `units`; `stop()`/`start()` keep the port."""

    def __init__(self, units: Iterable[Unit], *, serial_port: str | None = None,
                 port: int | None = None) -> None:
        self.units = {u.unit_id: u for u in units}
        self.serial_port = serial_port
        self.port = port if port is not None else free_port()
        self.muted: set[int] = set()
        self.corrupt: set[int] = set()
        self.requests: list[Request] = []
        #: how many replies went out (a muted unit's silence is none)
        self.replies = 0
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    async def __aenter__(self) -> ModbusServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        devices = [u.sim_device() for u in self.units.values()]
        if self.serial_port is not None:
            self._server = ModbusSerialServer(
                devices, port=self.serial_port, framer=FramerType.RTU, baudrate=9600,
                trace_packet=self._trace_packet, trace_pdu=self._trace_pdu)
        else:
            self._server = ModbusTcpServer(
                devices, address=("127.0.0.1", self.port),
                trace_packet=self._trace_packet, trace_pdu=self._trace_pdu)
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def set(self, unit_id: int, **values: Value) -> None:
        """Change point values; a running server serves them from its next reply."""
        unit = self.units[unit_id]
        unit.values.update(values)
        if self._server is None:
            return
        for table, contents in layout(unit.profile, unit.values).items():
            await self._server.async_setValues(unit_id, table.read_function, 0, contents)

    def polls_of(self, unit_id: int, function_code: int | None = None) -> list[float]:
        """When the unit was asked (each request, or only those with `function_code`)."""
        return [r.at for r in self.requests if r.unit == unit_id
                and (function_code is None or r.function_code == function_code)]

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests.append(Request(time.monotonic(), pdu.dev_id, pdu.function_code,
                                         pdu.address, pdu.count))
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        unit = data[0] if self.serial_port is not None else data[6]
        if unit in self.muted or unit not in self.units:
            return b""  # a real bus is silent: pymodbus' SimDevice server would answer 4
        self.replies += 1
        if unit in self.corrupt:
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data


@contextlib.asynccontextmanager
async def pty_pair(folder: Path) -> AsyncIterator[tuple[str, str]]:
    """Two linked serial ptys from socat: (server end, client end)."""
    socat = require_binary("socat")
    a, b = str(folder / "ttyA"), str(folder / "ttyB")
    proc = await asyncio.create_subprocess_exec(
        socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_until(lambda: os.path.exists(a) and os.path.exists(b), 5.0, "socat ptys")
        yield a, b
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def tcp_device(dev_id: str, profile: str, port: int, unit: int = 1, **kw: Any) -> ModbusDevice:
    """A Modbus TCP device on 127.0.0.1 with fast test timings."""
    options = {"period_s": 0.1, "timeout_s": 0.2, "offline_after": 2, "max_backoff_s": 0.4,
               **kw}
    return ModbusDevice.model_validate({"id": dev_id, "driver": "modbus", "profile": profile,
                                        "unit_id": unit,
                                        "tcp": {"host": "127.0.0.1", "port": port}, **options})


class _LoopbackPeer:
    """A TCP server on 127.0.0.1 and a port of its own while `async with` lasts; each
    connection is `_handle`d."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class JunkServer(_LoopbackPeer):
    """A TCP peer that answers every request with bytes that are no Modbus reply."""

    def __init__(self, junk: bytes = bytes(range(0xF0, 0x100)) * 2) -> None:
        super().__init__()
        self.junk = junk

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(260):
                writer.write(self.junk)
                await writer.drain()
        writer.close()




#: The quirks `QuirkyServer` can play, one at a time.
Quirk = Literal["wrong_transaction", "close_after_reply", "gone_after_reply", "other_unit",
                "other_function", "bad_byte_count"]


class QuirkyServer(_LoopbackPeer):
    """A Modbus TCP peer speaking MBAP by hand, with one quirk of real devices switched on.

    Reads (FC1-FC4) are answered with zeros of the count asked, unless `quirk` says:
    - `wrong_transaction`: the reply carries another transaction id than the request;
    - `close_after_reply`: the connection is closed after every reply (cheap gateways).
      The close is made when the next request arrives, so that request is lost on the
      closing connection, as it is with a real gateway whenever the client is quicker;
    - `gone_after_reply`: as `close_after_reply`, and after the first reply the device
      is down: every later connection is closed at its first request, unanswered;
    - `other_unit`: the reply comes from unit id + 7;
    - `other_function`: the reply is for FC3 (FC4 when FC3 was asked);
    - `bad_byte_count`: the byte count says 200, one data byte follows.
    `connections`, `requests` and `replies` count what it saw and did.
    """

    def __init__(self, quirk: Quirk | None = None) -> None:
        super().__init__()
        self.quirk = quirk
        self.connections = 0
        self.requests = 0
        self.replies = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        closing = self.quirk in ("close_after_reply", "gone_after_reply")
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                if self.quirk == "gone_after_reply" and self.replies:
                    break
                writer.write(self._reply(tid, unit, pdu))
                await writer.drain()
                self.replies += 1
                if closing:
                    if await reader.read(260):  # the next request: lost with the connection
                        self.requests += 1
                    break
        writer.close()

    def _reply(self, tid: int, unit: int, pdu: bytes) -> bytes:
        fc = pdu[0]
        count = struct.unpack(">H", pdu[3:5])[0]
        data = bytes((count + 7) // 8 if fc in (1, 2) else 2 * count)
        body = bytes([fc, len(data)]) + data
        if self.quirk == "wrong_transaction":
            tid ^= 0x5555
        elif self.quirk == "other_unit":
            unit = (unit + 7) & 0xFF
        elif self.quirk == "other_function":
            body = bytes([4 if fc == 3 else 3]) + body[1:]
        elif self.quirk == "bad_byte_count":
            body = bytes([fc, 200]) + data[:1]
        return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
