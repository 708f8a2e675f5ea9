"""A driver's reason text (English, technical) → a code the page shows in plain words.

The catalogs (`i18n/*.json`, keys `reason.<code>`) hold the plain words; the raw text
stays beside them for the technician. Anything unknown is `other` (raw text shown).
"""

from __future__ import annotations

import re

#: First match wins; patterns are matched case-insensitively against the reason text.
RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (code, re.compile(pattern, re.IGNORECASE)) for code, pattern in (
        ("no_events", r"no onvif events service"),  # a note on an online camera
        ("auth", r"\b401\b|unauthori[sz]ed|not authori[sz]ed|authentication|login failed"),
        # Modbus: every ModbusProtocolError says `garbled reply` or `no valid reply`
        ("corrupt", r"no valid reply|crc|checksum|bad frame|garbage|garbled|malformed|decode"),
        ("device_exception", r"exception \d|exception code|illegal (function|data)|"
                             r"device busy|gateway path"),
        ("timeout", r"timed? ?out|no (answer|response|reply)|did not answer|not answering"
                    r"|failed to respond"),
        ("refused", r"refused"),
        ("unreachable", r"unreachable|no route|host is down|name or service|getaddrinfo"
                        r"|cannot resolve|filtered"),
        ("reset", r"reset by peer|broken pipe|connection (lost|closed|aborted)|disconnected"),
        ("port", r"cannot open|no such file|permission denied|port lost|serial"),
        ("video", r"video|no frames?|stream|rtsp"),
    )
)

#: userinfo in a URL (rtsp://user:pass@host): never shown, even if a driver leaks one.
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")


def scrub(text: str) -> str:
    """`text` with URL credentials removed and its length bounded."""
    return _USERINFO.sub("***@", text)[:300]


def reason_code(reason: str) -> str:
    for code, pattern in RULES:
        if pattern.search(reason):
            return code
    return "other"
