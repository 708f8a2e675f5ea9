"""Untrusted text made safe to keep and to show: clipped, and with control characters escaped.

Payloads, event ids and the reasons built from them reach the store and the terminal of
whoever runs `edge-collector quarantine`. `visible` escapes every control, format
(bidi overrides included), separator and surrogate character, so a payload can neither
drive the terminal nor break the tab-separated columns; `storable` also keeps lone
surrogates out of UTF-8 text columns.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories shown as escapes: controls, format (bidi), surrogates, line/para seps.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: str) -> str:
    """`text` with every invisible or terminal-driving character as a `\\xNN`/`\\uNNNN` escape."""
    if text.isprintable():
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _HIDDEN else ch for ch in text)


def clip(text: str, limit: int) -> str:
    """At most `limit` characters; a clipped text ends with `…`."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def storable(text: str, limit: int) -> str:
    """Clipped and visible: safe for a UTF-8 text column and for a terminal."""
    return visible(clip(text, limit))
