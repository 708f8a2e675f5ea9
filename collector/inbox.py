"""The collector's bounded inbox: payloads read from the broker, waiting for the store.

One reader offers, one validator takes. Memory held by ingest: the inbox, plus at most
three groups beyond it (one being validated, one validated and waiting, one committing).
Bounded in payloads and in bytes (`Bounds.queued_payloads`, `queued_bytes`): `offer`
refuses a payload that does not fit (the caller counts it as shed), it never blocks; one
payload bigger than the byte bound is still taken into an empty inbox, so any payload
the broker delivers can be handled.
`take` waits for at least one payload, then returns everything waiting up to a group's
caps (`group_payloads`, `group_bytes`), oldest first, at least one. After `close`,
`take` returns nothing more: what was not taken stays unacknowledged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

#: A received message: its topic and payload.
Message = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class Bounds:
    """How much the collector holds and commits at once, and how many acks fly at once."""

    #: payloads waiting for the store, at most (beyond: shed, the edge resends)
    queued_payloads: int = 10_000
    #: their payload bytes, at most
    queued_bytes: int = 64 * 1024 * 1024
    #: payloads in one transaction, at most
    group_payloads: int = 2_000
    #: their payload bytes, at most (one payload bigger than this is a group of its own)
    group_bytes: int = 8 * 1024 * 1024
    #: acks published and not yet PUBACKed by the broker, at most
    acks_in_flight: int = 1_000


class Inbox:
    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self._waiting: deque[Message] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._closed = False
        #: the most payloads ever waiting at once (never above `bounds.queued_payloads`)
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, message: Message) -> bool:
        """Queue `message` if it fits; False if the inbox is full (or closed)."""
        size = len(message[1])
        if self._closed or len(self._waiting) >= self.bounds.queued_payloads or (
                self._waiting and self._bytes + size > self.bounds.queued_bytes):
            return False
        self._waiting.append(message)
        self._bytes += size
        self.high_water = max(self.high_water, len(self._waiting))
        self._ready.set()
        return True

    async def take(self) -> list[Message]:
        """The next group: at least one payload, oldest first; [] once closed."""
        while not self._waiting and not self._closed:
            self._ready.clear()
            await self._ready.wait()
        if self._closed:
            return []
        group: list[Message] = []
        size = 0
        b = self.bounds
        while self._waiting and len(group) < b.group_payloads:
            n = len(self._waiting[0][1])
            if group and size + n > b.group_bytes:
                break
            group.append(self._waiting.popleft())
            size += n
        self._bytes -= size
        return group

    def close(self) -> None:
        """No more offers; `take` returns [] (what waits is left unacknowledged)."""
        self._closed = True
        self._ready.set()
