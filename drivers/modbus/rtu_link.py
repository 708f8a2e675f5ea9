"""A Modbus RTU link over pymodbus: one serial port shared by every device on the bus.

The error tree and the late-reply rules are in transport.py. RTU has no transaction
ids, so after a timeout or garbage the link keeps the line silent until it has been
quiet for `quiet_s`; bytes arriving meanwhile are discarded, and a reply from another
unit, for another function or with another count is rejected. One request at a time
(`lock`); a pause of at least 3.5 character times (`pause_s`) separates a reply from the
next request, whoever sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import termios
import time
from collections.abc import Awaitable, Callable, Sequence

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.modbus.points import Table
from drivers.modbus.transport import (
    EXCEPTION_NAMES,
    Link,
    ModbusConnectionError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusProtocolError,
    ModbusTimeout,
    SerialSettings,
)

# pymodbus logs every CRC error and timeout at ERROR; we raise precise exceptions instead
# and the poller logs them once per device state change.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

__all__ = ["RtuLink"]

#: Longest wait for a quiet line after an error; a babbling line is not waited out forever.
MAX_QUIET_WAIT_S = 2.0

ClientFactory = Callable[[float, Callable[[bool, bytes], bytes]], ModbusBaseClient]


def _serial_open_error(port: str) -> str:
    """Why `port` cannot be opened as pymodbus opens it, from the OS error of the same
    steps (open, exclusive lock, read the line settings): pymodbus only logs it."""
    fd = -1
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        termios.tcgetattr(fd)
    except OSError as exc:
        return _describe(port, exc)
    except termios.error as exc:  # (errno, text), no OSError
        code, text = (*exc.args, None, str(exc))[:2]
        return _describe(port, OSError(code, text))
    finally:
        if fd >= 0:
            os.close(fd)  # also releases the lock
    return (f"cannot open serial port {port} (a second attempt to open it worked: "
            "a passing problem?)")


def _describe(port: str, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT:
        return (f"serial port {port} does not exist (is the adapter plugged in? "
                "/dev/serial/by-id/ names stay stable across reboots)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"permission denied on {port}: add the agent's user to the port's "
                "group (usually `dialout`) and restart the agent")
    if exc.errno in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        return (f"serial port {port} is in use by another program ({reason}; "
                f"see `fuser -v {port}`)")
    if exc.errno == errno.ENOTTY:
        return f"{port} is not a serial port ({reason})"
    return f"cannot open serial port {port}: {reason}"


class RtuLink(Link):
    """One pymodbus serial client, created on first use (it needs the running event loop)."""

    def __init__(self, name: str, factory: ClientFactory, timeout_s: float, *,
                 serial_port: str | None = None, pause_s: float = 0.0,
                 quiet_s: float = 0.0) -> None:
        super().__init__(name, timeout_s, pause_s=pause_s, quiet_s=quiet_s)
        self._factory = factory
        self._serial_port = serial_port
        self._client: ModbusBaseClient | None = None
        self._idle_since = 0.0  # monotonic end of the last exchange
        self._dirty = False  # RTU: an error happened, wait for a quiet line
        self._last_rx = 0.0
        self._rx = b""  # bytes seen since the current request was sent

    @classmethod
    def for_port(cls, settings: SerialSettings, timeout_s: float, *, pause_s: float = 0.0,
                 quiet_s: float | None = None) -> RtuLink:
        def factory(timeout: float, trace: Callable[[bool, bytes], bytes]) -> ModbusBaseClient:
            return AsyncModbusSerialClient(
                settings.port, framer=FramerType.RTU, baudrate=settings.baudrate,
                bytesize=settings.bytesize, parity=settings.parity,
                stopbits=settings.stopbits, timeout=timeout, retries=0,
                reconnect_delay=0, reconnect_delay_max=0, trace_packet=trace)
        gap = settings.frame_gap_s()
        quiet = gap + min(timeout_s, 0.25) if quiet_s is None else quiet_s
        return cls(f"rtu://{settings.port}", factory, timeout_s, serial_port=settings.port,
                   pause_s=max(pause_s, gap), quiet_s=quiet)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def close(self) -> None:
        """Drop the client: whatever arrives late is discarded with it."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    # ------------------------------------------------------------------ requests

    async def read_locked(self, table: Table, start: int, count: int, unit: int, *,
                          timeout_s: float | None = None) -> list[int] | list[bool]:
        """`read` for a caller that holds `lock`."""
        what = f"{self.name} unit {unit}: read {table.value} {start}..{start + count - 1}"
        calls = {Table.COIL: "read_coils", Table.DISCRETE_INPUT: "read_discrete_inputs",
                 Table.HOLDING_REGISTER: "read_holding_registers",
                 Table.INPUT_REGISTER: "read_input_registers"}

        def send(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            fn: Callable[..., Awaitable[ModbusPDU]] = getattr(client, calls[table])
            return fn(start, count=count, device_id=unit)

        reply = await self._exchange(what, send, timeout_s)
        self._check_reply(reply, what, table.read_function, unit)
        if table.is_bits:
            bits = list(reply.bits)
            if len(bits) != 8 * ((count + 7) // 8):
                raise self._garbled(what, f"{len(bits)} bits in the reply, {count} asked")
            return [bool(b) for b in bits[:count]]
        registers = list(reply.registers)
        if len(registers) != count:
            raise self._garbled(what, f"{len(registers)} registers in the reply, "
                                      f"{count} asked")
        return registers

    async def write_locked(self, table: Table, start: int,
                           values: Sequence[int] | Sequence[bool], unit: int, *,
                           timeout_s: float | None = None) -> int:
        """Write coils (FC5/FC15) or holding registers (FC6/FC16); returns the function code.

        The device's echo (address, and the value of a single write) is checked.
        """
        fc, what = self.write_plan(table, start, values, unit)
        single = len(values) == 1

        def send(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            if table is Table.COIL:
                bits = [bool(v) for v in values]
                return (client.write_coil(start, bits[0], device_id=unit) if single
                        else client.write_coils(start, bits, device_id=unit))
            words = [int(v) for v in values]
            return (client.write_register(start, words[0], device_id=unit) if single
                    else client.write_registers(start, words, device_id=unit))

        reply = await self._exchange(what, send, timeout_s)
        self._check_reply(reply, what, fc, unit)
        echo = list(reply.bits if table is Table.COIL else reply.registers)[:1]
        if reply.address != start or (single and echo != [values[0]]) \
                or (not single and reply.count != len(values)):
            raise self._garbled(what, f"the device's echo (address {reply.address}) does "
                                      "not match the request")
        return fc

    # ------------------------------------------------------------------ internals

    async def _exchange(self, what: str, send: Callable[[ModbusBaseClient], Awaitable[ModbusPDU]],
                        timeout_s: float | None) -> ModbusPDU:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        client = await self._connected(what)
        await self._wait_turn()
        self._rx = b""
        try:
            # pymodbus' own timeout is a backstop; this one is the device's.
            async with asyncio.timeout(timeout):
                return await send(client)
        except TimeoutError:
            raise self._silence(what, timeout) from None
        except ModbusIOException as exc:
            if "no response" in exc.string.lower():
                raise self._silence(what, timeout) from None
            raise self._garbled(what, exc.string) from None
        except (ConnectionException, OSError) as exc:
            self.close()
            raise ModbusConnectionError(f"{what}: connection lost: {exc}") from None
        except ModbusException as exc:
            raise self._garbled(what, str(exc)) from None
        except Exception as exc:  # a device's bytes must never crash the driver
            raise self._garbled(what, f"unreadable reply ({type(exc).__name__}: {exc})"
                                ) from None
        finally:
            self._idle_since = time.monotonic()

    async def _connected(self, what: str) -> ModbusBaseClient:
        if self._client is not None and self._client.connected:
            return self._client
        self.close()
        # pymodbus' timeout is only a backstop behind the per-request asyncio timeout
        client = self._factory(self.timeout_s + 1.0, self._trace)
        ok = False
        with contextlib.suppress(TimeoutError, OSError, ModbusException):
            async with asyncio.timeout(self.timeout_s + 1.0):
                ok = await client.connect()
        if not ok:
            with contextlib.suppress(Exception):
                client.close()
            raise ModbusConnectionError(f"{what}: cannot connect: {self._why_not()}")
        self._client = client
        self._dirty = self._serial_port is not None  # stale bytes in a fresh port: wait
        self._last_rx = self._idle_since = time.monotonic()
        return client

    def _why_not(self) -> str:
        port = self._serial_port
        if port is None:
            return (f"no Modbus TCP server answers at {self.name} within "
                    f"{self.timeout_s + 1.0:g}s (refused, unreachable or filtered)")
        return _serial_open_error(port)

    async def _wait_turn(self) -> None:
        """RTU: keep the inter-frame pause, and after an error wait for a quiet line."""
        if not self.pause_s and not self._dirty:
            return
        give_up = time.monotonic() + MAX_QUIET_WAIT_S
        while True:
            now = time.monotonic()
            ready = self._idle_since + self.pause_s
            if self._dirty:
                ready = max(ready, self._last_rx + self.quiet_s, self._idle_since + self.quiet_s)
            if now >= ready or now >= give_up:
                break
            await asyncio.sleep(ready - now)
        self._dirty = False

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._last_rx = time.monotonic()
            self._rx = bytes(data[:32])
        return data

    def _check_reply(self, reply: ModbusPDU, what: str, fc: int, unit: int) -> None:
        got = int(reply.function_code)
        if got & 0x7F != fc:
            raise self._garbled(what, f"the reply is for function {got & 0x7F}, not {fc}")
        if unit and reply.dev_id != unit:
            raise self._garbled(what, f"the reply comes from unit {reply.dev_id}")
        if got & 0x80 or reply.isError():
            code = int(getattr(reply, "exception_code", 0) or 0)
            name = EXCEPTION_NAMES.get(code, "unknown exception code")
            raise ModbusExceptionResponse(f"{what}: exception {code} ({name})", code)

    def _silence(self, what: str, timeout: float) -> ModbusError:
        if self._rx:
            self._after_error()
            return ModbusProtocolError(
                f"{what}: no valid reply within {timeout:g}s, only "
                f"{self._rx[:16].hex(' ')}{' ...' if len(self._rx) > 16 else ''} "
                "(CRC error, framing garbage or a reply from another unit)")
        self._after_error()
        return ModbusTimeout(f"{what}: no reply within {timeout:g}s")

    def _garbled(self, what: str, detail: str) -> ModbusProtocolError:
        """A reply that does not answer the request: `garbled reply` on the status page."""
        self._after_error()
        return ModbusProtocolError(f"{what}: garbled reply: {detail}")

    def _after_error(self) -> None:
        """TCP: drop the connection. RTU: the next request waits for a quiet line."""
        if self._serial_port is None:
            self.close()
        else:
            self._dirty = True
