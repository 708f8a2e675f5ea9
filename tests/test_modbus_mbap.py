"""Modbus TCP framing: requests byte for byte as pymodbus frames them; replies checked."""

from __future__ import annotations

from typing import Any

import pytest
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteMultipleCoilsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from drivers.modbus import mbap

FRAMER = FramerSocket(DecodePDU(False))


def pymodbus_bytes(pdu: ModbusPDU) -> bytes:
    return bytes(FRAMER.buildFrame(pdu))


@pytest.mark.parametrize(("function", "cls"), [
    (1, ReadCoilsRequest), (2, ReadDiscreteInputsRequest),
    (3, ReadHoldingRegistersRequest), (4, ReadInputRegistersRequest)])
@pytest.mark.parametrize(("tid", "unit", "address", "count"),
                         [(1, 1, 0, 1), (0xFFFF, 247, 65535 - 124, 125), (300, 0, 10, 100)])
def test_read_requests_match_pymodbus(function: int, cls: Any, tid: int, unit: int,
                                      address: int, count: int) -> None:
    expected = pymodbus_bytes(cls(address=address, count=count, dev_id=unit,
                                  transaction_id=tid))
    assert mbap.read_request(tid, unit, function, address, count) == expected


@pytest.mark.parametrize(("function", "values", "pdu"), [
    (5, [True], WriteSingleCoilRequest(address=2, bits=[True], dev_id=5, transaction_id=9)),
    (5, [False], WriteSingleCoilRequest(address=2, bits=[False], dev_id=5, transaction_id=9)),
    (6, [0xBEEF], WriteSingleRegisterRequest(address=2, registers=[0xBEEF], dev_id=5,
                                             transaction_id=9)),
    (15, [True, False, True, True, False, False, False, False, True],
     WriteMultipleCoilsRequest(address=2, bits=[True, False, True, True, False, False,
                                                False, False, True], dev_id=5,
                               transaction_id=9)),
    (16, [1, 2, 0xFFFF], WriteMultipleRegistersRequest(address=2, registers=[1, 2, 0xFFFF],
                                                      dev_id=5, transaction_id=9)),
])
def test_write_requests_match_pymodbus(function: int, values: list[Any], pdu: ModbusPDU
                                       ) -> None:
    assert mbap.write_request(9, 5, function, 2, values) == pymodbus_bytes(pdu)


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return mbap.HEADER.pack(tid, 0, len(pdu) + 1, unit) + pdu


def test_frames_are_cut_from_a_stream_in_any_pieces() -> None:
    stream = frame(1, 3, b"\x03\x04\x00\x01\x00\x02") + frame(2, 3, b"\x83\x02")
    for cut in range(len(stream) + 1):
        reader = mbap.FrameReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert got == [mbap.Frame(1, 3, b"\x03\x04\x00\x01\x00\x02"), mbap.Frame(2, 3, b"\x83\x02")]
        assert reader.pending() == b""


@pytest.mark.parametrize("garbage", [
    b"\xf0\xf1\xf2\xf3\xf4\xf5\xf6\xf7",  # protocol id not 0
    mbap.HEADER.pack(1, 0, 0, 1),  # length below unit + function
    mbap.HEADER.pack(1, 0, 300, 1),  # longer than any PDU
])
def test_what_cannot_be_a_frame_is_a_frame_error(garbage: bytes) -> None:
    with pytest.raises(mbap.FrameError, match="not a Modbus TCP frame"):
        mbap.FrameReader().feed(garbage)


@pytest.mark.parametrize(("pdu", "function", "count", "expected"), [
    (b"\x03\x04\x00\x01\xff\xff", 3, 2, [1, 0xFFFF]),
    (b"\x04\x02\x12\x34", 4, 1, [0x1234]),
    (b"\x01\x02\x0d\x01", 1, 9, [True, False, True, True, False, False, False, False, True]),
    (b"\x02\x01\x01", 2, 3, [True, False, False]),
])
def test_read_replies(pdu: bytes, function: int, count: int, expected: list[Any]) -> None:
    assert mbap.parse_read_reply(pdu, function, count) == expected


@pytest.mark.parametrize(("pdu", "function", "count", "error"), [
    (b"", 3, 1, "an empty reply"),
    (b"\x04\x02\x00\x01", 3, 1, "the reply is for function 4, not 3"),
    (b"\x03\x04\x00\x01", 3, 2, "the byte count says 4, the reply holds 2"),
    (b"\x03\x02\x00\x01", 3, 2, "1 registers in the reply, 2 asked"),
    (b"\x01\x02\x00\x01", 1, 3, "16 bits in the reply, 3 asked"),
    (b"\x83\x02\x00", 3, 1, "an exception reply of 3 bytes"),
])
def test_replies_that_do_not_answer_the_request(pdu: bytes, function: int, count: int,
                                                error: str) -> None:
    with pytest.raises(mbap.ReplyError, match=error):
        mbap.parse_read_reply(pdu, function, count)


def test_exception_replies_carry_the_code() -> None:
    with pytest.raises(mbap.ExceptionReply) as err:
        mbap.parse_read_reply(b"\x83\x02", 3, 1)
    assert err.value.code == 2
    with pytest.raises(mbap.ExceptionReply) as err:
        mbap.parse_write_reply(b"\x90\x04", 16)
    assert err.value.code == 4


def test_write_echo() -> None:
    assert mbap.parse_write_reply(b"\x06\x00\x02\xbe\xef", 6) == (2, 0xBEEF)
    assert mbap.parse_write_reply(b"\x10\x00\x02\x00\x03", 16) == (2, 3)
    with pytest.raises(mbap.ReplyError, match="a write reply of 3 bytes"):
        mbap.parse_write_reply(b"\x06\x00\x02", 6)
