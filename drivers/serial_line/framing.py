"""Pure framing: bytes -> lines -> checked payload -> matched frame -> typed values.

Nothing here does I/O or keeps time, so every step is tested with plain data
(tests/test_serial_line_framing.py). The input is untrusted: a line is never longer
than `max_line_bytes` when a regex sees it (Python's `re` has no timeout, so the
length cap is what bounds the work a bad pattern can do), undecodable bytes are
replaced or rejected, and every failure is a `FrameError` with a short reason code
(`Reason`) and a message that never holds more of the line than a short prefix.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "BOOL_FALSE",
    "BOOL_TRUE",
    "ChecksumKind",
    "CompiledChecksum",
    "CompiledFrame",
    "CompiledValue",
    "FrameError",
    "LineSplitter",
    "Matched",
    "Overlong",
    "Reason",
    "ValueType",
    "checksum_of",
    "convert",
    "decode",
    "match_frame",
    "nested_repeat",
    "preview",
    "unescape",
    "verify_checksum",
]


class Reason(StrEnum):
    """Why a line was rejected (counter keys and log values)."""

    TOO_LONG = "too_long"
    UNDECODABLE = "undecodable"
    CHECKSUM_MISSING = "checksum_missing"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    NO_MATCH = "no_match"
    BAD_VALUE = "bad_value"


class FrameError(ValueError):
    """A line that is not a valid frame.

    `reason` is the counter key; the message never holds line content, `sample` does
    (the part of the line at fault), so a log can show it cut short or not at all.
    """

    def __init__(self, reason: Reason, message: str, sample: bytes | str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.sample = sample


# --------------------------------------------------------------------------- escapes

_SIMPLE_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", "0": "\0", "\\": "\\",
                   "a": "\a", "b": "\b", "f": "\f", "v": "\v", "e": "\x1b"}


def unescape(text: str) -> str:
    r"""Resolve `\r \n \t \0 \\ \xHH` (and `\a \b \f \v \e`) in a delimiter.

    YAML double quotes resolve escapes already ("\r\n"); this makes single-quoted or
    plain `\r\n` mean the same. Any other backslash sequence is a ValueError.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(text):
            raise ValueError("a lone `\\` at the end; write `\\\\` for a backslash")
        nxt = text[i + 1]
        if nxt in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nxt])
            i += 2
        elif nxt == "x":
            digits = text[i + 2:i + 4]
            if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError(f"`\\x` needs two hex digits, e.g. \\x03; got `\\x{digits}`")
            out.append(chr(int(digits, 16)))
            i += 4
        else:
            raise ValueError(f"unknown escape `\\{nxt}`; use \\r \\n \\t \\0 \\\\ or \\xHH")
    return "".join(out)


# --------------------------------------------------------------------------- splitting


@dataclass(frozen=True, slots=True)
class Overlong:
    """A line longer than the cap: dropped whole; `head` keeps its first bytes for logs."""

    head: bytes
    length: int  # bytes seen before the delimiter (or before the cap gave up counting)


class LineSplitter:
    """Split a byte stream on `delimiter`, however the chunks fall.

    Memory is bounded: at most `max_line_bytes + len(delimiter)` bytes are buffered.
    A line that outgrows the cap is discarded up to the next delimiter and reported
    once as an `Overlong` item, in stream order with the good lines.
    """

    HEAD_BYTES = 32

    def __init__(self, delimiter: bytes, max_line_bytes: int) -> None:
        if not delimiter:
            raise ValueError("the delimiter is empty")
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self.delimiter = delimiter
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no delimiter start
        self._dropping: bytearray | None = None  # head of an overlong line being skipped
        self._dropped = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished line (for tests and stats)."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget any partial line (after the port was reopened)."""
        self._buf.clear()
        self._scanned = 0
        self._dropping = None
        self._dropped = 0

    def feed(self, chunk: bytes) -> list[bytes | Overlong]:
        """Lines completed by `chunk`, without their delimiter, and overlong markers."""
        out: list[bytes | Overlong] = []
        self._buf += chunk
        dlen = len(self.delimiter)
        while True:
            at = self._buf.find(self.delimiter, self._scanned)
            if at < 0:
                break
            line = bytes(self._buf[:at])
            del self._buf[: at + dlen]
            self._scanned = 0
            if self._dropping is not None:
                out.append(Overlong(bytes(self._dropping), self._dropped + len(line)))
                self._dropping, self._dropped = None, 0
            elif len(line) > self.max_line_bytes:
                out.append(Overlong(line[: self.HEAD_BYTES], len(line)))
            else:
                out.append(line)
        # No delimiter in the buffer: a delimiter may still straddle the next chunk.
        self._scanned = max(0, len(self._buf) - (dlen - 1))
        if self._dropping is None and self._scanned > self.max_line_bytes:
            self._dropping = bytearray(self._buf[: self.HEAD_BYTES])
            self._dropped = 0
        if self._dropping is not None and self._scanned:
            self._dropped += self._scanned  # keep only a possible delimiter prefix
            del self._buf[: self._scanned]
            self._scanned = 0
        return out


# --------------------------------------------------------------------------- checksums


class ChecksumKind(StrEnum):
    XOR8 = "xor8"  # XOR of the bytes (NMEA 0183)
    SUM8 = "sum8"  # sum of the bytes modulo 256
    CRC16_MODBUS = "crc16_modbus"  # CRC-16/MODBUS: poly 0xA001 (reflected 0x8005), init 0xFFFF

    @property
    def hex_digits(self) -> int:
        return 4 if self is ChecksumKind.CRC16_MODBUS else 2


def _crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def checksum_of(kind: ChecksumKind, data: bytes) -> int:
    if kind is ChecksumKind.XOR8:
        value = 0
        for byte in data:
            value ^= byte
        return value
    if kind is ChecksumKind.SUM8:
        return sum(data) & 0xFF
    return _crc16_modbus(data)


@dataclass(frozen=True)
class CompiledChecksum:
    """Where the checksum sits and what it covers.

    `pattern` is searched in the raw line; its `checksum` group holds the value in
    hex. The checksum covers the bytes from `skip_leading` up to where the match
    starts, and the frame regexes see only the text before the match.
    """

    kind: ChecksumKind
    pattern: re.Pattern[bytes]
    skip_leading: int = 0
    little_endian: bool = False  # crc16 only: the two bytes written low byte first


def verify_checksum(line: bytes, spec: CompiledChecksum) -> bytes:
    """The payload (the line before the checksum) if the checksum is right."""
    found = spec.pattern.search(line)
    if found is None:
        raise FrameError(Reason.CHECKSUM_MISSING, "no checksum where the pattern expects one")
    text = found.group("checksum")
    try:
        given = int(text, 16)
    except ValueError:  # the pattern allowed something that is not hex
        raise FrameError(Reason.CHECKSUM_MISSING, "the checksum is not hexadecimal",
                         text) from None
    covered = line[spec.skip_leading:found.start()]
    value = checksum_of(spec.kind, covered)
    if spec.little_endian:
        value = ((value & 0xFF) << 8) | (value >> 8)
    if given != value:
        width = spec.kind.hex_digits
        raise FrameError(Reason.CHECKSUM_MISMATCH,
                         f"{spec.kind.value} checksum {given:0{width}X} does not match "
                         f"the computed {value:0{width}X}")
    return line[:found.start()]


# --------------------------------------------------------------------------- text


def decode(payload: bytes, encoding: str, errors: str, *, strip: bool) -> str:
    """Bytes -> text; with errors="strict" undecodable bytes reject the line."""
    if strip:
        payload = payload.strip()
    try:
        return payload.decode(encoding, errors)
    except UnicodeDecodeError as exc:
        raise FrameError(Reason.UNDECODABLE, f"byte {exc.start} is not valid {encoding}",
                         payload) from None


def preview(raw: bytes | str, limit: int = 24) -> str:
    """A log-safe prefix in quotes: at most `limit` characters, control bytes escaped.

    Bytes show as ASCII with `\\xNN` for anything else; text keeps printable
    characters (a GBK panel's Chinese stays readable). `limit` 0 hides the content.
    """
    if limit <= 0:
        return f"<{len(raw)} {'bytes' if isinstance(raw, bytes) else 'characters'} hidden>"
    head = raw[:limit]
    if isinstance(head, bytes):
        shown = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in head)
    else:
        shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100
                        else f"\\u{ord(c):04x}" for c in head)
    more = len(raw) - len(head)
    return f"'{shown}'" + (f"…(+{more})" if more > 0 else "")


# --------------------------------------------------------------------------- values


class ValueType(StrEnum):
    INT = "int"
    FLOAT = "float"
    STR = "str"
    BOOL = "bool"


BOOL_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
BOOL_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})

_INT = re.compile(r"[+-]?[0-9]{1,30}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,3})?")


def convert(text: str, type_: ValueType, mapping: Mapping[str, Any] | None = None,
            scale: float = 1.0, offset: float = 0.0) -> Any:
    """One group's text -> a typed point value, or FrameError(BAD_VALUE).

    With a `mapping`, the text must be one of its keys and the mapped value is used
    as is (it was checked against the type when the config was validated).
    """
    if mapping is not None:
        if text not in mapping:
            raise FrameError(Reason.BAD_VALUE, "is not in the map", text)
        return mapping[text]
    value = text.strip()
    if type_ is ValueType.STR:
        return text
    if type_ is ValueType.INT:
        if not _INT.fullmatch(value):
            raise FrameError(Reason.BAD_VALUE, "is not a whole number", text)
        return int(value)
    if type_ is ValueType.FLOAT:
        if not _FLOAT.fullmatch(value):
            raise FrameError(Reason.BAD_VALUE, "is not a number", text)
        number = float(value) * scale + offset
        if not math.isfinite(number):
            raise FrameError(Reason.BAD_VALUE, "is out of range", text)
        return number
    lowered = value.lower()
    if lowered in BOOL_TRUE:
        return True
    if lowered in BOOL_FALSE:
        return False
    raise FrameError(Reason.BAD_VALUE, "is not true/false (1/0, on/off, yes/no); add a `map`",
                     text)


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class CompiledValue:
    group: str
    point: str
    type: ValueType
    mapping: Mapping[str, Any] | None = None
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class CompiledFrame:
    index: int
    name: str
    regex: re.Pattern[str]
    values: tuple[CompiledValue, ...] = ()


@dataclass(frozen=True)
class Matched:
    frame: CompiledFrame
    groups: dict[str, str | None]
    values: dict[str, Any] = field(default_factory=dict)


def match_frame(text: str, frames: Sequence[CompiledFrame]) -> Matched:
    """The first frame whose regex matches the whole text, with its converted values.

    A group that did not take part in the match leaves its point out. A value that
    does not convert rejects the whole frame (nothing of it is used).
    """
    for frame in frames:
        found = frame.regex.fullmatch(text)
        if found is None:
            continue
        groups = found.groupdict()
        values: dict[str, Any] = {}
        for spec in frame.values:
            raw = groups.get(spec.group)
            if raw is None:
                continue
            try:
                values[spec.point] = convert(raw, spec.type, spec.mapping, spec.scale, spec.offset)
            except FrameError as exc:
                raise FrameError(Reason.BAD_VALUE,
                                 f"frame `{frame.name}` group `{spec.group}` {exc}",
                                 exc.sample) from None
        return Matched(frame, groups, values)
    raise FrameError(Reason.NO_MATCH, "the line matches no frame", text)


# --------------------------------------------------------------------------- regex lint


def nested_repeat(pattern: str) -> str | None:
    """The textbook catastrophic form `(x+)+` / `(?:x*)*` in `pattern`, or None.

    Python's `re` has no timeout and holds the interpreter while it backtracks, so a
    pattern that backtracks exponentially on a bad line would stall the whole agent.
    A repeated group whose only content is itself repeated means the same as the inner
    repeat alone and is exponential on a near miss, so it is refused at config time.
    (Other slow forms, e.g. overlapping alternatives, are bounded only by the line cap.)
    """
    parser: Any = importlib.import_module("re._parser")
    repeats = {parser.MAX_REPEAT, parser.MIN_REPEAT}

    def unwrap(items: Any) -> Any:
        while len(items) == 1 and items[0][0] is parser.SUBPATTERN:
            items = items[0][1][3]
        return items

    def walk(items: Any) -> str | None:
        for op, av in items:
            if op in repeats:
                _, high, sub = av
                inner = unwrap(sub)
                if high > 1 and len(inner) == 1 and inner[0][0] in repeats \
                        and inner[0][1][1] > 1:
                    return "a repeated group holds only a repeat, like (x+)+"
                found = walk(sub)
            elif op is parser.SUBPATTERN:
                found = walk(av[3])
            elif op is parser.BRANCH:
                found = next((f for alt in av[1] if (f := walk(alt))), None)
            elif op in (parser.ASSERT, parser.ASSERT_NOT):
                found = walk(av[1])
            else:  # literals, sets, atomic groups and possessive repeats (no backtracking)
                found = None
            if found:
                return found
        return None

    try:
        return walk(parser.parse(pattern))
    except Exception:  # an internal module that changed shape: no lint rather than no agent
        return None
