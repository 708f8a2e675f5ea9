"""Group commit, written once for both backends: several payloads in ONE transaction.

`GroupCommit.ingest_many(items)` stores every payload of `items` (each an `Origin`, the
events validation accepted, what it rejected) in one transaction and returns one
`IngestResult` per payload, in order. Invariants:

- Durable when it returns (the transaction committed), nothing written when it raises.
- First every accepted event of the group goes through ONE `_insert_events` call (the
  backend's batched insert, watermarks included); its result is split back per payload
  by event key (id, epoch, seq), first come first served, so an id twice in the group
  (a resend queued behind its original) is inserted once and counted a duplicate in the
  later payload, exactly as if the payloads had been committed one after the other.
- One bad event never fails the other payloads: if the group's insert raises an error
  an event's values cause (`_event_faults`), the transaction is rolled back and run
  again payload by payload, each under a savepoint; a payload refused again goes event
  by event (each under a savepoint): the refused event is quarantined, the rest stored.
- Quarantine (rejections, conflicts, refused events) is written per payload, under that
  payload's origin, so the per-gateway rate and caps hold as they did per transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import ClassVar, Generic, TypeVar

from collector.model import EventRow, Rejected
from collector.store._rows import one_line, refused_entry
from collector.store.base import IngestResult, Origin, Payload
from collector.text import storable
from edge_agent.contract.envelope import format_time
from edge_agent.contract.logs import get_logger

log = get_logger("collector.store")

#: Expired quarantine entries are deleted at most this often (and at start-up).
EXPIRE_EVERY_S = 600.0
_REASON_MAX = 2000

Cur = TypeVar("Cur")
#: What one payload's events did: (inserted, conflicts, refused by the store).
Part = tuple[list[EventRow], list[Rejected], list[Rejected]]
_Key = tuple[str | None, str | None, int | None]


class GroupCommit(ABC, Generic[Cur]):
    """The ingest half of a store; a backend supplies its transaction, savepoint, batched
    event insert, quarantine writer and expiry."""

    #: Errors an event's values cause: that event is refused, the rest stored. Anything
    #: else (disk full, lock timeout, server gone) fails the whole group, unacked.
    _event_faults: ClassVar[tuple[type[Exception], ...]]
    _expired_at: float

    @abstractmethod
    def _tx(self) -> AbstractContextManager[Cur]:
        """One transaction: committed when the block ends, rolled back when it raises."""

    @abstractmethod
    def _savepoint(self, cur: Cur) -> AbstractContextManager[object]:
        """A savepoint: released when the block ends, rolled back to when it raises."""

    @abstractmethod
    def _insert_events(self, cur: Cur, rows: Sequence[EventRow],
                       now: str) -> tuple[list[EventRow], list[Rejected]]:
        """Insert `rows` (watermarks too); returns those inserted and the conflicts."""

    @abstractmethod
    def _insert_quarantine(self, cur: Cur, origin: Origin, rejected: Sequence[Rejected],
                           now: float) -> tuple[int, int]:
        """Write what the bounds allow; returns (entries written, rejections dropped)."""

    @abstractmethod
    def _expire(self, cur: Cur, now: float) -> int:
        """Delete quarantine entries past the retention; returns how many."""

    @abstractmethod
    def ingest_many(self, items: Sequence[Payload]) -> list[IngestResult]:
        """See the module docstring; a backend may retry `_commit_group` (lock conflicts)."""

    def ingest(self, origin: Origin, accepted: Sequence[EventRow],
               rejected: Sequence[Rejected]) -> IngestResult:
        return self.ingest_many([Payload(origin, accepted, rejected)])[0]

    def quarantine(self, origin: Origin, rejected: Sequence[Rejected]) -> int:
        return self.ingest(origin, (), rejected).quarantined

    def _commit_group(self, items: Sequence[Payload], now: float) -> list[IngestResult]:
        try:
            with self._tx() as cur:
                return self._write(cur, items, now, grouped=True)
        except self._event_faults as exc:
            gateways = sorted({i.origin.gateway or "" for i in items})
            log.warning("batch_refused_by_store", payloads=len(items), gateway=gateways[0],
                        gateways=len(gateways), events=sum(len(i.accepted) for i in items),
                        error=storable(one_line(exc), _REASON_MAX),
                        hint="inserting payload by payload, then event by event; the "
                             "refused events are quarantined")
        with self._tx() as cur:
            return self._write(cur, items, now, grouped=False)

    def _write(self, cur: Cur, items: Sequence[Payload], now: float, *,
               grouped: bool) -> list[IngestResult]:
        stamp = format_time(now)
        if grouped:
            inserted, conflicts = self._insert_events(
                cur, [row for item in items for row in item.accepted], stamp)
            parts = split_back(items, inserted, conflicts)
        else:
            parts = [self._one_payload(cur, item, stamp, alone=len(items) == 1)
                     for item in items]
        results = [self._finish(cur, item, part, now) for item, part in zip(items, parts,
                                                                            strict=True)]
        if now - self._expired_at >= EXPIRE_EVERY_S:
            self._expire(cur, now)
        return results

    def _one_payload(self, cur: Cur, item: Payload, stamp: str, *, alone: bool) -> Part:
        """One payload of a refused group: whole under a savepoint, else event by event
        (`alone`: the group was this payload, already refused whole)."""
        if not alone and item.accepted:
            try:
                with self._savepoint(cur):
                    inserted, conflicts = self._insert_events(cur, item.accepted, stamp)
                return inserted, conflicts, []
            except self._event_faults as exc:
                log.warning("batch_refused_by_store", gateway=item.origin.gateway,
                            events=len(item.accepted),
                            error=storable(one_line(exc), _REASON_MAX),
                            hint="inserting its events one by one; the refused ones are "
                                 "quarantined")
        inserted, conflicts, refused = [], [], []
        for row in item.accepted:
            try:
                with self._savepoint(cur):
                    ins, con = self._insert_events(cur, [row], stamp)
            except self._event_faults as exc:
                refused.append(refused_entry(row, exc))
                continue
            inserted += ins
            conflicts += con
        return inserted, conflicts, refused

    def _finish(self, cur: Cur, item: Payload, part: Part, now: float) -> IngestResult:
        inserted, conflicts, refused = part
        diverted = (*conflicts, *refused)
        kept, dropped = self._insert_quarantine(cur, item.origin, [*item.rejected, *diverted],
                                                now)
        return IngestResult(len(inserted), len(item.accepted) - len(inserted) - len(diverted),
                            kept, dropped, len(conflicts), diverted)


def split_back(items: Sequence[Payload], inserted: Sequence[EventRow],
               conflicts: Sequence[Rejected]) -> list[Part]:
    """The group's inserted rows and conflicts, back per payload: by (id, epoch, seq),
    the first payload in group order that carries a key gets its outcome."""
    new: Counter[_Key] = Counter((r.id, r.epoch, r.seq) for r in inserted)
    conflicting: dict[_Key, deque[Rejected]] = defaultdict(deque)
    for c in conflicts:
        conflicting[(c.event_id, c.epoch, c.seq)].append(c)
    parts: list[Part] = []
    for item in items:
        ins: list[EventRow] = []
        con: list[Rejected] = []
        for row in item.accepted:
            key = (row.id, row.epoch, row.seq)
            if new[key] > 0:
                new[key] -= 1
                ins.append(row)
            elif conflicting.get(key):
                con.append(conflicting[key].popleft())
        parts.append((ins, con, []))
    return parts
