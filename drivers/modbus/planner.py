"""The read planner: all points of a device -> the fewest read requests. Pure, no I/O.

Per table, points are sorted by address and merged greedily into one request while
the hole before the next point is at most the gap fill (unused registers or bits read
anyway, cheaper than another request) and the request stays within the limits.
Because a point is never split across requests and a shorter run of a feasible group
is always feasible, taking the longest feasible run from the left gives the fewest
requests for non-overlapping points.

The gap fill follows from what a request costs on the device's link (`LinkCost`,
`gap_fill()`), unless the profile or the device sets one:

- **TCP**: a request costs a round trip (milliseconds, a gateway's queue), a register a
  few bytes in a packet already sent: merge whenever the read stays within
  `max_registers` / `max_bits` (the fill is the protocol maximum).
- **RTU** (RS-485, and a TCP-to-RTU gateway's bus): everything is wire time. A new
  request costs its request frame (8 characters), the response's own overhead (address,
  function, byte count, CRC: 5 characters), the 3.5-character silence after each of
  the two frames (a fixed 1.75 ms above 19,200 baud) and the bus's configured extra
  pause; one more register costs 2 characters of response, one more bit 1/8. Merge
  when the hole costs less than that: at 9,600 baud 9 registers (20 characters of
  overhead), at 115,200 baud 26 registers (the fixed silences weigh more).
  Device turnaround is not counted (unknown; it only makes merging more worthwhile).

`single_point_requests` is the escape hatch for devices that answer only reads of
exactly one mapped value: one request per point (points on the very same registers,
such as bits of one status word, share it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.modbus.decode import DecodeError, Value, decode
from drivers.modbus.points import Point, Table

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_LINK",
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "DeviceLimits",
    "Limits",
    "LinkCost",
    "PlanError",
    "ReadRequest",
    "extract",
    "gap_fill",
    "oversized",
    "plan",
    "rtu_request_overhead_s",
]

#: Protocol maximum of one FC3/FC4 read (Modbus Application Protocol 1.1b3, 6.3/6.4).
MAX_READ_REGISTERS = 125
#: Protocol maximum of one FC1/FC2 read.
MAX_READ_BITS = 2000

#: Characters of an RTU read request: unit, function, start (2), count (2), CRC (2).
RTU_REQUEST_CHARS = 8
#: Characters of an RTU read response besides its data: unit, function, byte count, CRC (2).
RTU_RESPONSE_OVERHEAD_CHARS = 5
#: The silence that ends each RTU frame, in characters (Modbus over serial line 2.5.1.1)...
RTU_FRAME_GAP_CHARS = 3.5
#: ... fixed at this many seconds above RTU_FIXED_GAP_ABOVE_BAUD.
RTU_FIXED_GAP_S = 0.00175
RTU_FIXED_GAP_ABOVE_BAUD = 19200
#: Characters of response data per register, and bits per character of response data.
CHARS_PER_REGISTER = 2
BITS_PER_DATA_CHAR = 8


@dataclass(frozen=True, slots=True)
class LinkCost:
    """What one more request costs on a device's link, for choosing the gap fill."""

    kind: Literal["tcp", "rtu"]
    baudrate: int = 9600
    bits_per_char: int = 11  # start + 8 data + parity + stop (8E1, the Modbus default)
    pause_s: float = 0.0  # extra silence configured between requests on the bus

    @classmethod
    def tcp(cls) -> LinkCost:
        return cls("tcp")

    @classmethod
    def rtu(cls, baudrate: int, bits_per_char: int = 11, pause_s: float = 0.0) -> LinkCost:
        return cls("rtu", baudrate, bits_per_char, pause_s)

    @property
    def char_s(self) -> float:
        return self.bits_per_char / self.baudrate


#: The link assumed when none is known (a profile checked alone): RS-485 at 9,600 baud.
DEFAULT_LINK = LinkCost.rtu(9600)


def rtu_request_overhead_s(link: LinkCost) -> float:
    """Wire time one more read request costs on an RTU bus, besides its data: request
    frame, response overhead, the silence after each frame, the configured pause."""
    char_s = link.char_s
    gap_s = (RTU_FIXED_GAP_S if link.baudrate > RTU_FIXED_GAP_ABOVE_BAUD
             else RTU_FRAME_GAP_CHARS * char_s)
    return (RTU_REQUEST_CHARS + RTU_RESPONSE_OVERHEAD_CHARS) * char_s + 2 * gap_s \
        + link.pause_s


def gap_fill(link: LinkCost) -> tuple[int, int]:
    """(registers, bits): the largest holes worth reading to save a request on `link`.

    TCP: the protocol maxima (merge whenever the read stays within the limits). RTU:
    the most unused registers (bits) whose wire time is less than a new request's.
    """
    if link.kind == "tcp":
        return MAX_READ_REGISTERS, MAX_READ_BITS
    overhead = rtu_request_overhead_s(link)
    per_register = CHARS_PER_REGISTER * link.char_s
    per_bit = link.char_s / BITS_PER_DATA_CHAR
    registers = math.ceil(overhead / per_register - 1e-9) - 1  # strictly less than a request
    bits = math.ceil(overhead / per_bit - 1e-9) - 1
    return (max(0, min(registers, MAX_READ_REGISTERS)), max(0, min(bits, MAX_READ_BITS)))


class Limits(BaseModel):
    """What one device accepts per read request, and how much waste buys a merge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_registers: int = Field(default=MAX_READ_REGISTERS, ge=1, le=MAX_READ_REGISTERS,
                               description="registers per FC3/FC4 request")
    max_bits: int = Field(default=MAX_READ_BITS, ge=1, le=MAX_READ_BITS,
                          description="coils or inputs per FC1/FC2 request")
    gap_fill_registers: int | None = Field(
        default=None, ge=0, le=MAX_READ_REGISTERS,
        description="unused registers read to merge two points; default: from the link's "
                    "cost (TCP: up to max_registers; RTU: by baud rate)")
    gap_fill_bits: int | None = Field(
        default=None, ge=0, le=MAX_READ_BITS,
        description="unused bits read to merge two points; default: from the link's cost")
    single_point_requests: bool = Field(default=False,
                                        description="one request per point (no merging)")

    def for_table(self, table: Table, link: LinkCost = DEFAULT_LINK) -> tuple[int, int]:
        """(max per request, gap fill) for the table; a fill set here wins over the link's."""
        registers, bits = gap_fill(link)
        if table.is_bits:
            return self.max_bits, bits if self.gap_fill_bits is None else self.gap_fill_bits
        return (self.max_registers,
                registers if self.gap_fill_registers is None else self.gap_fill_registers)

    def lowered(self, device: DeviceLimits | None) -> Limits:
        """These (profile) limits made more conservative by a device's settings.

        A device may lower the maxima and gap fills and turn single-point requests
        on; it may not go beyond what its profile says the device model accepts.
        """
        if device is None:
            return self
        given = device.model_dump(exclude_none=True)
        problems = []
        for key, value in given.items():
            mine = getattr(self, key)
            if key == "single_point_requests":
                if mine and not value:
                    problems.append("single_point_requests cannot be turned off: the "
                                    "profile says this device model needs it")
            elif mine is not None and value > mine:
                problems.append(f"{key} {value} is more than the profile's {mine}; "
                                "a device may only lower it")
        if problems:
            raise ValueError("; ".join(problems))
        return self.model_copy(update=given)


class DeviceLimits(BaseModel):
    """A device's own lower limits (every key optional); see `Limits.lowered`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_registers: int | None = Field(default=None, ge=1, le=MAX_READ_REGISTERS)
    max_bits: int | None = Field(default=None, ge=1, le=MAX_READ_BITS)
    gap_fill_registers: int | None = Field(default=None, ge=0, le=MAX_READ_REGISTERS)
    gap_fill_bits: int | None = Field(default=None, ge=0, le=MAX_READ_BITS)
    single_point_requests: bool | None = None


DEFAULT_LIMITS = Limits()


class PlanError(ValueError):
    """The points cannot be read within the limits (found at validation, before I/O)."""


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: `count` registers or bits of `table` from `start`, feeding `points`."""

    table: Table
    start: int
    count: int
    points: tuple[Point, ...]

    @property
    def function_code(self) -> int:
        return self.table.read_function

    @property
    def last_address(self) -> int:
        return self.start + self.count - 1

    def __str__(self) -> str:
        names = ", ".join(p.name for p in self.points)
        return (f"FC{self.function_code} {self.table.value} {self.start}..{self.last_address} "
                f"({self.count}): {names}")


def oversized(points: Iterable[Point], limits: Limits = DEFAULT_LIMITS
              ) -> list[tuple[Point, str]]:
    """Points that cannot be read in one request under `limits`, with the reason."""
    found = []
    for point in points:
        most, _ = limits.for_table(point.table)
        if point.registers > most:
            key, unit = ("max_bits", "bits") if point.table.is_bits \
                else ("max_registers", "registers")
            found.append((point, f"point `{point.name}` ({point.type.value}, "
                                 f"{point.registers} {unit}) does not fit one read of at "
                                 f"most {most} {unit} ({key})"))
    return found


def plan(points: Iterable[Point], limits: Limits = DEFAULT_LIMITS,
         link: LinkCost = DEFAULT_LINK) -> list[ReadRequest]:
    """The fewest read requests that cover every point once, within `limits`, with the
    gap fill of `limits` or else of `link`.

    Requests come ordered by function code then address; points in a request by
    address then name. Raises PlanError for a point larger than the limits or a
    point name used twice (a profile is validated against both before any I/O).
    """
    points = list(points)
    problems = [message for _, message in oversized(points, limits)]
    seen: set[str] = set()
    for point in points:
        if point.name in seen:
            problems.append(f"point name `{point.name}` is used twice")
        seen.add(point.name)
    if problems:
        raise PlanError("; ".join(problems))
    by_table: dict[Table, list[Point]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    requests: list[ReadRequest] = []
    for table in sorted(by_table, key=lambda t: t.read_function):
        ordered = sorted(by_table[table], key=lambda p: (p.address, p.last_address, p.name))
        if limits.single_point_requests:
            requests += _one_per_range(table, ordered)
        else:
            most, gap = limits.for_table(table, link)
            requests += _merged(table, ordered, most, gap)
    return requests


def _merged(table: Table, ordered: Sequence[Point], most: int, gap: int) -> list[ReadRequest]:
    requests: list[ReadRequest] = []
    group: list[Point] = []
    start = end = 0  # end is exclusive
    for point in ordered:
        stop = point.address + point.registers
        if group and point.address - end <= gap and max(end, stop) - start <= most:
            group.append(point)
            end = max(end, stop)
            continue
        if group:
            requests.append(ReadRequest(table, start, end - start, tuple(group)))
        group, start, end = [point], point.address, stop
    if group:
        requests.append(ReadRequest(table, start, end - start, tuple(group)))
    return requests


def _one_per_range(table: Table, ordered: Sequence[Point]) -> list[ReadRequest]:
    groups: dict[tuple[int, int], list[Point]] = {}
    for point in ordered:
        groups.setdefault((point.address, point.registers), []).append(point)
    return [ReadRequest(table, start, count, tuple(group))
            for (start, count), group in groups.items()]


def extract(request: ReadRequest, values: Sequence[int] | Sequence[bool]
            ) -> dict[str, Value | DecodeError]:
    """Decode every point of `request` from the response; a bad point never hides others.

    `values` are the registers (or bits) the device returned for the request; a bit
    response padded to a whole byte is fine. A short response, NaN, a non-UTF-8 string
    and the like come back as a DecodeError for the points concerned.
    """
    out: dict[str, Value | DecodeError] = {}
    for point in request.points:
        low = point.address - request.start
        high = low + point.registers
        if high > len(values):
            what = "bits" if request.table.is_bits else "registers"
            out[point.name] = DecodeError(
                f"point `{point.name}` ({point.span()}): the response holds {len(values)} "
                f"{what}, the request asked for {request.count}")
            continue
        try:
            out[point.name] = decode(point, values[low:high])
        except DecodeError as exc:
            out[point.name] = exc
    return out
