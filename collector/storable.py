"""What no store can hold, found in one decoded event before it reaches a transaction.

JSON allows what the store's columns do not: a lone surrogate (`"\\ud800"`) is valid JSON
but not UTF-8; an integer may be any size, an INTEGER column (SQLite, PostgreSQL
bigint) holds 64 bits; `1e400` parses to infinity, which JSON cannot write back; NUL
cannot be kept in PostgreSQL text. One such value in one event used to fail the whole
batch's transaction. Pure; walks iteratively (no recursion on hostile nesting).

Fast path: in a schema-valid event only `source` and `data` can hold such values, and
`data` is serialised for its row anyway: that text is looked at (encodable, no NUL
escape, no `Infinity`/`NaN`, no run of 19 digits); only an event it flags is walked,
for the precise place.
"""

from __future__ import annotations

import math
import re
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: 2**63 has 19 digits: shorter runs of digits are always in range.
_LONG_DIGITS = re.compile(r"[0-9]{19}")


def _string_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"has a lone surrogate (\\u{ord(text[exc.start]):04x}) at character {exc.start}; "
                "only UTF-8 text can be stored")
    if "\x00" in text:
        return (f"contains NUL (\\u0000) at character {text.index(chr(0))}, "
                "which the store cannot keep")
    return None


def _value_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return _string_problem(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        digits = str(value)
        shown = digits if len(digits) <= 30 else f"{digits[:12]}…({len(digits)} digits)"
        return f"integer {shown} does not fit in 64 bits"
    if isinstance(value, float) and not math.isfinite(value):
        return f"number is out of range ({value}); JSON has no Infinity or NaN"
    return None


def unstorable(event: dict[str, Any], data_text: str | None = None) -> str | None:
    """`where: what` for the first value of `event` no store can hold, or None.

    `data_text`: `event["data"]` as compact JSON (`ensure_ascii=False`), when the caller
    has it; then `event` must be schema-valid (only `source` and `data` are looked at).
    """
    if data_text is None:
        return _walk(event)
    source = event.get("source")
    if (isinstance(source, str) and not source.isascii()) or _flagged(data_text):
        return _walk(event)
    return None


def _flagged(text: str) -> bool:
    """Whether the JSON text may hold an unstorable value (false alarms are walked)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return ("\\u0000" in text or "Infinity" in text or "NaN" in text
            or _LONG_DIGITS.search(text) is not None)


def _walk(event: dict[str, Any]) -> str | None:
    stack: list[tuple[str, Any]] = [("", event)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in reversed(value.items()):
                name = f"{path}.{key}" if path else str(key)
                problem = _string_problem(key)
                if problem is not None:
                    return f"{path or 'event'}: a key {problem}"
                stack.append((name, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
        else:
            problem = _value_problem(value)
            if problem is not None:
                return f"{path}: {problem}"
    return None
