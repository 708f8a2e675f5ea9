"""The Standard Webhooks signature (https://www.standardwebhooks.com/), pure.

Secret: `whsec_` + base64 of 32 random bytes; the HMAC key is those bytes. Signed
content: `{Webhook-Id}.{Webhook-Timestamp}.{body}` (timestamp in Unix seconds, body the
exact bytes sent). Header: `Webhook-Signature: v1,<base64 HMAC-SHA256>`; several
space-separated signatures may appear (a receiver accepts any that verifies), which is
what a rotation would use. docs/webhooks.md has a receiver's 10-line check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
#: A receiver refuses timestamps further than this from its clock (replay protection).
TOLERANCE_S = 300


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def key_of(secret: str) -> bytes:
    """The HMAC key of a secret; ValueError when it is not one `new_secret` makes."""
    if not secret.startswith(PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    try:
        return base64.b64decode(secret[len(PREFIX):], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ + base64") from None


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key_of(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(secret: str, msg_id: str, timestamp: str, body: bytes, header: str,
           now: float, tolerance_s: float = TOLERANCE_S) -> bool:
    """True when one of the header's signatures is ours and the timestamp is recent."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance_s:
        return False
    expected = signature(secret, msg_id, ts, body)
    return any(hmac.compare_digest(expected, sig) for sig in header.split())
