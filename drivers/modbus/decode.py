"""Pure decoding (registers/bits -> value) and encoding (value -> registers/bits).

Registers are 16-bit unsigned ints as a Modbus client returns them. A multi-register
value is assembled by `struct`, never by pymodbus' payload helpers:

* `word_order` little reverses the order of the registers (CDAB for a 32-bit value);
* `byte_order` little swaps the two bytes inside every register (BADC).

Known vectors: float32 1.5 is [0x3FC0, 0x0000] big/big, [0x0000, 0x3FC0] with word
order little and [0xC03F, 0x0000] with byte order little.

A device's garbage must never become a wrong value silently: NaN and infinity, a
string that is not UTF-8, a register outside 0..65535 or a slice of the wrong length
raise `DecodeError`. Scaled values are `raw * scale + offset`, tidied to 15
significant digits so 231 * 0.1 reads 23.1; float32 values are given as the shortest
decimal that is the same float32 (1.1, not 1.100000023841858).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from drivers.modbus.points import Order, Point, PointType

__all__ = [
    "DecodeError",
    "EncodeError",
    "Value",
    "bytes_to_registers",
    "decode",
    "decode_raw",
    "decode_string",
    "encode",
    "encode_raw",
    "registers_to_bytes",
    "set_bit",
]

Value = bool | int | float | str

_FORMATS: dict[PointType, str] = {
    PointType.INT16: ">h",
    PointType.UINT16: ">H",
    PointType.INT32: ">i",
    PointType.UINT32: ">I",
    PointType.FLOAT32: ">f",
    PointType.FLOAT64: ">d",
}
_INT_RANGES: dict[PointType, tuple[int, int]] = {
    PointType.INT16: (-(1 << 15), (1 << 15) - 1),
    PointType.UINT16: (0, (1 << 16) - 1),
    PointType.INT32: (-(1 << 31), (1 << 31) - 1),
    PointType.UINT32: (0, (1 << 32) - 1),
}


class DecodeError(ValueError):
    """The device's answer cannot be a valid value for the point."""


class EncodeError(ValueError):
    """A value cannot be written to the point (type, range or size)."""


# --------------------------------------------------------------------------- byte layout


def registers_to_bytes(registers: Sequence[int], byte_order: Order = Order.BIG,
                       word_order: Order = Order.BIG) -> bytes:
    """Registers as the device sent them -> big-endian bytes of the value."""
    words = _registers(registers)
    if word_order is Order.LITTLE:
        words.reverse()
    if byte_order is Order.LITTLE:
        return struct.pack(f"<{len(words)}H", *words)
    return struct.pack(f">{len(words)}H", *words)


def bytes_to_registers(data: bytes, byte_order: Order = Order.BIG,
                       word_order: Order = Order.BIG) -> list[int]:
    """Big-endian bytes of a value -> registers as the device expects them."""
    if len(data) % 2:
        raise EncodeError("an odd number of bytes does not fill whole registers")
    fmt = f"<{len(data) // 2}H" if byte_order is Order.LITTLE else f">{len(data) // 2}H"
    words = list(struct.unpack(fmt, data))
    if word_order is Order.LITTLE:
        words.reverse()
    return words


# --------------------------------------------------------------------------- decoding


def decode_raw(type_: PointType, values: Sequence[int] | Sequence[bool], *,
               byte_order: Order = Order.BIG, word_order: Order = Order.BIG,
               bit: int | None = None) -> Value:
    """Registers (or, for bool, bits) -> the unscaled value of `type_`."""
    if type_ is PointType.BOOL:
        if len(values) != 1:
            raise DecodeError(f"bool takes 1 bit, got {len(values)}")
        return _bit_value(values[0])
    if type_ is PointType.BIT:
        if bit is None or not 0 <= bit <= 15:
            raise DecodeError(f"type bit needs a bit number 0..15, got {bit!r}")
        word = _one_register(values)
        return bool((word >> bit) & 1)
    if type_ is PointType.STRING:
        return decode_string(registers_to_bytes(values, byte_order))
    fmt = _FORMATS[type_]
    expected = struct.calcsize(fmt) // 2
    if len(values) != expected:
        raise DecodeError(f"{type_.value} takes {expected} register"
                          f"{'s' if expected > 1 else ''}, got {len(values)}")
    data = registers_to_bytes(values, byte_order, word_order)
    (raw,) = struct.unpack(fmt, data)
    if type_ in (PointType.FLOAT32, PointType.FLOAT64):
        if not math.isfinite(raw):
            raise DecodeError(f"{type_.value} is {_float_name(raw)} "
                              f"(registers {_hex(values)})")
        if type_ is PointType.FLOAT32:
            raw = _shortest_float32(raw)
    assert isinstance(raw, int | float)
    return raw


def decode(point: Point, values: Sequence[int] | Sequence[bool]) -> Value:
    """The point's value from its own slice of registers or bits, scaled."""
    try:
        if len(values) != point.registers:
            unit = "bit" if point.table.is_bits else "register"
            raise DecodeError(f"expected {point.registers} {unit}"
                              f"{'s' if point.registers != 1 else ''}, got {len(values)}")
        raw = decode_raw(point.type, values, byte_order=point.byte_order,
                         word_order=point.word_order, bit=point.bit)
    except DecodeError as exc:
        raise DecodeError(f"point `{point.name}` ({point.span()}): {exc}") from None
    if isinstance(raw, bool | str) or not point.is_scaled:
        return raw
    return _scaled(raw, point.scale, point.offset)


def _scaled(raw: int | float, scale: float, offset: float) -> int | float:
    value = raw * scale + offset
    if isinstance(raw, int) and scale.is_integer() and offset.is_integer():
        return int(value)
    return float(f"{value:.15g}")


def _bit_value(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise DecodeError(f"bit value {value!r} is not 0/1 or a bool")


def _one_register(values: Sequence[int] | Sequence[bool]) -> int:
    if len(values) != 1:
        raise DecodeError(f"a bit point takes 1 register, got {len(values)}")
    return _registers(values)[0]


def _registers(values: Sequence[object]) -> list[int]:
    words: list[int] = []
    for word in values:
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise DecodeError(f"register value {word!r} is not a 16-bit unsigned integer")
        words.append(word)
    return words


def decode_string(data: bytes) -> str:
    """Leading NULs/spaces dropped, cut at the first NUL after the text, spaces trimmed."""
    body = data.lstrip(b"\x00 ")
    end = body.find(b"\x00")
    if end >= 0:
        body = body[:end]
    try:
        return body.decode("utf-8").rstrip(" ")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"string is not UTF-8 text (byte 0x{body[exc.start]:02X} at "
                          f"offset {exc.start})") from None


def _shortest_float32(value: float) -> float:
    """The shortest decimal that packs to the same float32 (1.1, not 1.100000023841858)."""
    packed = struct.pack(">f", value)
    for digits in range(6, 10):  # 9 significant digits always round-trip a float32
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return value  # pragma: no cover - unreachable, 9 digits always round-trip


def _float_name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "+infinity" if value > 0 else "-infinity"


def _hex(values: Sequence[int] | Sequence[bool]) -> str:
    return "[" + ", ".join(f"0x{int(v):04X}" for v in values) + "]"


# --------------------------------------------------------------------------- encoding


def encode_raw(type_: PointType, value: Value, *, byte_order: Order = Order.BIG,
               word_order: Order = Order.BIG, length: int | None = None) -> list[int]:
    """An unscaled value -> the registers that hold it (not for bool/bit: see `encode`)."""
    if type_ in (PointType.BOOL, PointType.BIT):
        raise EncodeError(f"{type_.value} values are bits; use encode() or set_bit()")
    if type_ is PointType.STRING:
        if not isinstance(value, str):
            raise EncodeError(f"a string point takes text, got {type(value).__name__}")
        if length is None:
            raise EncodeError("a string point needs its length in registers")
        data = value.encode("utf-8")
        if b"\x00" in data:
            raise EncodeError("text for a string point cannot hold NUL characters")
        if len(data) > 2 * length:
            raise EncodeError(f"{len(data)} bytes of text do not fit {length} registers "
                              f"({2 * length} bytes)")
        return bytes_to_registers(data.ljust(2 * length, b"\x00"), byte_order)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EncodeError(f"{type_.value} takes a number, got {type(value).__name__}")
    fmt = _FORMATS[type_]
    if type_ in (PointType.FLOAT32, PointType.FLOAT64):
        if not math.isfinite(value):
            raise EncodeError(f"{value!r} cannot be written: not a finite number")
        try:
            data = struct.pack(fmt, float(value))
        except OverflowError:
            raise EncodeError(f"{value!r} is out of range for {type_.value}") from None
        if type_ is PointType.FLOAT32 and not math.isfinite(struct.unpack(fmt, data)[0]):
            raise EncodeError(f"{value!r} is out of range for float32")
    else:
        if isinstance(value, float) and not value.is_integer():
            raise EncodeError(f"{type_.value} takes a whole number, got {value!r}")
        low, high = _INT_RANGES[type_]
        if not low <= int(value) <= high:
            raise EncodeError(f"{value!r} is out of range for {type_.value} ({low}..{high})")
        data = struct.pack(fmt, int(value))
    return bytes_to_registers(data, byte_order, word_order)


def encode(point: Point, value: Value, *, current: int | None = None
           ) -> list[int] | list[bool]:
    """A (scaled) value -> what to write to the point: bits for a coil, else registers.

    Scaling is inverted (`raw = (value - offset) / scale`) and rounded to the nearest
    whole raw value for integer types. A `bit` point is read-modify-write: pass the
    register's `current` value and the result is the whole register with the bit set.
    """
    try:
        if point.type is PointType.BOOL:
            return [_bool_to_write(value)]
        if point.type is PointType.BIT:
            if current is None:
                raise EncodeError("writing one bit of a register needs the register's "
                                  "current value (read-modify-write)")
            assert point.bit is not None
            return [set_bit(current, point.bit, _bool_to_write(value))]
        raw: Value = value
        if point.type.is_numeric and point.is_scaled:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise EncodeError(f"{point.type.value} takes a number, "
                                  f"got {type(value).__name__}")
            if not math.isfinite(value):
                raise EncodeError(f"{value!r} cannot be written: not a finite number")
            unscaled = (value - point.offset) / point.scale
            raw = unscaled if point.type in (PointType.FLOAT32, PointType.FLOAT64) \
                else round(unscaled)
        return encode_raw(point.type, raw, byte_order=point.byte_order,
                          word_order=point.word_order, length=point.length)
    except EncodeError as exc:
        raise EncodeError(f"point `{point.name}` ({point.span()}): {exc}") from None


def set_bit(word: int, bit: int, value: bool) -> int:
    """`word` with bit `bit` (0 = least significant) set to `value`."""
    if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
        raise EncodeError(f"register value {word!r} is not a 16-bit unsigned integer")
    if not 0 <= bit <= 15:
        raise EncodeError(f"bit {bit} is not in 0..15")
    return word | (1 << bit) if value else word & ~(1 << bit) & 0xFFFF


def _bool_to_write(value: Value) -> bool:
    if isinstance(value, bool):
        return value
    raise EncodeError(f"takes true or false, got {value!r}")
