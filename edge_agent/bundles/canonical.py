"""Canonical JSON (what signatures cover) and a defensive JSON reader.

Canonical form: sorted keys, no whitespace, UTF-8 (not ASCII-escaped). The reader refuses
duplicate keys, NaN/Infinity, numbers too large for a float (`1e400`), strings holding a
lone surrogate (`"\\ud800"`: not UTF-8, so no canonical form), documents over a size cap and
nesting deeper than a cap.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 16


class JsonRefused(ValueError):
    pass


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonRefused(f"duplicate key {key!r}")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonRefused(f"the number {text[:40]} is out of range")
    return value


def _utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonRefused(f"a string holds a lone surrogate: {text[:40]!a}") from None


def _depth(obj: Any, level: int = 0) -> int:
    """The nesting depth of `obj`; refuses too deep and strings that are not UTF-8."""
    if level > MAX_DEPTH:
        raise JsonRefused(f"nested deeper than {MAX_DEPTH}")
    if isinstance(obj, str):
        _utf8(obj)
    if isinstance(obj, dict):
        for key in obj:
            _utf8(key)
        return max((_depth(v, level + 1) for v in obj.values()), default=level)
    if isinstance(obj, list):
        return max((_depth(v, level + 1) for v in obj), default=level)
    return level


def strict_loads(data: bytes, max_bytes: int) -> Any:
    """Parse `data` (UTF-8 JSON) or raise JsonRefused with a reason."""
    if len(data) > max_bytes:
        raise JsonRefused(f"{len(data)} bytes, over the {max_bytes} byte limit")
    if data.count(b"[") + data.count(b"{") > 10_000:
        raise JsonRefused("too many containers")
    try:
        text = data.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_constant,
                         parse_float=_float)
    except JsonRefused:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JsonRefused(f"not valid JSON: {str(exc)[:200]}") from None
    _depth(obj)
    return obj
