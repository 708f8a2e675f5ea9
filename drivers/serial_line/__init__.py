"""Serial line devices: text lines on a serial port, frames and events from YAML.

For legacy fire panels and the like that print one line per event
(`FIRE ZONE 03 ALARM`). Each device entry says how lines end, what a valid line looks
like (regexes with named groups, an optional checksum) and what the groups mean:
point values for the `events:` rules, or alarms raised and cleared per zone.
See drivers/serial_line/README.md and sample.yaml.

Imports `edge_agent.sdk` and `edge_agent.contract` only (no other driver).
"""

from __future__ import annotations

from edge_agent.sdk.api import DriverSpec

from .driver import SerialLineDriver
from .options import SerialLineDevice

__all__ = ["DRIVER", "SerialLineDevice", "SerialLineDriver"]

DRIVER = DriverSpec(
    name="serial_line",
    options=SerialLineDevice,
    build=SerialLineDriver,
    summary="line-oriented serial devices (fire panels, ...): frames and events from YAML",
)
