"""How the PostgreSQL store packs an event's keys: the ULID id as a `uuid`, the epoch as
a `bigint`.

Invariants (validation guarantees the inputs: `collector/validate.py`):
- a ULID is 26 Crockford base32 characters encoding 128 bits (the first character is
  0–7); `ulid_uuid` is that 128-bit number as a uuid, so uuid order (bytewise) is ULID
  order and the first 48 bits are the mint time in ms: `ulid_uuid(x)` and `uuid_ulid` are
  inverse for every valid ULID, and `day_bound` gives the uuid a day starts at;
- an epoch is 16 lowercase hex characters (64 bits); `epoch_int` is that number as a
  signed bigint (two's complement), `epoch_text` the inverse — SQL's
  `lpad(to_hex(epoch), 16, '0')` gives the same text.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from uuid import UUID

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {c: i for i, c in enumerate(_CROCKFORD)}
_U64 = 1 << 64


def ulid_uuid(ulid: str) -> UUID:
    value = 0
    for char in ulid:
        value = (value << 5) | _VALUE[char]
    return UUID(int=value)


def uuid_ulid(value: UUID) -> str:
    n = value.int
    return "".join(_CROCKFORD[(n >> shift) & 31] for shift in range(125, -1, -5))


def epoch_int(epoch: str) -> int:
    value = int(epoch, 16)
    return value - _U64 if value >= _U64 >> 1 else value


def epoch_text(value: int) -> str:
    return f"{value % _U64:016x}"


def day_bound(day: date) -> UUID:
    """The smallest uuid of an id minted on `day` (UTC) or later."""
    ms = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    return UUID(int=ms << 80)
