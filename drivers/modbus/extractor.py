"""Compiled read decoders: one per read request, made once, run on every poll. Pure, no I/O.

`planner.extract` decodes a response point by point through the general decoder
(`decode.decode`: checks, byte/word order, scaling); at hundreds of polls a second that
is most of the agent's polling CPU. `compile_request` prepares, once per request, what
each point needs (its offset in the response, a `struct.Struct`, its scaling), so a poll
packs the registers into bytes with one C call and unpacks each point with another.

Contract: for any response, `compile_request(req)(values) == extract(req, values)`,
errors included (tests/test_modbus_extractor.py checks it with generated responses).
The fast path covers every point type and byte/word order (other orders pick the
value's bytes with one `operator.itemgetter`); any response it cannot vouch for (short,
out-of-range or non-int registers, NaN, a string that is not UTF-8) goes through
`decode.decode`, so messages stay the general decoder's.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from drivers.modbus.decode import DecodeError, Value, decode, decode_string
from drivers.modbus.planner import ReadRequest, extract
from drivers.modbus.points import Order, Point, PointType

__all__ = ["Extractor", "compile_request"]

_STRUCTS: dict[PointType, struct.Struct] = {
    PointType.INT16: struct.Struct(">h"),
    PointType.UINT16: struct.Struct(">H"),
    PointType.INT32: struct.Struct(">i"),
    PointType.UINT32: struct.Struct(">I"),
    PointType.FLOAT32: struct.Struct(">f"),
    PointType.FLOAT64: struct.Struct(">d"),
}
_F32 = struct.Struct(">f")

Result = dict[str, Value | DecodeError]


@cache
def _registers_struct(count: int) -> struct.Struct:
    return struct.Struct(f">{count}H")


def _value_bytes(low: int, registers: int, byte_order: Order, word_order: Order
                 ) -> Callable[[bytes], tuple[int, ...]] | None:
    """Picks a value's bytes, big-endian, out of the response (None: already big-endian)."""
    if byte_order is Order.BIG and word_order is Order.BIG:
        return None
    words = list(range(low, low + registers))
    if word_order is Order.LITTLE:
        words.reverse()
    order = []
    for w in words:
        order += [2 * w + 1, 2 * w] if byte_order is Order.LITTLE else [2 * w, 2 * w + 1]
    return operator.itemgetter(*order)  # two or more indices: it returns a tuple


@dataclass(frozen=True, slots=True)
class _Numeric:
    """A numeric point: unpack at `offset` bytes (after `pick` for other orders), scale."""

    name: str
    offset: int
    pick: Callable[[bytes], tuple[int, ...]] | None
    unpack: Callable[[bytes, int], tuple[int | float, ...]]
    is_float: bool
    is_float32: bool
    scale: float
    add: float
    scaled: bool
    integral: bool  # an int raw value stays int (scale and offset are whole numbers)


@dataclass(frozen=True, slots=True)
class _String:
    name: str
    start: int
    end: int
    pick: Callable[[bytes], tuple[int, ...]] | None


@dataclass(frozen=True, slots=True)
class _Bit:
    name: str
    index: int
    bit: int  # -1: a coil/input bit, else the bit number inside a register


def _shortest_float32(value: float) -> float:
    packed = _F32.pack(value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if _F32.pack(candidate) == packed:
            return candidate
    return value  # pragma: no cover - 9 digits always round-trip a float32


class Extractor:
    """`extract(request, values)`, precompiled for one request."""

    def __init__(self, request: ReadRequest) -> None:
        self.request = request
        self._bits_table = request.table.is_bits
        self._numeric: list[_Numeric] = []
        self._bits: list[_Bit] = []
        self._strings: list[_String] = []
        self._general: list[Point] = []
        for point in request.points:
            low = point.address - request.start
            if self._bits_table and point.type is PointType.BOOL:
                self._bits.append(_Bit(point.name, low, -1))
            elif point.type is PointType.BIT and point.bit is not None \
                    and not self._bits_table:
                self._bits.append(_Bit(point.name, low, point.bit))
            elif point.type in _STRUCTS and not self._bits_table:
                st = _STRUCTS[point.type]
                is_float = point.type in (PointType.FLOAT32, PointType.FLOAT64)
                pick = _value_bytes(low, point.registers, point.byte_order, point.word_order)
                self._numeric.append(_Numeric(
                    point.name, 0 if pick else 2 * low, pick, st.unpack_from, is_float,
                    point.type is PointType.FLOAT32, point.scale, point.offset,
                    point.is_scaled, point.scale.is_integer() and point.offset.is_integer()))
            elif point.type is PointType.STRING and not self._bits_table:
                pick = _value_bytes(low, point.registers, point.byte_order, Order.BIG)
                self._strings.append(_String(point.name, 2 * low,
                                             2 * (low + point.registers), pick))
            else:
                self._general.append(point)
        self._end = max((p.address - request.start + p.registers for p in request.points),
                        default=0)
        fast = ([p.name for p in self._numeric] + [b.name for b in self._bits]
                + [t.name for t in self._strings])
        #: the fast path fills `out` in another order than the request's: reorder
        self._reorder = bool(self._general) or fast != [p.name for p in request.points]

    def __call__(self, values: Sequence[int] | Sequence[bool]) -> Result:
        if len(values) < self._end:
            return extract(self.request, values)  # short response: the general messages
        if self._bits_table:
            return self._from_bits(values)
        if bool in set(map(type, values)):
            return extract(self.request, values)
        try:
            data = _registers_struct(len(values)).pack(*values)
        except struct.error:  # a register outside 0..65535 or not an int
            return extract(self.request, values)
        out: Result = {}
        for p in self._numeric:
            (raw,) = p.unpack(data if p.pick is None else bytes(p.pick(data)), p.offset)
            if p.is_float:
                if not math.isfinite(raw):
                    out[p.name] = self._general_point(p.name, values)
                    continue
                if p.is_float32:
                    raw = _shortest_float32(raw)
            if p.scaled:
                value = raw * p.scale + p.add
                out[p.name] = (int(value) if p.integral and isinstance(raw, int)
                               else float(f"{value:.15g}"))
            else:
                out[p.name] = raw
        for b in self._bits:
            out[b.name] = bool((values[b.index] >> b.bit) & 1)
        for t in self._strings:
            try:
                out[t.name] = decode_string(data[t.start:t.end] if t.pick is None
                                            else bytes(t.pick(data)))
            except DecodeError:
                out[t.name] = self._general_point(t.name, values)
        for point in self._general:
            out[point.name] = self._decode(point, values)
        return self._ordered(out)

    def _from_bits(self, values: Sequence[int] | Sequence[bool]) -> Result:
        out: Result = {}
        for b in self._bits:
            v = values[b.index]
            if v is True or v is False:
                out[b.name] = v
            else:
                out[b.name] = self._general_point(b.name, values)
        for point in self._general:
            out[point.name] = self._decode(point, values)
        return self._ordered(out)

    def _ordered(self, out: Result) -> Result:
        """The points in the request's order, as `extract` gives them."""
        return {p.name: out[p.name] for p in self.request.points} if self._reorder else out

    def _general_point(self, name: str, values: Sequence[int] | Sequence[bool]
                       ) -> Value | DecodeError:
        point = next(p for p in self.request.points if p.name == name)
        return self._decode(point, values)

    def _decode(self, point: Point, values: Sequence[int] | Sequence[bool]
                ) -> Value | DecodeError:
        low = point.address - self.request.start
        try:
            return decode(point, values[low:low + point.registers])
        except DecodeError as exc:
            return exc


def compile_request(request: ReadRequest) -> Extractor:
    return Extractor(request)
