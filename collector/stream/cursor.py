"""The opaque cursor: base64url of (store kind, position) with an HMAC-SHA256 tag.

The tag makes a cursor one this server issued: a consumer cannot point its reads at a
position it made up (which could never widen its scope, since scope is applied on every
read, but could make the server scan from anywhere). The key lives in a file or an
environment variable (`api.cursor_key`), so cursors survive collector restarts; rotating
the key invalidates every cursor (consumers start again from `since`).

Layout (25 bytes before the tag): version (1), kind (1), a (8, signed), b (16) — then
the first 16 bytes of HMAC-SHA256(key, those bytes). Encoded without `=` padding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

from collector.stream.position import KINDS, Position, StoreKind

_VERSION = 1
_BODY = struct.Struct(">BBq16s")
_TAG = 16
#: Longest text that could be a cursor; anything longer is refused before decoding.
MAX_CURSOR_CHARS = 64


class CursorError(ValueError):
    """Not a cursor this server issued (malformed, tampered, another key or store)."""


class CursorCodec:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the cursor key must be at least 16 bytes")
        self._key = key
        #: the text of recent positions: every stream at the tail sends the same ones
        self._recent: dict[Position, str] = {}

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_TAG]

    def encode(self, pos: Position) -> str:
        text = self._recent.get(pos)
        if text is None:
            text = self._encode(pos)
            if len(self._recent) >= 20_000:
                self._recent.clear()
            self._recent[pos] = text
        return text

    def _encode(self, pos: Position) -> str:
        body = _BODY.pack(_VERSION, KINDS.index(pos.kind), pos.a, pos.b.to_bytes(16, "big"))
        return base64.urlsafe_b64encode(body + self._tag(body)).rstrip(b"=").decode()

    def decode(self, text: str, kind: StoreKind) -> Position:
        """The position `text` carries; CursorError unless this server issued it for a
        store of `kind`."""
        if not text or len(text) > MAX_CURSOR_CHARS:
            raise CursorError("cursor is not one this server issued")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise CursorError("cursor is not one this server issued") from None
        body, tag = raw[:_BODY.size], raw[_BODY.size:]
        if len(raw) != _BODY.size + _TAG or not hmac.compare_digest(tag, self._tag(body)):
            raise CursorError("cursor is not one this server issued")
        version, kind_index, a, b = _BODY.unpack(body)
        if version != _VERSION or kind_index >= len(KINDS) or KINDS[kind_index] != kind:
            raise CursorError("cursor is not one this server issued")
        return Position(kind, a, int.from_bytes(b, "big"))
