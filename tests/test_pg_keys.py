"""The PostgreSQL store's packed keys: ULID <-> uuid and epoch <-> bigint, in Python and in
the SQL functions of migration 0002 (the `events` view's id), for every edge case."""

from __future__ import annotations

import random
import re
from datetime import date
from uuid import UUID

import psycopg
import pytest

from collector.store import migrate_store
from collector.store.pg_keys import day_bound, epoch_int, epoch_text, ulid_uuid, uuid_ulid
from edge_agent.contract.envelope import new_ulid
from tests.peers import Postgres

_RNG = random.Random(7)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: What validation accepts as an id (collector/validate.py), the first character 0-7.
_ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
#: Minted now: named by their place, not their value (the two xdist workers each collect the
#: tests and must find the same names).
FRESH = [new_ulid() for _ in range(5)]
ULIDS = [
    "00000000000000000000000000",  # 0
    "00000000000000000000000001",
    "0000000000000000000000000Z",  # the last 5 bits all set
    "7ZZZZZZZZZZZZZZZZZZZZZZZZZ",  # 2^128 - 1, the largest valid ULID
    "7ZZZZZZZZZ0000000000000000",  # the largest time, random part 0
    "0000000000ZZZZZZZZZZZZZZZZ",  # time 0, random part all ones
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",  # the spec's example
    "7ZZZZZZZZZZZZZZZZZZZZZZZZY",
    "10000000000000000000000000",  # 2^125: the top character's lowest bit
    *(_RNG.choice("01234567") + "".join(_RNG.choice(_CROCKFORD) for _ in range(25))
      for _ in range(20)),
    *FRESH,
]
VALID = [u for u in ULIDS if _ULID_RE.match(u)]
EPOCHS = ["0000000000000000", "0000000000000001", "7fffffffffffffff", "8000000000000000",
          "ffffffffffffffff", "0123456789abcdef", "fedcba9876543210"]


@pytest.mark.parametrize("ulid", VALID,
                         ids=lambda u: f"fresh{FRESH.index(u)}" if u in FRESH else u)
def test_ulid_round_trips_through_uuid_in_order(ulid: str) -> None:
    assert uuid_ulid(ulid_uuid(ulid)) == ulid


def test_uuid_order_is_ulid_order_and_the_first_48_bits_are_the_time() -> None:
    assert sorted(VALID, key=ulid_uuid) == sorted(VALID)
    assert [str(u) for u in sorted(map(ulid_uuid, VALID))] == sorted(str(ulid_uuid(u))
                                                                   for u in VALID)
    assert ulid_uuid("7ZZZZZZZZZZZZZZZZZZZZZZZZZ") == UUID(int=(1 << 128) - 1)
    assert ulid_uuid("00000000000000000000000000") == UUID(int=0)
    mint = type(new_ulid)()  # a factory of its own: the shared one is monotonic across tests
    for ms in (0, 1_764_892_800_123, (1 << 48) - 1):
        assert ulid_uuid(mint(ms)).int >> 80 == ms


def test_day_bounds() -> None:
    assert day_bound(date(1970, 1, 1)) == UUID(int=0)
    assert day_bound(date(2025, 12, 5)).int >> 80 == 1_764_892_800_000


@pytest.mark.parametrize("epoch", EPOCHS)
def test_epoch_round_trips_through_a_signed_bigint(epoch: str) -> None:
    value = epoch_int(epoch)
    assert -(1 << 63) <= value < 1 << 63
    assert epoch_text(value) == epoch


def test_sql_functions_agree_with_python(postgres: Postgres) -> None:
    url = postgres.new_database()
    migrate_store(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for ulid in VALID:
            row = conn.execute("SELECT ulid_uuid(%s), ulid_text(%s), ulid_text(ulid_uuid(%s))",
                               (ulid, ulid_uuid(ulid), ulid)).fetchone()
            assert row == (ulid_uuid(ulid), ulid, ulid), ulid
        for epoch in EPOCHS:
            row = conn.execute("SELECT lpad(to_hex(%s::bigint), 16, '0'), "
                               "('x' || %s)::bit(64)::bigint",
                               (epoch_int(epoch), epoch)).fetchone()
            assert row == (epoch, epoch_int(epoch)), epoch
