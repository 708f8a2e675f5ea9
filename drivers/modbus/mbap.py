"""Modbus TCP framing (MBAP header + PDU): building requests and checking replies. Pure.

Modbus Application Protocol 1.1b3 and Modbus Messaging on TCP/IP 1.0b:

    transaction id (2) | protocol id (2, always 0) | length (2) | unit id (1) | PDU

`length` counts the unit id and the PDU; a PDU is at most 253 bytes, so a valid frame
is 8..260 bytes. Replies are checked completely before any value is believed: the
function (or its exception form, function | 0x80), the byte count against the count
asked, and for writes the device's echo.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

__all__ = [
    "HEADER",
    "MAX_PDU",
    "ExceptionReply",
    "Frame",
    "FrameError",
    "FrameReader",
    "ReplyError",
    "parse_read_reply",
    "parse_write_reply",
    "read_request",
    "write_request",
]

HEADER = struct.Struct(">HHHB")  # transaction, protocol, length, unit
MAX_PDU = 253
_READ = struct.Struct(">HHHBBHH")  # header + function, address, count
_SINGLE = struct.Struct(">HHHBBHH")  # header + function, address, value
_MULTI = struct.Struct(">HHHBBHHB")  # header + function, address, count, byte count
_ECHO = struct.Struct(">BHH")  # function, address, value or count


class FrameError(ValueError):
    """The bytes on the connection are not Modbus TCP frames: the stream is lost."""


class ReplyError(ValueError):
    """A well-framed reply that does not answer the request (function, count, echo)."""


class ExceptionReply(Exception):
    """The device answered with an exception code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Frame:
    transaction: int
    unit: int
    pdu: bytes


def read_request(transaction: int, unit: int, function: int, address: int, count: int
                 ) -> bytes:
    return _READ.pack(transaction, 0, 6, unit, function, address, count)


def write_request(transaction: int, unit: int, function: int, address: int,
                  values: Sequence[int] | Sequence[bool]) -> bytes:
    """FC5/FC6 (one value) or FC15/FC16 (several)."""
    if function == 5:
        return _SINGLE.pack(transaction, 0, 6, unit, 5, address, 0xFF00 if values[0] else 0)
    if function == 6:
        return _SINGLE.pack(transaction, 0, 6, unit, 6, address, int(values[0]))
    if function == 15:
        packed = bytearray((len(values) + 7) // 8)
        for i, bit in enumerate(values):
            if bit:
                packed[i // 8] |= 1 << (i % 8)
        head = _MULTI.pack(transaction, 0, 7 + len(packed), unit, 15, address, len(values),
                           len(packed))
        return head + bytes(packed)
    if function == 16:
        body = _registers(len(values)).pack(*(int(v) for v in values))
        return _MULTI.pack(transaction, 0, 7 + len(body), unit, 16, address, len(values),
                           len(body)) + body
    raise ValueError(f"function {function} is not a write")


class FrameReader:
    """Cuts a TCP byte stream into frames; raises FrameError on what cannot be one."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buffer
        buf += data
        frames: list[Frame] = []
        while len(buf) >= HEADER.size:
            transaction, protocol, length, unit = HEADER.unpack_from(buf)
            if protocol != 0 or not 2 <= length <= MAX_PDU + 1:
                raise FrameError(f"not a Modbus TCP frame (protocol id {protocol}, "
                                 f"length {length})")
            end = 6 + length
            if len(buf) < end:
                break
            frames.append(Frame(transaction, unit, bytes(buf[HEADER.size:end])))
            del buf[:end]
        return frames

    def pending(self) -> bytes:
        return bytes(self._buffer)


@cache
def _registers(count: int) -> struct.Struct:
    return struct.Struct(f">{count}H")


def _check_function(pdu: bytes, function: int) -> None:
    got = pdu[0]
    if got == function | 0x80:
        if len(pdu) != 2:
            raise ReplyError(f"an exception reply of {len(pdu)} bytes (2 expected)")
        raise ExceptionReply(pdu[1])
    if got != function:
        raise ReplyError(f"the reply is for function {got & 0x7F}, not {function}")


def parse_read_reply(pdu: bytes, function: int, count: int) -> list[int] | list[bool]:
    """Registers (FC3/FC4) or bits (FC1/FC2) of a read reply, exactly `count` of them."""
    if not pdu:
        raise ReplyError("an empty reply")
    _check_function(pdu, function)
    if len(pdu) < 2:
        raise ReplyError("a reply without a byte count")
    size = pdu[1]
    if len(pdu) != 2 + size:
        raise ReplyError(f"the byte count says {size}, the reply holds {len(pdu) - 2}")
    if function in (1, 2):
        if size != (count + 7) // 8:
            raise ReplyError(f"{size * 8} bits in the reply, {count} asked")
        return [bool(pdu[2 + i // 8] >> (i % 8) & 1) for i in range(count)]
    if size != 2 * count:
        raise ReplyError(f"{size // 2} registers in the reply, {count} asked")
    return list(_registers(count).unpack_from(pdu, 2))


def parse_write_reply(pdu: bytes, function: int) -> tuple[int, int]:
    """(address, value) of an FC5/FC6 echo, (address, count) of an FC15/FC16 reply."""
    if not pdu:
        raise ReplyError("an empty reply")
    _check_function(pdu, function)
    if len(pdu) != _ECHO.size:
        raise ReplyError(f"a write reply of {len(pdu)} bytes ({_ECHO.size} expected)")
    _, address, value = _ECHO.unpack(pdu)
    return address, value
