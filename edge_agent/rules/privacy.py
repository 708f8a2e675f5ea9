"""Credential hashing: `gate.access` carries a salted hash, never the raw credential.

`hash_credential(value, salt)` is `"sha256:" + hex(sha256(salt + normalized))`, where
`normalized` is the UTF-8 text of the credential written one canonical way, so that the
same card read as the integer 1234 from a register or as the text " 1234 " from a serial
line hashes the same (see `normalize_credential`).

Where the salt comes from: it is a per-gateway secret. It will be a gateway config key
(read like every other secret, through `SecretRef`, never written inline) that the agent
hands to each driver, which passes it to `edge_agent.rules.engine.DeviceRules(salt=...)`. Until
that key exists the default is `b""` (an unsalted hash: still never the raw credential,
but a short card number could be found by trying them all, so set the salt in production).

Nothing in this module logs, and its errors never contain the credential.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata

__all__ = ["HASH_PREFIX", "hash_credential", "normalize_credential"]

HASH_PREFIX = "sha256:"


def normalize_credential(value: object) -> str:
    """The one text form of a credential that is hashed.

    - text: Unicode NFC, surrounding whitespace removed; case is kept (QR and PIN
      payloads can be case-sensitive);
    - an integer (or a float with no fraction, as some decoders give): its decimal digits;
    - bytes: lower-case hex.

    Raises ValueError (without the value) for an empty credential, a bool, None or any
    other type: such a reading is a device or profile fault, not a credential.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError("a credential must be text, an integer or bytes")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("a numeric credential must be a whole number")
        text = str(int(value))
    elif isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).hex()
    elif isinstance(value, str):
        text = unicodedata.normalize("NFC", value).strip()
    else:
        kind = type(value).__name__
        raise ValueError(f"a credential must be text, an integer or bytes, not {kind}")
    if not text:
        raise ValueError("the credential is empty")
    return text


def hash_credential(value: object, salt: bytes = b"") -> str:
    """`sha256:<64 hex>` of `salt + normalize_credential(value)`; the raw value never leaves."""
    digest = hashlib.sha256(salt + normalize_credential(value).encode("utf-8")).hexdigest()
    return HASH_PREFIX + digest
