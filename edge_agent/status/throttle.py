"""Credential guesses slowed down per client address, in bounded memory.

Each client address gets its own line: one credential check at a time, and a wrong one
holds that address's line for the failure pause. So parallel guessing from one address
is no faster than one guess per pause, while a staff member on another address is
answered at once, whatever a hostile client queues up.

The address is the TCP peer of the connection (`request.remote`; the page has no proxy
in front of it, so `X-Forwarded-For` and the like are never read). IPv6 addresses count
per /64, the block one host can pick addresses from freely.

Memory: an address has an entry only while a check from it runs, waits or pauses after
a failure; it is dropped when its line is free again. At most `ADDRESSES_MAX` entries
exist; addresses beyond that (a flood from more addresses than a LAN has) share one
overflow line, so the total guess rate stays bounded too. At most `WAITING_MAX` checks
wait on one line; more are refused without being tried (`Verdict.BUSY`).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["ADDRESSES_MAX", "WAITING_MAX", "GuessThrottle", "Verdict", "client_key"]

#: addresses with a line of their own at once (more than any compound LAN has hosts)
ADDRESSES_MAX = 1024
#: checks that may wait on one line; beyond that they are refused at once
WAITING_MAX = 16
OVERFLOW = "*"


class Verdict(Enum):
    OK = "ok"        # the credential matched
    WRONG = "wrong"  # it did not (answered after the pause)
    BUSY = "busy"    # not tried: too many checks already wait for this address


def client_key(remote: str | None) -> str:
    """The line an address waits in: the IPv4 address, an IPv6 /64, else the text."""
    if not remote:
        return "?"
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


@dataclass
class _Line:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # checks running or waiting in this line


class GuessThrottle:
    def __init__(self, *, addresses_max: int = ADDRESSES_MAX,
                 waiting_max: int = WAITING_MAX) -> None:
        self.addresses_max = addresses_max
        self.waiting_max = waiting_max
        self._lines: dict[str, _Line] = {}

    def __len__(self) -> int:
        """Lines in memory (overflow included)."""
        return len(self._lines)

    async def check(self, remote: str | None, matches: Callable[[], bool],
                    fail_delay_s: float) -> Verdict:
        """Run `matches()` in the line of `remote`; a failure holds the line `fail_delay_s`."""
        key = client_key(remote)
        if key not in self._lines and len(self._lines) >= self.addresses_max:
            key = OVERFLOW  # the overflow line is allowed beyond the cap: one more entry
        line = self._lines.setdefault(key, _Line())
        if line.users > self.waiting_max:
            return Verdict.BUSY
        line.users += 1
        try:
            async with line.lock:
                if matches():
                    return Verdict.OK
                await asyncio.sleep(fail_delay_s)
                return Verdict.WRONG
        finally:
            line.users -= 1
            if line.users == 0:
                del self._lines[key]
