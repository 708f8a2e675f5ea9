"""systemd's notify protocol, as the tiny socket write it is (no dependency).

A service of `Type=notify` tells systemd how it is doing by sending datagrams of
newline-separated `KEY=VALUE` lines to the AF_UNIX socket named in `$NOTIFY_SOCKET`
(sd_notify(3)): `READY=1` once it really serves, `STATUS=...` for `systemctl status`,
`STOPPING=1` when it begins to shut down and `WATCHDOG=1` at least once per
`$WATCHDOG_USEC` microseconds when the unit has `WatchdogSec=`.

Invariants
1. Without `$NOTIFY_SOCKET` (not under systemd, tests, a shell) nothing is sent and
   nothing fails: `notify` returns False.
2. A name starting with `@` is an abstract socket (its `@` becomes a NUL byte); a path is a
   filesystem socket. Other kinds (`vsock:`) are not supported: False, logged once.
3. A failing send never raises: it is logged once (the service goes on; systemd, not we,
   decides what a missing READY or ping means).
4. `watchdog_interval_s` is None unless `$WATCHDOG_USEC` is a positive integer and
   `$WATCHDOG_PID`, when set, is this process's pid (the variables were meant for us, not
   inherited from a parent that was supervised).
"""

from __future__ import annotations

import os
import socket

from edge_agent.contract.logs import get_logger

log = get_logger("edge_agent.contract.sdnotify")

_failed_once = False


def _address(name: str) -> str | None:
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None


def notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=serving") as one datagram; True when sent."""
    global _failed_once  # one warning per process
    name = os.environ.get("NOTIFY_SOCKET", "")
    if not name or not lines:
        return False
    address = _address(name)
    error = "unsupported NOTIFY_SOCKET address (only paths and @abstract names)"
    if address is not None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(address)
                s.sendall("\n".join(lines).encode())
            return True
        except OSError as exc:
            error = str(exc)
    if not _failed_once:
        _failed_once = True
        log.warning("sd_notify_failed", socket=name, error=error,
                    hint="systemd did not get the notification; check the unit's "
                         "NotifyAccess= and that the socket is reachable")
    return False


def watchdog_interval_s() -> float | None:
    """systemd's watchdog interval for this process (seconds), or None when it has none."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
