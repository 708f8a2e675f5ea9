"""Modbus points: what one named value of a device is, where it lives, how it is read.

A point names one value in one of the four Modbus tables, with its type, byte and
word order and a linear scaling (`value = raw * scale + offset`). Everything is
checked here, before any I/O: a type must fit its table, a point must fit the
65,536-address space, and options that do not apply to a type (`bit` on an
int16, `length` on a float32, `word_order` on a one-register value, ...) are
errors rather than silently ignored settings.

Validation errors carry the location of the offending key (e.g. `("bit",)`), so a
profile loaded with `edge_agent.config.loader.load_model` reports them at the
line and column where they were written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import InitErrorDetails, ValidationError

__all__ = [
    "MAX_ADDRESS",
    "MAX_STRING_REGISTERS",
    "POINT_NAME",
    "Order",
    "Point",
    "PointType",
    "Table",
    "raise_issues",
]

#: The last protocol address (addresses are 0-based on the wire).
MAX_ADDRESS = 65535
#: A string is read in one request, so it can be no longer than one read (FC3/FC4).
MAX_STRING_REGISTERS = 125
#: A point name: usable as a rule reference and as a Python identifier.
POINT_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


class Table(StrEnum):
    """The four Modbus data tables."""

    COIL = "coil"  # 1 bit, read FC1, write FC5/FC15
    DISCRETE_INPUT = "discrete_input"  # 1 bit, read FC2, read-only
    HOLDING_REGISTER = "holding_register"  # 16 bits, read FC3, write FC6/FC16
    INPUT_REGISTER = "input_register"  # 16 bits, read FC4, read-only

    @property
    def is_bits(self) -> bool:
        """True for coils and discrete inputs (one bit per address)."""
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def read_function(self) -> int:
        """The function code that reads this table."""
        return _READ_FC[self]

    @property
    def writable(self) -> bool:
        return self in (Table.COIL, Table.HOLDING_REGISTER)

    @property
    def write_single_function(self) -> int | None:
        """FC5 (one coil) or FC6 (one register); None for a read-only table."""
        return {Table.COIL: 5, Table.HOLDING_REGISTER: 6}.get(self)

    @property
    def write_multiple_function(self) -> int | None:
        """FC15 (coils) or FC16 (registers); None for a read-only table."""
        return {Table.COIL: 15, Table.HOLDING_REGISTER: 16}.get(self)


_READ_FC = {
    Table.COIL: 1,
    Table.DISCRETE_INPUT: 2,
    Table.HOLDING_REGISTER: 3,
    Table.INPUT_REGISTER: 4,
}


class PointType(StrEnum):
    BOOL = "bool"  # one coil or discrete input
    BIT = "bit"  # one bit of a register (`bit: 0..15`, 0 = least significant)
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"  # `length` registers, two characters each

    @property
    def is_numeric(self) -> bool:
        """Types that take `scale`, `offset` and `unit`."""
        return self in _NUMERIC

    @property
    def fixed_registers(self) -> int | None:
        """Registers a value of this type takes (None: bool is a bit, string has a length)."""
        return _FIXED_REGISTERS.get(self)


_NUMERIC = frozenset({PointType.INT16, PointType.UINT16, PointType.INT32, PointType.UINT32,
                      PointType.FLOAT32, PointType.FLOAT64})
_FIXED_REGISTERS = {
    PointType.BIT: 1,
    PointType.INT16: 1,
    PointType.UINT16: 1,
    PointType.INT32: 2,
    PointType.UINT32: 2,
    PointType.FLOAT32: 2,
    PointType.FLOAT64: 4,
}


class Order(StrEnum):
    """Byte order within a register, or word (register) order within a value.

    big/big is ABCD (the Modbus default), word little is CDAB, byte little is BADC,
    both little is DCBA.
    """

    BIG = "big"
    LITTLE = "little"


class Point(BaseModel):
    """One named value of a device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=POINT_NAME, description="unique within the profile")
    table: Table
    address: int = Field(ge=0, le=MAX_ADDRESS, description="0-based protocol address")
    type: PointType
    bit: int | None = Field(default=None, ge=0, le=15,
                            description="type bit only: 0 = least significant bit")
    length: int | None = Field(default=None, ge=1, le=MAX_STRING_REGISTERS,
                               description="type string only: registers (2 characters each)")
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    scale: float = Field(default=1.0, description="value = raw * scale + offset")
    offset: float = 0.0
    unit: str | None = Field(default=None, max_length=32)
    writable: bool = False

    @property
    def registers(self) -> int:
        """How many addresses the point takes: registers, or bits on a coil/input table."""
        if self.type is PointType.BOOL:
            return 1
        if self.type is PointType.STRING:
            return self.length or 1
        fixed = self.type.fixed_registers
        assert fixed is not None
        return fixed

    @property
    def last_address(self) -> int:
        return self.address + self.registers - 1

    @property
    def is_scaled(self) -> bool:
        return self.scale != 1 or self.offset != 0

    def span(self) -> str:
        """`holding_register 10..11`, for messages."""
        last = self.last_address
        where = f"{self.address}" if last == self.address else f"{self.address}..{last}"
        if self.type is PointType.BIT:
            where += f" bit {self.bit}"
        return f"{self.table.value} {where}"

    @model_validator(mode="after")
    def _consistent(self) -> Point:
        raise_issues("Point", self._issues())
        return self

    def _issues(self) -> list[tuple[tuple[str | int, ...], str]]:
        t, table = self.type, self.table
        issues: list[tuple[tuple[str | int, ...], str]] = []

        def bad(key: str, message: str) -> None:
            issues.append(((key,), message))

        if t is PointType.BOOL and not table.is_bits:
            bad("type", f"bool is for a coil or discrete_input; {table.value} holds "
                        "16-bit words: use type: bit with bit: 0..15")
        elif t is not PointType.BOOL and table.is_bits:
            bad("type", f"{table.value} holds single bits: use type: bool "
                        f"({t.value} needs a holding_register or input_register)")
        if t is PointType.BIT and self.bit is None:
            bad("bit", "type bit needs `bit: 0..15` (the bit within the register, "
                       "0 = least significant)")
        elif t is not PointType.BIT and self.bit is not None:
            bad("bit", f"`bit` applies only to type bit, not {t.value}")
        if t is PointType.STRING and self.length is None:
            bad("length", "type string needs `length` (registers, two characters each)")
        elif t is not PointType.STRING and self.length is not None:
            bad("length", _length_message(t))
        # an option that would change nothing for this type is a misunderstanding: say so
        if self.word_order is Order.LITTLE and (self.registers < 2 or t is PointType.STRING):
            bad("word_order", f"`word_order` applies to 32- and 64-bit types, not {t.value}")
        if self.byte_order is Order.LITTLE and t in (PointType.BOOL, PointType.BIT):
            bad("byte_order", f"`byte_order` does not apply to type {t.value}"
                + (" (number the bit as the device's data sheet does: 0..15 from the "
                   "least significant bit of the register)" if t is PointType.BIT else ""))
        if not t.is_numeric:
            if self.scale != 1 or self.offset != 0:
                key = "scale" if self.scale != 1 else "offset"
                bad(key, f"`{key}` applies to numeric types, not {t.value}")
            if self.unit is not None:
                bad("unit", f"`unit` applies to numeric types, not {t.value}")
        if not math.isfinite(self.scale) or self.scale == 0:
            bad("scale", "scale must be a finite number other than 0")
        if not math.isfinite(self.offset):
            bad("offset", "offset must be a finite number")
        if self.writable and not table.writable:
            bad("writable", f"{table.value} is read-only; only coil and holding_register "
                            "points can be written")
        if self.address + self.registers - 1 > MAX_ADDRESS:
            what = "bit" if table.is_bits else "register"
            bad("address", f"{t.value} at {self.address} needs {what}s {self.address}.."
                           f"{self.address + self.registers - 1}, beyond the last "
                           f"address {MAX_ADDRESS}")
        return issues


def _length_message(t: PointType) -> str:
    if t is PointType.BOOL:
        return "`length` applies only to type string; a bool is one bit"
    return (f"`length` applies only to type string; {t.value} always takes "
            f"{t.fixed_registers} register{'s' if t.fixed_registers != 1 else ''}")


def raise_issues(title: str, issues: Sequence[tuple[tuple[str | int, ...], str]],
                 inputs: Any = None) -> None:
    """Raise one pydantic ValidationError holding every `(loc, message)` issue.

    Raised from a model validator, the locations stay relative to the model, so the
    config loader reports each issue at the line of the key it names.
    """
    if not issues:
        return
    details = [InitErrorDetails(type="value_error", loc=loc, input=inputs,
                                ctx={"error": ValueError(message)})
               for loc, message in issues]
    raise ValidationError.from_exception_data(title, details)
