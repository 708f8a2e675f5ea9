"""What a plain YAML scalar means, and what it would have
meant in YAML 1.1.

Only the YAML 1.2 core schema is resolved (`true`/`false`, decimal, `0o`, `0x`, floats
with a dot or exponent, `null`); everything else stays text. The YAML 1.1 readings that
1.2 drops (`no`/`on` booleans, base-60 `1:30`, leading-zero octal `0755`) are the traps:
they are named so that a field rejecting the text can say why.
"""

from __future__ import annotations

import re
from typing import Any

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|false)$", re.IGNORECASE)
_INT10 = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_INT8 = re.compile(r"^0o[0-7]+$")
_INT16 = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(
    r"^[-+]?(?:(?:0|[1-9][0-9]*)\.[0-9]*(?:[eE][-+]?[0-9]+)?"
    r"|\.[0-9]+(?:[eE][-+]?[0-9]+)?|(?:0|[1-9][0-9]*)[eE][-+]?[0-9]+)$"
)
_TRAPS = (
    ("bool", re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$")),
    ("sexagesimal", re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")),
    ("octal", re.compile(r"^[-+]?0[0-9_]+$")),
)


def resolve_plain(text: str) -> Any:
    """YAML 1.2 core schema resolution of an untagged plain scalar."""
    if _NULL.match(text):
        return None
    if _BOOL.match(text):
        return text.lower() == "true"
    if _INT10.match(text):
        return int(text)
    if _INT8.match(text):
        return int(text[2:], 8)
    if _INT16.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    return text


def trap_of(text: str) -> str | None:
    """The YAML 1.1 reading a plain scalar that YAML 1.2 leaves as text would have had:
    `bool` (`no`, `on`), `sexagesimal` (`1:30`) or `octal` (`0755`); None for none."""
    for name, pattern in _TRAPS:
        if pattern.match(text):
            return name
    return None


def is_number(text: str) -> bool:
    """`text` is a decimal integer or a float in the YAML 1.2 core schema."""
    return bool(_INT10.match(text) or _FLOAT.match(text))
