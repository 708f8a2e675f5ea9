"""Modbus value decoding and encoding: known vectors, every type x byte/word order."""

from __future__ import annotations

import math
import re
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.decode import (
    DecodeError,
    EncodeError,
    bytes_to_registers,
    decode,
    decode_raw,
    encode,
    encode_raw,
    registers_to_bytes,
    set_bit,
)
from drivers.modbus.points import Order, Point, PointType, Table

B, L = Order.BIG, Order.LITTLE
ORDERS = [(B, B), (B, L), (L, B), (L, L)]  # (byte_order, word_order)


def _pt(type_: PointType, **extra: Any) -> Point:
    table = Table.COIL if type_ is PointType.BOOL else Table.HOLDING_REGISTER
    return Point(name="p", table=table, address=0, type=type_, **extra)


# --------------------------------------------------------------------------- known vectors

# (type, value, byte_order, word_order, registers)
VECTORS: list[tuple[PointType, Any, Order, Order, list[int]]] = [
    (PointType.FLOAT32, 1.5, B, B, [0x3FC0, 0x0000]),  # ABCD
    (PointType.FLOAT32, 1.5, B, L, [0x0000, 0x3FC0]),  # CDAB
    (PointType.FLOAT32, 1.5, L, B, [0xC03F, 0x0000]),  # BADC
    (PointType.FLOAT32, 1.5, L, L, [0x0000, 0xC03F]),  # DCBA
    (PointType.FLOAT32, -2.0, B, B, [0xC000, 0x0000]),
    (PointType.FLOAT32, 1.1, B, B, [0x3F8C, 0xCCCD]),  # shortest decimal, not 1.100000023841858
    (PointType.FLOAT64, 1.0, B, B, [0x3FF0, 0x0000, 0x0000, 0x0000]),
    (PointType.FLOAT64, 1.0, B, L, [0x0000, 0x0000, 0x0000, 0x3FF0]),
    (PointType.FLOAT64, 1.0, L, B, [0xF03F, 0x0000, 0x0000, 0x0000]),
    (PointType.FLOAT64, -0.1, B, B, [0xBFB9, 0x9999, 0x9999, 0x999A]),
    (PointType.INT32, 0x12345678, B, B, [0x1234, 0x5678]),
    (PointType.INT32, 0x12345678, B, L, [0x5678, 0x1234]),
    (PointType.INT32, 0x12345678, L, B, [0x3412, 0x7856]),
    (PointType.INT32, 0x12345678, L, L, [0x7856, 0x3412]),
    (PointType.INT32, -1, B, B, [0xFFFF, 0xFFFF]),
    (PointType.INT32, -2, B, L, [0xFFFE, 0xFFFF]),
    (PointType.UINT32, 4_294_967_295, B, B, [0xFFFF, 0xFFFF]),
    (PointType.UINT32, 101_325, B, B, [0x0001, 0x8BCD]),
    (PointType.UINT32, 101_325, B, L, [0x8BCD, 0x0001]),
    (PointType.INT16, -1, B, B, [0xFFFF]),
    (PointType.INT16, -32768, B, B, [0x8000]),
    (PointType.INT16, 0x0102, L, B, [0x0201]),
    (PointType.UINT16, 65535, B, B, [0xFFFF]),
    (PointType.UINT16, 0x1234, L, B, [0x3412]),
]


@pytest.mark.parametrize(("type_", "value", "byte_order", "word_order", "registers"), VECTORS)
def test_known_vectors(type_: PointType, value: Any, byte_order: Order, word_order: Order,
                       registers: list[int]) -> None:
    assert decode_raw(type_, registers, byte_order=byte_order, word_order=word_order) == value
    assert encode_raw(type_, value, byte_order=byte_order, word_order=word_order) == registers


def test_byte_layout_helpers() -> None:
    assert registers_to_bytes([0x0102, 0x0304]) == b"\x01\x02\x03\x04"
    assert registers_to_bytes([0x0102, 0x0304], L, B) == b"\x02\x01\x04\x03"
    assert registers_to_bytes([0x0102, 0x0304], B, L) == b"\x03\x04\x01\x02"
    assert registers_to_bytes([0x0102, 0x0304], L, L) == b"\x04\x03\x02\x01"
    for byte_order, word_order in ORDERS:
        data = b"\x01\x02\x03\x04\x05\x06"
        regs = bytes_to_registers(data, byte_order, word_order)
        assert registers_to_bytes(regs, byte_order, word_order) == data


# --------------------------------------------------------------------------- round trips

_INTS = {
    PointType.INT16: st.integers(-(2**15), 2**15 - 1),
    PointType.UINT16: st.integers(0, 2**16 - 1),
    PointType.INT32: st.integers(-(2**31), 2**31 - 1),
    PointType.UINT32: st.integers(0, 2**32 - 1),
}


@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS)
@pytest.mark.parametrize("type_", list(_INTS))
@given(data=st.data())
def test_integer_round_trip(type_: PointType, byte_order: Order, word_order: Order,
                            data: st.DataObject) -> None:
    value = data.draw(_INTS[type_])
    if type_.fixed_registers == 1 and word_order is L:
        return  # word order is only for 32- and 64-bit types (an error on a 16-bit point)
    point = _pt(type_, byte_order=byte_order, word_order=word_order)
    registers = encode(point, value)
    assert len(registers) == point.registers
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode(point, registers) == value


@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS)
@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_round_trip(byte_order: Order, word_order: Order, value: float) -> None:
    point = _pt(PointType.FLOAT32, byte_order=byte_order, word_order=word_order)
    got = decode(point, encode(point, value))
    assert isinstance(got, float)
    assert struct.pack(">f", got) == struct.pack(">f", value)  # the same float32 (0.0/-0.0 too)


@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS)
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_float64_round_trip(byte_order: Order, word_order: Order, value: float) -> None:
    point = _pt(PointType.FLOAT64, byte_order=byte_order, word_order=word_order)
    got = decode(point, encode(point, value))
    assert struct.pack(">d", got) == struct.pack(">d", value)


@pytest.mark.parametrize("byte_order", [B, L])
@given(text=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10)
       .map(str.strip))
def test_string_round_trip(byte_order: Order, text: str) -> None:
    length = max(1, (len(text.encode("utf-8")) + 1) // 2 + 1)
    point = _pt(PointType.STRING, length=length, byte_order=byte_order)
    assert decode(point, encode(point, text)) == text


def test_bool_and_bit_round_trip() -> None:
    coil = _pt(PointType.BOOL)
    for value in (True, False):
        assert encode(coil, value) == [value]
        assert decode(coil, [value]) is value
    assert decode(coil, [1]) is True and decode(coil, [0]) is False
    for bit in range(16):
        point = _pt(PointType.BIT, bit=bit)
        word = encode(point, True, current=0xFFFF ^ (1 << bit))
        assert word == [0xFFFF]
        assert decode(point, word) is True
        assert encode(point, False, current=0xFFFF) == [0xFFFF ^ (1 << bit)]
        assert decode(point, [0xFFFF ^ (1 << bit)]) is False


# --------------------------------------------------------------------------- bits, strings


def test_bit_in_register() -> None:
    assert decode_raw(PointType.BIT, [0b1010], bit=1) is True
    assert decode_raw(PointType.BIT, [0b1010], bit=0) is False
    assert decode_raw(PointType.BIT, [0x8000], bit=15) is True
    assert decode_raw(PointType.BIT, [0x8000], bit=7) is False
    assert set_bit(0x0000, 3, True) == 0x0008
    assert set_bit(0xFFFF, 15, False) == 0x7FFF
    assert set_bit(0x0008, 3, True) == 0x0008


def test_string_vectors() -> None:
    s = PointType.STRING
    assert decode_raw(s, [0x4142, 0x3132]) == "AB12"
    assert decode_raw(s, [0x4241, 0x3231], byte_order=L) == "AB12"
    assert encode_raw(s, "AB1", length=3) == [0x4142, 0x3100, 0x0000]
    assert encode_raw(s, "AB1", length=3, byte_order=L) == [0x4241, 0x0031, 0x0000]


@pytest.mark.parametrize(("data", "text"), [
    (b"AB\x00\x00", "AB"),  # NUL padding
    (b"AB  ", "AB"),  # space padding
    (b"  AB", "AB"),  # leading spaces
    (b"\x00\x00AB", "AB"),  # right-aligned with NULs
    (b"A B\x00", "A B"),  # inner space kept
    (b"AB\x00x", "AB"),  # cut at the terminator: what follows is stale buffer
    (b"\x00\x00\x00\x00", ""),
    ("门1".encode() + b"\x00\x00", "门1"),
])
def test_string_trimming(data: bytes, text: str) -> None:
    registers = bytes_to_registers(data)
    assert decode_raw(PointType.STRING, registers) == text


def test_string_that_is_not_utf8_is_an_error() -> None:
    with pytest.raises(DecodeError, match="not UTF-8"):
        decode_raw(PointType.STRING, bytes_to_registers(b"A\xff\xfeB"))


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(("type_", "registers", "what"), [
    (PointType.FLOAT32, [0x7FC0, 0x0000], "NaN"),
    (PointType.FLOAT32, [0xFFC0, 0x0001], "NaN"),
    (PointType.FLOAT32, [0x7F80, 0x0000], "+infinity"),
    (PointType.FLOAT32, [0xFF80, 0x0000], "-infinity"),
    (PointType.FLOAT64, [0x7FF8, 0x0000, 0x0000, 0x0000], "NaN"),
    (PointType.FLOAT64, [0x7FF0, 0x0000, 0x0000, 0x0000], "+infinity"),
])
def test_nan_and_infinity_are_errors(type_: PointType, registers: list[int], what: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(what)):
        decode_raw(type_, registers)
    point = _pt(type_)
    with pytest.raises(DecodeError, match="point `p` \\(holding_register 0"):
        decode(point, registers)


@pytest.mark.parametrize(("type_", "values", "message"), [
    (PointType.FLOAT32, [0x3FC0], "takes 2 registers, got 1"),
    (PointType.UINT16, [1, 2], "takes 1 register, got 2"),
    (PointType.UINT16, [70000], "not a 16-bit unsigned integer"),
    (PointType.UINT16, [-1], "not a 16-bit unsigned integer"),
    (PointType.INT32, [True, False], "not a 16-bit unsigned integer"),
    (PointType.BOOL, [2], "not 0/1"),
    (PointType.BOOL, [True, False], "takes 1 bit"),
    (PointType.BIT, [1, 2], "takes 1 register"),
])
def test_malformed_input_is_an_error(type_: PointType, values: list[Any], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_raw(type_, values, bit=0 if type_ is PointType.BIT else None)


def test_decode_checks_the_slice_length_for_the_point() -> None:
    with pytest.raises(DecodeError, match="expected 3 registers, got 2"):
        decode(_pt(PointType.STRING, length=3), [0x4142, 0x4344])


# --------------------------------------------------------------------------- scaling


@pytest.mark.parametrize(("type_", "registers", "scale", "offset", "value"), [
    (PointType.INT16, [231], 0.1, 0.0, 23.1),
    (PointType.INT16, [0xFFCE], 0.1, 0.0, -5.0),  # -50 * 0.1
    (PointType.UINT16, [231], 0.001, 0.0, 0.231),
    (PointType.UINT32, [0x0001, 0x8BCD], 0.001, 0.0, 101.325),  # Pa -> kPa
    (PointType.UINT16, [65], 10.0, -40.0, 610),  # integral scale and offset: stays an int
    (PointType.UINT16, [1000], 0.01, -10.0, 0.0),
    (PointType.FLOAT32, [0x3FC0, 0x0000], 2.0, 0.5, 3.5),
])
def test_scaling(type_: PointType, registers: list[int], scale: float, offset: float,
                 value: float) -> None:
    got = decode(_pt(type_, scale=scale, offset=offset), registers)
    assert got == value
    assert type(got) is type(value)


def test_unscaled_integers_stay_integers() -> None:
    assert decode(_pt(PointType.UINT16), [7]) == 7
    assert isinstance(decode(_pt(PointType.UINT16), [7]), int)


def test_encode_inverts_scaling() -> None:
    temperature = _pt(PointType.INT16, scale=0.1)
    assert encode(temperature, 23.1) == [231]
    assert encode(temperature, -5) == [0xFFCE]
    pressure = _pt(PointType.UINT32, scale=0.001)
    assert encode(pressure, 101.325) == [0x0001, 0x8BCD]
    shifted = _pt(PointType.UINT16, scale=10, offset=-40)
    assert encode(shifted, 610) == [65]
    level = _pt(PointType.FLOAT32, scale=0.5)
    assert encode(level, 0.75) == [0x3FC0, 0x0000]


# --------------------------------------------------------------------------- encode errors


@pytest.mark.parametrize(("point", "value", "message"), [
    (_pt(PointType.UINT16), 65536, "out of range for uint16"),
    (_pt(PointType.UINT16), -1, "out of range"),
    (_pt(PointType.INT16), 40000, "out of range for int16"),
    (_pt(PointType.UINT32), 2**32, "out of range"),
    (_pt(PointType.INT32), 1.5, "whole number"),
    (_pt(PointType.UINT16), True, "takes a number"),
    (_pt(PointType.UINT16), "7", "takes a number"),
    (_pt(PointType.INT16, scale=0.1), 4000.0, "out of range"),
    (_pt(PointType.INT16, scale=0.1), math.nan, "not a finite number"),
    (_pt(PointType.FLOAT32), math.inf, "not a finite number"),
    (_pt(PointType.FLOAT32), 1e39, "out of range for float32"),
    (_pt(PointType.STRING, length=2), "ABCDE", "do not fit 2 registers"),
    (_pt(PointType.STRING, length=2), "A\x00", "NUL"),
    (_pt(PointType.STRING, length=2), 12, "takes text"),
    (_pt(PointType.BOOL), 1, "true or false"),
    (_pt(PointType.BIT, bit=3), True, "read-modify-write"),
])
def test_encode_errors(point: Point, value: Any, message: str) -> None:
    with pytest.raises(EncodeError, match=message) as err:
        encode(point, value)
    assert str(err.value).startswith("point `p` (")


def test_encode_raw_rejects_bits_and_odd_bytes() -> None:
    with pytest.raises(EncodeError):
        encode_raw(PointType.BOOL, True)
    with pytest.raises(EncodeError, match="needs its length"):
        encode_raw(PointType.STRING, "x")
    with pytest.raises(EncodeError, match="odd number"):
        bytes_to_registers(b"\x01")
    with pytest.raises(EncodeError):
        set_bit(0x10000, 0, True)
    with pytest.raises(EncodeError):
        set_bit(0, 16, True)
