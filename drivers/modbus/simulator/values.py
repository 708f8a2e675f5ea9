"""Initial values a simulated unit serves: plausible readings, not zeros.

The shipped profiles get the values of a healthy device at rest (no alarm, a battery
at 9x %, a room at 2x °C). Any other profile gets values guessed from each point's
unit, or distinct values per point that fill both words of a 32-bit value and every
byte of a register, so a byte or word order mistake shows instead of hiding behind 0.
"""

from __future__ import annotations

from collections.abc import Mapping

from drivers.modbus.decode import EncodeError, Value, encode
from drivers.modbus.points import Point, PointType
from drivers.modbus.profile import Profile

__all__ = ["SHIPPED_DEFAULTS", "initial_values", "plausible"]

#: A healthy device at rest, per shipped profile (point -> value in scaled units).
SHIPPED_DEFAULTS: dict[str, dict[str, Value]] = {
    "smoke-detector": {"alarm": False, "fault": False, "density": 0.012,
                       "temperature": 22.5, "battery": 96, "fault_code": 0},
    "water-sensor": {"leak": False, "level": 1.25, "pressure": 310.5, "battery": 93},
    "gate-controller": {"door_open": False, "locked": True, "forced_open": False,
                        "held_open": False, "open_time": 0, "access_counter": 0,
                        "access_result": 1, "access_method": 1, "access_direction": 1,
                        "card_number": 10012345},
}

#: By the point's unit: a value in that unit that reads as a normal day.
_BY_UNIT: dict[str, float] = {
    "%": 90, "°C": 21.5, "dB/m": 0.01, "kPa": 300.0, "Pa": 300000, "m": 1.5, "s": 0,
    "V": 12.0, "A": 1.5, "Hz": 50.0, "bar": 3.0, "lx": 300,
}

_INT_RAW: dict[PointType, int] = {
    PointType.INT16: -1234, PointType.UINT16: 0x1234,
    PointType.INT32: -123456789, PointType.UINT32: 0x12345678,
}


def plausible(point: Point, index: int = 0) -> Value:
    """A value `point` can hold that reads as normal; `index` makes points differ."""
    t = point.type
    if t in (PointType.BOOL, PointType.BIT):
        return False
    if t is PointType.STRING:
        text = f"SIM{index:02d}"
        return text[: 2 * (point.length or 1)]
    if point.unit in _BY_UNIT:
        guess = _BY_UNIT[point.unit]
        if t in (PointType.FLOAT32, PointType.FLOAT64):
            return float(guess)
        return _snap(point, guess)
    if t in (PointType.FLOAT32, PointType.FLOAT64):
        return 12.5 + index  # exact in float32: reads back as written
    raw = _INT_RAW[t] + index
    return _scaled(point, raw)


def _snap(point: Point, value: float) -> int | float:
    """`value` rounded to what the point's integer raw value can express."""
    raw = round((value - point.offset) / point.scale)
    return _scaled(point, raw)


def _scaled(point: Point, raw: int) -> int | float:
    if not point.is_scaled:
        return raw
    value = raw * point.scale + point.offset
    if point.scale.is_integer() and point.offset.is_integer():
        return int(value)
    return float(f"{value:.15g}")


def initial_values(profile: Profile, overrides: Mapping[str, Value] | None = None
                   ) -> dict[str, Value]:
    """Every point's starting value: the shipped defaults, guesses, then `overrides`."""
    shipped = SHIPPED_DEFAULTS.get(profile.name, {})
    values: dict[str, Value] = {}
    for index, point in enumerate(profile.points):
        value = shipped.get(point.name)
        if value is None or not _fits(point, value):  # a site profile of the same name
            value = plausible(point, index)
        values[point.name] = value
    values.update(overrides or {})
    return values


def _fits(point: Point, value: Value) -> bool:
    try:
        encode(point, value, current=0 if point.type is PointType.BIT else None)
    except EncodeError:
        return False
    return True
