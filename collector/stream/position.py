"""A reader's place in one store, in the store's commit order.

- SQLite: the `events` table's rowid. The store takes the write lock before inserting
  (`BEGIN IMMEDIATE`), so transactions run one after the other and a new row's rowid
  (the largest so far + 1) is larger than every row committed before it: rowid order is
  commit order. Rows are never deleted from SQLite's `events`, so no rowid is reused.
- PostgreSQL: `(tx, id)` of `event_rows`: `tx` the inserting transaction's id, `id` the
  uuid. Transactions commit out of `tx` order, so a reader only reads rows whose `tx` is
  below the oldest transaction still open (docs/stream-api.md says why that cannot skip).

`b` is only used by PostgreSQL (the uuid's 128 bits); SQLite keeps it 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from uuid import UUID

StoreKind = Literal["sqlite", "postgresql"]
KINDS: tuple[StoreKind, ...] = ("sqlite", "postgresql")


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """`(a, b)` ordered as the store's read order; `Position.start(kind)` is before all."""

    kind: StoreKind
    a: int
    b: int = 0

    @classmethod
    def start(cls, kind: StoreKind) -> Position:
        return cls(kind, 0, 0)

    @property
    def uuid(self) -> UUID:
        return UUID(int=self.b)
