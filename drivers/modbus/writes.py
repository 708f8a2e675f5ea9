"""Audited writes: the only way the agent changes a Modbus device (e.g. unlock a gate).

`write_point(driver, device_id, point, value, actor=..., reason=...)` writes one point
if, and only if, the device's `allow_writes` lists it and its profile marks it
`writable`. The value is encoded like a read is decoded (scaling inverted, byte and
word order applied); a `bit` point is read-modify-write under the link's lock, so no
poll or other write can come between the read and the write. On a serial bus the
write waits its turn on the bus like any request.

Every attempt, allowed or not, is logged once as `modbus_write` with device, point,
actor, reason and result (`ok`, `refused`, `invalid`, `failed`); the value is logged
too unless the point is credential-like (a profile rule hashes it, or its name says
card/credential/pin/password/secret/token/key).

No network path calls this function: the agent has no command channel yet (the MQTT
`cmd` topic is reserved). It is a Python API for local, operator-driven tools.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers.modbus.decode import EncodeError, Value, encode
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.points import Point, PointType
from drivers.modbus.profile import Profile
from drivers.modbus.transport import Link, ModbusError
from edge_agent.contract.logs import get_logger

__all__ = ["WriteError", "WriteFailed", "WriteRefused", "WriteResult", "WriteValueError",
           "is_credential", "write_point"]

log = get_logger("drivers.modbus.writes")

_CREDENTIAL_NAME = re.compile(r"card|credential|pin|passw|secret|token|key", re.IGNORECASE)


class WriteError(Exception):
    """A write that did not happen (or whose outcome is unknown: WriteFailed)."""

    result = "failed"


class WriteRefused(WriteError):
    """Not allowed: unknown device or point, not in allow_writes, not writable, no actor."""

    result = "refused"


class WriteValueError(WriteError, ValueError):
    """The value cannot be written to the point (type, range, size)."""

    result = "invalid"


class WriteFailed(WriteError):
    """The device or the link failed; `error` is the transport's precise ModbusError.

    After a timeout the write may or may not have happened: read the point back.
    """

    def __init__(self, error: ModbusError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class WriteResult:
    device: str
    point: str
    function_code: int  # 5, 6, 15 or 16
    address: int
    count: int  # coils or registers written


def is_credential(profile: Profile, point: Point) -> bool:
    """A point whose value must never be logged."""
    hashed = {spec.point for rule in profile.events for spec in rule.data_fields().values()
              if spec.hash}
    return point.name in hashed or bool(_CREDENTIAL_NAME.search(point.name))


async def write_point(driver: ModbusDriver, device_id: str, point_name: str, value: Value, *,
                      actor: str, reason: str) -> WriteResult:
    """Write `value` to one allow-listed point; audited; raises a WriteError subclass."""
    secret = True  # until the point is known, never log the value
    try:
        try:
            handle = driver.device(device_id)
        except KeyError:
            raise WriteRefused(f"no Modbus device `{device_id}`") from None
        try:
            point = handle.profile.point(point_name)
        except KeyError:
            raise WriteRefused(f"device `{device_id}` (profile `{handle.profile.name}`) has "
                               f"no point `{point_name}`") from None
        secret = is_credential(handle.profile, point)
        if not actor.strip() or not reason.strip():
            raise WriteRefused("a write needs an actor (who) and a reason (why)")
        if point_name not in handle.cfg.allow_writes:
            raise WriteRefused(f"point `{point_name}` is not in device `{device_id}`'s "
                               "allow_writes")
        if not point.writable:
            raise WriteRefused(f"point `{point_name}` is not writable in profile "
                               f"`{handle.profile.name}`")
        result = await _write(handle.link, handle.cfg.unit_id, handle.cfg.timeout_s,
                              device_id, point, value)
    except WriteError as exc:
        _audit(device_id, point_name, actor, reason, value, secret, exc.result,
               error=type(exc).__name__ if secret and isinstance(exc, WriteValueError)
               else str(exc))
        raise
    _audit(device_id, point_name, actor, reason, value, secret, "ok",
           function_code=result.function_code)
    return result


async def _write(link: Link, unit: int, timeout_s: float, device_id: str, point: Point,
                 value: Value) -> WriteResult:
    try:
        if point.type is PointType.BIT:  # read-modify-write, nothing in between
            async with link.lock:
                (current,) = await link.read_locked(point.table, point.address, 1, unit,
                                                    timeout_s=timeout_s)
                data = encode(point, value, current=int(current))
                fc = await link.write_locked(point.table, point.address, data, unit,
                                             timeout_s=timeout_s)
        else:
            data = encode(point, value)
            fc = await link.write(point.table, point.address, data, unit, timeout_s=timeout_s)
    except EncodeError as exc:
        raise WriteValueError(str(exc)) from None
    except ModbusError as exc:
        raise WriteFailed(exc) from None
    return WriteResult(device_id, point.name, fc, point.address, len(data))


def _audit(device: str, point: str, actor: str, reason: str, value: Value, secret: bool,
           result: str, **extra: object) -> None:
    fields: dict[str, object] = {"device": device, "point": point, "actor": actor,
                                 "reason": reason, "result": result, **extra}
    if not secret:
        fields["value"] = value
    (log.info if result == "ok" else log.warning)("modbus_write", **fields)
