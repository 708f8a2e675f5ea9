"""Helpers for the stream API tests: consumers in memory (the interface of
`collector.consumers`, fixed by issue 12, until that package lands) and event rows."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from collector.model import EventRow
from collector.store import Origin, Store
from collector.validate import check_payload
from tests.test_collector_support import batch, new_epoch, reading, topics

ORIGIN = Origin("cd/v1/371312/371312001001/gw-a/events", "gw-a")


@dataclass(frozen=True)
class Scope:
    areas: tuple[str, ...]
    types: tuple[str, ...]


@dataclass(frozen=True)
class Consumer:
    name: str
    scope: Scope


@dataclass
class MemoryConsumers:
    """Tokens -> consumers; every audit call recorded."""

    tokens: dict[str, Consumer] = field(default_factory=dict)
    audits: list[tuple[str, str, Scope, int]] = field(default_factory=list)
    #: tokens refused since, and why ("revoked", "expired")
    refused: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def authenticate(self, token: str) -> Consumer | None:
        found = self.check(token)
        return found if isinstance(found, Consumer) else None

    def check(self, token: str) -> Consumer | str:
        if token in self.refused:
            return self.refused[token]
        return self.tokens.get(token) or "unknown"

    def audit(self, consumer: str, route: str, scope: Scope, events: int) -> None:
        with self._lock:
            self.audits.append((consumer, route, scope, events))


ALL = Scope(("",), ("*",))


def event_rows(n: int, gateway: str = "gw-a", start: int = 1,
               epoch: str | None = None) -> list[EventRow]:
    epoch = epoch or new_epoch()
    verdict = check_payload(batch([reading(gateway, epoch, s) for s in range(start, start + n)]),
                            topics(gateway))
    assert not verdict.rejected
    return verdict.accepted


def ingest(store: Store, rows: list[EventRow]) -> None:
    store.ingest(ORIGIN, rows, [])
