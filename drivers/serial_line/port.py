"""The serial port: opened with pyserial, read on the event loop with `add_reader`.

pyserial configures the line (baud rate, framing, an exclusive `flock` so two
programs do not read one port) and opens the device non-blocking. Reads then happen
on the event loop: the port's file descriptor is watched with `loop.add_reader` and
read with `os.read`, so there is no thread per port, cancellation is immediate, and
nothing is left blocked in a read when a USB adapter vanishes. That is POSIX (the
gateway runs Linux); on Windows the selector loop cannot watch a serial handle.

A read that finds the descriptor readable but returns no bytes, or fails with EIO,
means the device hung up (USB adapter unplugged, the other end of a pty closed):
`PortError` with a precise reason, and the driver reopens the port with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from typing import Any

import serial  # type: ignore[import-untyped,unused-ignore]  # no stubs installed

from .options import SerialLineDevice

__all__ = ["READ_SIZE", "PortError", "SerialPort", "describe_error"]

READ_SIZE = 4096

_PARITY = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD,
           "mark": serial.PARITY_MARK, "space": serial.PARITY_SPACE}
_STOPBITS = {1: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE,
             2: serial.STOPBITS_TWO}


class PortError(Exception):
    """The port cannot be opened or stopped working; `str()` says why, for operators."""


def describe_error(port: str, exc: BaseException) -> str:
    """A precise, actionable reason for an open or read failure."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOENT:
        return (f"{port} does not exist (adapter unplugged or wrong path? "
                "see ls -l /dev/serial/by-id/)")
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied on {port} (add the agent's user to the dialout group)"
    if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY) or "exclusively lock" in text:
        return f"{port} is in use by another program (see fuser -v {port})"
    if code == errno.ENOTTY or "configure port" in text:
        return f"{port} is not a serial port ({text})"
    if code in (errno.ENXIO, errno.ENODEV):
        return f"{port} has no device behind it (unplugged?)"
    if code == errno.EIO:
        return f"I/O error on {port} (device unplugged or the other end closed)"
    reason = getattr(exc, "strerror", None) or text or type(exc).__name__
    return f"{port}: {reason}"


def _open_blocking(cfg: SerialLineDevice) -> serial.Serial:
    return serial.Serial(
        port=str(cfg.port),
        baudrate=cfg.baudrate,
        bytesize=cfg.bytesize,
        parity=_PARITY[cfg.parity],
        stopbits=_STOPBITS[cfg.stopbits],
        timeout=0,
        exclusive=True,
    )


def _close_quietly(ser: Any) -> None:
    with contextlib.suppress(Exception):
        ser.close()


def _close_opened(future: asyncio.Future[serial.Serial]) -> None:
    """Done callback of an open whose caller was cancelled: close what it opened."""
    if not future.cancelled() and future.exception() is None:
        _close_quietly(future.result())


class SerialPort:
    """One open port. `read()` returns the next bytes or raises PortError."""

    def __init__(self, ser: serial.Serial, name: str) -> None:
        self._serial = ser
        self.name = name
        fd = ser.fileno()
        os.set_blocking(fd, False)
        self._fd: int | None = fd

    @classmethod
    async def open(cls, cfg: SerialLineDevice) -> SerialPort:
        """Open and configure the port in a worker thread (a slow USB driver must not
        stall the loop); a cancelled open closes the port it got."""
        name = str(cfg.port)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, _open_blocking, cfg)
        try:
            ser = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_close_opened)
            raise
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortError(describe_error(name, exc)) from None
        try:
            return cls(ser, name)
        except (OSError, ValueError) as exc:
            _close_quietly(ser)
            raise PortError(describe_error(name, exc)) from None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    async def read(self, size: int = READ_SIZE) -> bytes:
        """The bytes available now, or the next ones to arrive."""
        waited = False
        while True:
            fd = self._fd
            if fd is None:
                raise PortError(f"{self.name} is closed")
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                data = None
            except OSError as exc:
                raise PortError(describe_error(self.name, exc)) from None
            if data:
                return data
            if data == b"" and waited:
                # Readable but nothing to read: the tty hung up. (Before a wait, a tty
                # with VMIN=0 may return b"" just because nothing is there yet.)
                raise PortError(f"{self.name} hung up (device disconnected or the other "
                                "end closed)")
            await self._readable(fd)
            waited = True

    async def _readable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    def close(self) -> None:
        if self._fd is None:
            return
        self._fd = None
        _close_quietly(self._serial)

    def __enter__(self) -> SerialPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
