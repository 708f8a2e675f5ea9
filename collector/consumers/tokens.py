"""Bearer tokens, consumer names and expiries: pure functions.

A token is `cdt_` + `secrets.token_urlsafe(32)` (256 random bits): recognisable in a
config file or a secret scanner, shown once, stored only as its SHA-256. A fast hash is
enough here, unlike for passwords: bcrypt/argon2 slow down guessing a LOW-entropy secret
from a stolen hash, but 2^256 candidates cannot be enumerated at any hashing speed, and a
fast hash keeps `authenticate` to one indexed lookup (no per-request 100 ms KDF, no salt
that would defeat the lookup by hash).

Each token also has a short public id (`tok_` + 8 hex, random, unrelated to the secret)
used to name it in `list`/`revoke`, and a `hint`: the first 4 characters of its secret
(24 of 256 bits) so a holder can tell which of their tokens is which.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from datetime import UTC, datetime, timedelta

from collector.consumers.errors import ConsumerError

PREFIX = "cdt_"
#: token_urlsafe(32) is 43 characters of [A-Za-z0-9_-].
_TOKEN = re.compile(r"^cdt_[A-Za-z0-9_-]{43}$")
_DURATION = re.compile(r"^([1-9][0-9]{0,5})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
NAME_MAX = 64
HINT_LEN = 4


def mint() -> str:
    """A new token (the only time it exists in clear)."""
    return PREFIX + secrets.token_urlsafe(32)


def token_id() -> str:
    return "tok_" + secrets.token_hex(4)


def digest(token: str) -> str:
    """What is stored and looked up: hex SHA-256 of the whole token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def hint(token: str) -> str:
    return token[len(PREFIX):len(PREFIX) + HINT_LEN]


def well_formed(token: str) -> bool:
    """A cheap check before any lookup: garbage never reaches the store."""
    return bool(_TOKEN.match(token))


def parse_name(name: str) -> str:
    """A consumer name: any script (`消防-河东`), NFC-normalised, 1..64 characters of
    letters, marks, digits, punctuation and inner spaces; no control/format characters
    (they would hide in logs and terminals)."""
    name = unicodedata.normalize("NFC", name)
    if not name or len(name) > NAME_MAX:
        raise ConsumerError(f"name {name!r}: 1 to {NAME_MAX} characters (hint: e.g. 消防-河东)")
    if name != name.strip():
        raise ConsumerError(f"name {name!r}: no leading or trailing spaces")
    for ch in name:
        cat = unicodedata.category(ch)
        if not (cat[0] in "LMNP" or ch == " " or cat == "Sm" or cat == "Sc"):
            raise ConsumerError(f"name {name!r}: character U+{ord(ch):04X} ({cat}) is not "
                                "allowed (hint: letters, digits, punctuation such as - _ . "
                                "and inner spaces)")
    return name


def parse_expiry(value: str | None, now: datetime | None = None) -> datetime | None:
    """`90d`, `12h`, `30m`, `2w` from now, an ISO date/time (UTC if no zone), or None/
    `never`. A time already past is refused."""
    if value is None or value.strip().lower() in ("", "never"):
        return None
    now = now or datetime.now(UTC)
    text = value.strip()
    m = _DURATION.match(text)
    if m:
        return now + timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConsumerError(f"expiry {value!r}: expected a duration (90d, 12h, 30m, 2w), a "
                            "date (2027-06-30), a UTC time (2027-06-30T12:00Z) or never") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    if at <= now:
        raise ConsumerError(f"expiry {value!r} is already past (hint: a later date, or 90d)")
    return at
