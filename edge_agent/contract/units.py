"""The fixed unit list of `sensor.reading` and the namespace rule of profile-declared alarms.

Both are part of the published contract (`schemas/event-v1.schema.json` holds the same
list as an enum and the same pattern; `tests/test_telemetry_contract.py` checks they
agree). Extend the unit list, never repurpose or remove a unit: a department's query
depends on `unit` meaning the same thing forever.

- A unit is written exactly as listed (`°C`, not `C` or `degC`; `m3/h`, not `m³/h`).
  `1` is a dimensionless number (power factor, a floor index), `count` a counted thing.
- A declared alarm type is `<kind>.<name>` (e.g. `elevator.fault`), both parts lower
  case `[a-z][a-z0-9_]*`, `<kind>` the profile's `kind:` and not one of the catalog's
  own families (RESERVED_KINDS), so `pump.failure` can never be mistaken for a catalog
  type and departments filter `device.alarm` events by `data.alarm_type`.
"""

from __future__ import annotations

import difflib
import re

__all__ = ["ALARM_TYPE_PATTERN", "KIND_PATTERN", "QUANTITY_PATTERN", "RESERVED_KINDS", "UNITS",
           "unit_hint"]

UNITS: tuple[str, ...] = (
    # electricity
    "V", "mV", "kV", "A", "mA", "W", "kW", "MW", "VA", "kVA", "var", "kvar",
    "Wh", "kWh", "MWh", "varh", "kvarh", "Hz", "Ω",
    # temperature, humidity, pressure
    "°C", "K", "%RH", "Pa", "kPa", "MPa", "hPa", "bar",
    # length, speed, acceleration, flow, volume, mass
    "mm", "cm", "m", "km", "m/s", "km/h", "m/s2", "m3", "L", "m3/h", "L/min", "L/s",
    "g", "kg", "t", "N", "N·m", "rpm",
    # air quality, light, sound
    "ppm", "ppb", "µg/m3", "mg/m3", "lx", "dB", "dBA", "dB/m",
    # time and plain numbers
    "ms", "s", "min", "h", "d", "%", "count", "1",
)

#: `<kind>.<name>` of a declared alarm type.
ALARM_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}\.[a-z][a-z0-9_]{0,31}$"
#: A profile's `kind:` (the namespace of its declared alarm types).
KIND_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
#: A quantity's name in `sensor.reading`.
QUANTITY_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
#: Families of the catalog: a profile's kind cannot be one of them.
RESERVED_KINDS = frozenset({"camera", "device", "gate", "gateway", "sensor", "smoke", "water"})


def unit_hint(unit: str) -> str:
    """`did you mean …?` (close matches) plus the whole list."""
    close = difflib.get_close_matches(unit, UNITS, n=2, cutoff=0.5)
    folded = [u for u in UNITS if u.lower() == unit.lower() and u not in close]
    close = folded + close
    mean = f"did you mean {' or '.join(f'`{u}`' for u in close)}? " if close else ""
    return mean + "valid units: " + ", ".join(UNITS)


def is_alarm_type(value: str) -> bool:
    return re.match(ALARM_TYPE_PATTERN, value) is not None
