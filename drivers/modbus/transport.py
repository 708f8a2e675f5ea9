"""Modbus links: one TCP connection per device (`tcp_link`), one serial port per bus
(`rtu_link`, pymodbus). This module holds what they share: the base class, the
exception tree and the serial settings.

A link turns every way a request can fail into one precise exception (the tree is
below) and never returns a value it cannot vouch for: the reply must come from the
unit asked, for the function asked, with the count asked.

    ModbusError
    ├── ModbusTimeout            no reply within the timeout (nothing at all arrived)
    ├── ModbusConnectionError    cannot connect / connection lost / serial port missing
    ├── ModbusExceptionResponse  the device answered with an exception code (.code)
    └── ModbusProtocolError      bytes arrived but no valid reply (CRC or framing garbage,
                                 another unit), wrong function, wrong count, bad echo, only
                                 another transaction id (TCP); the message says `garbled
                                 reply` or `no valid reply` (the status page's reason)

A late reply is never taken for the answer to a later request:
- TCP: after a timeout or a garbled reply the connection is dropped; whatever arrives
  late dies with it (and a reply must carry the transaction id of the request).
- RTU has no transaction ids, so after a timeout or garbage the link keeps the line
  silent until it has been quiet for `quiet_s`; bytes arriving meanwhile are discarded,
  and a reply from another unit, for another function or with another count is
  rejected. (A reply later than that, to a request of the very same shape, cannot be
  told apart on the wire; the poller asks a unit that timed out again only after its
  back-off, at least one period later.)
One request at a time per link (`lock`); on RTU a pause of at least 3.5 character
times (`pause_s`) separates a reply from the next request, whoever sends it.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus.points import Table

__all__ = [
    "EXCEPTION_NAMES",
    "Link",
    "ModbusConnectionError",
    "ModbusError",
    "ModbusExceptionResponse",
    "ModbusProtocolError",
    "ModbusTimeout",
    "SerialSettings",
]

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusError(Exception):
    """Base of every failed request; `str()` names the link, unit and request."""


class ModbusTimeout(ModbusError):
    pass


class ModbusConnectionError(ModbusError):
    pass


class ModbusProtocolError(ModbusError):
    pass


class ModbusExceptionResponse(ModbusError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SerialSettings:
    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1

    def char_time_s(self) -> float:
        """Seconds per character on the wire (start + data + parity + stop bits)."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    def frame_gap_s(self) -> float:
        """The silence that ends an RTU frame: 3.5 characters, fixed 1.75 ms above 19,200 baud."""
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_time_s()


class Link(abc.ABC):
    """One request at a time to the devices behind one connection or serial port.

    `read`/`write` take `lock` for one request; a caller that needs several requests
    in a row (read-modify-write) holds `lock` itself and calls `read_locked`/`write_locked`.
    Every failure is one of the ModbusError subclasses above; nothing else escapes.
    """

    def __init__(self, name: str, timeout_s: float, *, pause_s: float = 0.0,
                 quiet_s: float = 0.0) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.pause_s = pause_s  # silence kept between a reply and the next request
        self.quiet_s = quiet_s  # silence awaited after an error (RTU)
        self.lock = asyncio.Lock()

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the connection: whatever arrives late is discarded with it."""

    async def read(self, table: Table, start: int, count: int, unit: int, *,
                   timeout_s: float | None = None) -> list[int] | list[bool]:
        """One read request; exactly `count` registers or bits, or a ModbusError."""
        async with self.lock:
            return await self.read_locked(table, start, count, unit, timeout_s=timeout_s)

    async def write(self, table: Table, start: int, values: Sequence[int] | Sequence[bool],
                    unit: int, *, timeout_s: float | None = None) -> int:
        async with self.lock:
            return await self.write_locked(table, start, values, unit, timeout_s=timeout_s)

    def write_plan(self, table: Table, start: int, values: Sequence[int] | Sequence[bool],
                   unit: int) -> tuple[int, str]:
        """(function code, description for messages) of a write; ValueError if impossible."""
        if not table.writable or not values:
            raise ValueError(f"cannot write {len(values)} value(s) to {table.value}")
        single = len(values) == 1
        fc = table.write_single_function if single else table.write_multiple_function
        assert fc is not None
        kind = "coil" if table is Table.COIL else "register"
        return fc, (f"{self.name} unit {unit}: write {kind}{'' if single else 's'} "
                    f"{start}..{start + len(values) - 1} (FC{fc})")

    @abc.abstractmethod
    async def read_locked(self, table: Table, start: int, count: int, unit: int, *,
                          timeout_s: float | None = None) -> list[int] | list[bool]:
        """`read` for a caller that holds `lock`."""

    @abc.abstractmethod
    async def write_locked(self, table: Table, start: int,
                           values: Sequence[int] | Sequence[bool], unit: int, *,
                           timeout_s: float | None = None) -> int:
        """Write coils (FC5/FC15) or holding registers (FC6/FC16); returns the function
        code. The device's echo (address, and the value of a single write) is checked."""
