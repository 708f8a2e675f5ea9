"""A fake systemd notify socket: what `sd_notify` sends, as systemd would receive it."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class NotifySocket:
    """An AF_UNIX datagram socket bound like systemd's; `env` is what the service gets."""

    sock: socket.socket
    name: str  #: the NOTIFY_SOCKET value (a path, or @abstract)
    #: (monotonic arrival, one KEY=VALUE line) for every line received so far
    lines: list[tuple[float, str]] = field(default_factory=list)

    def env(self, watchdog_s: float | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.name}
        if watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1_000_000))
        return env

    def drain(self) -> list[str]:
        """Read everything waiting now; the new lines."""
        new: list[str] = []
        while True:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            now = time.monotonic()
            for line in data.decode().splitlines():
                self.lines.append((now, line))
                new.append(line)
        return new

    def count(self, line: str) -> int:
        self.drain()
        return sum(1 for _, got in self.lines if got == line)

    def last_at(self, line: str) -> float | None:
        self.drain()
        return max((at for at, got in self.lines if got == line), default=None)

    def wait_for(self, line: str, n: int = 1, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while self.count(line) < n:
            if time.monotonic() > deadline:
                got = [g for _, g in self.lines][-20:]
                raise AssertionError(f"{line!r} x{n} not received within {within}s; got {got}")
            time.sleep(0.02)


@contextlib.contextmanager
def notify_socket(tmp_path: Path, *, abstract: bool = False) -> Iterator[NotifySocket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"@edge-test-notify-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name[1:])
    else:
        path = tmp_path / "notify.sock"
        if len(str(path)) > 100:  # sun_path is 108 bytes
            path = Path(f"/tmp/edge-notify-{os.getpid()}-{id(sock)}.sock")
        name = str(path)
        sock.bind(name)
    try:
        yield NotifySocket(sock, name)
    finally:
        sock.close()
        if not abstract:
            with contextlib.suppress(OSError):
                os.unlink(name)
