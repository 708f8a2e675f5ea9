"""Modbus driver (pymodbus): TCP and RTU devices described by YAML profiles.

Pure, I/O-free parts: `points` (the point model), `decode` (registers <-> values),
`planner` (points -> the fewest read requests) and `profile` (YAML device profiles; the
shipped ones in `profiles/`, package data). Runtime: `device` (a device entry's options,
validated before any I/O), `transport` (`Link`: pymodbus with a precise exception tree),
`poller` (health, back-off and the bus scheduler), `driver` (`ModbusDriver`) and
`writes` (the audited, allow-listed write API). See README.md in this folder.

Imports `edge_agent.sdk` and `edge_agent.contract` only (no other driver).
"""

from drivers.modbus.device import ModbusDevice, bus_problems
from drivers.modbus.driver import ModbusDriver
from edge_agent.sdk.api import DriverSpec

DRIVER = DriverSpec(name="modbus", options=ModbusDevice, build=ModbusDriver,
                    summary="Modbus TCP and RTU devices described by YAML profiles",
                    check_devices=bus_problems)

__all__ = ["DRIVER", "ModbusDevice", "ModbusDriver"]
