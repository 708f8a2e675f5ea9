"""What the simulator checks of a caller: WS-UsernameToken and HTTP Digest (RFC 7616, MD5).

`check_username_token` accepts PasswordDigest (Base64(SHA-1(nonce + created + password)))
only when `Created` lies within `window_s` of the camera's own clock, which is the real
time plus the simulated skew: exactly what makes an uncorrected client fail against a
camera whose clock is off. Nonces are remembered for the window (no replay).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from datetime import datetime

from lxml import etree

from .soap import Fault

__all__ = ["DigestChallenge", "UsernameTokenChecker"]


def _parse_created(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise Fault("Sender", "ter:NotAuthorized", "malformed Created time") from None


def _child(el: etree._Element, local: str) -> etree._Element | None:
    for c in el.iter():
        if isinstance(c.tag, str) and etree.QName(c).localname == local:
            return c
    return None


class UsernameTokenChecker:
    def __init__(self, window_s: float = 120.0) -> None:
        self.window_s = window_s
        self._seen: dict[str, float] = {}

    def check(self, header: etree._Element | None, users: dict[str, str],
              camera_now: float) -> str:
        """The authenticated user name, or Fault ter:NotAuthorized."""
        token = _child(header, "UsernameToken") if header is not None else None
        if token is None:
            raise Fault("Sender", "ter:NotAuthorized", "Sender not Authorized: no "
                                                       "UsernameToken")
        user_el, pw_el = _child(token, "Username"), _child(token, "Password")
        nonce_el, created_el = _child(token, "Nonce"), _child(token, "Created")
        user = (user_el.text or "").strip() if user_el is not None else ""
        given = (pw_el.text or "").strip() if pw_el is not None else ""
        expected = users.get(user)
        if expected is None or pw_el is None:
            raise Fault("Sender", "ter:NotAuthorized", "Sender not Authorized")
        if "PasswordDigest" not in (pw_el.get("Type") or ""):
            if hmac.compare_digest(given.encode(), expected.encode()):
                return user
            raise Fault("Sender", "ter:NotAuthorized", "Sender not Authorized")
        if nonce_el is None or created_el is None:
            raise Fault("Sender", "ter:NotAuthorized", "PasswordDigest without Nonce/Created")
        created = (created_el.text or "").strip()
        if abs(_parse_created(created) - camera_now) > self.window_s:
            raise Fault("Sender", "ter:NotAuthorized",
                        "Sender not Authorized: Created time outside the allowed window "
                        "(check the clocks)")
        try:
            nonce = base64.b64decode((nonce_el.text or "").strip(), validate=True)
        except (binascii.Error, ValueError):
            raise Fault("Sender", "ter:NotAuthorized", "malformed Nonce") from None
        digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + expected.encode())
                                  .digest()).decode()
        if not hmac.compare_digest(digest.encode(), given.encode()):
            raise Fault("Sender", "ter:NotAuthorized", "Sender not Authorized")
        self._remember(nonce_el.text or "", created)
        return user

    def _remember(self, nonce: str, created: str) -> None:
        now = time.monotonic()
        key = f"{nonce}|{created}"
        if key in self._seen:
            raise Fault("Sender", "ter:NotAuthorized", "replayed Nonce")
        self._seen = {k: t for k, t in self._seen.items() if now - t < 2 * self.window_s}
        self._seen[key] = now


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _parse_digest(header: str) -> dict[str, str]:
    if not header.lower().startswith("digest "):
        return {}
    out: dict[str, str] = {}
    for part in _split(header[7:]):
        key, _, value = part.strip().partition("=")
        out[key.strip().lower()] = value.strip().strip('"')
    return out


def _split(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


class DigestChallenge:
    """HTTP Digest (MD5, qop=auth) for the snapshot and video endpoints."""

    def __init__(self, realm: str = "onvif-sim") -> None:
        self.realm = realm
        self._opaque = os.urandom(8).hex()

    def challenge(self) -> str:
        nonce = base64.b64encode(f"{time.time():.3f}:{os.urandom(8).hex()}".encode()).decode()
        return (f'Digest realm="{self.realm}", qop="auth", algorithm=MD5, nonce="{nonce}", '
                f'opaque="{self._opaque}"')

    def verify(self, header: str, method: str, users: dict[str, str]) -> bool:
        """True for a valid Digest (or Basic, as cameras accept for video) Authorization."""
        if header.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return False
            expected = users.get(user)
            return expected is not None and hmac.compare_digest(password, expected)
        fields = _parse_digest(header)
        user = fields.get("username", "")
        expected = users.get(user)
        if expected is None or fields.get("realm") != self.realm:
            return False
        ha1 = _md5(f"{user}:{self.realm}:{expected}")
        ha2 = _md5(f"{method}:{fields.get('uri', '')}")
        if fields.get("qop"):
            want = _md5(f"{ha1}:{fields.get('nonce', '')}:{fields.get('nc', '')}:"
                        f"{fields.get('cnonce', '')}:{fields.get('qop')}:{ha2}")
        else:
            want = _md5(f"{ha1}:{fields.get('nonce', '')}:{ha2}")
        return hmac.compare_digest(want, fields.get("response", ""))
