"""serial_line framing: pure functions over bytes and text, no port, no clock."""

from __future__ import annotations

import re

import pytest

from drivers.serial_line.framing import (
    ChecksumKind,
    CompiledChecksum,
    CompiledFrame,
    CompiledValue,
    FrameError,
    LineSplitter,
    Overlong,
    Reason,
    ValueType,
    checksum_of,
    convert,
    decode,
    match_frame,
    nested_repeat,
    preview,
    unescape,
    verify_checksum,
)

# --------------------------------------------------------------------------- escapes


@pytest.mark.parametrize(("text", "expected"), [
    ("\r\n", "\r\n"),  # YAML double quotes already resolved it
    (r"\r\n", "\r\n"),
    (r"\n", "\n"),
    (r"\x03", "\x03"),
    (r"\x0D\x0a", "\r\n"),
    (r"\t|", "\t|"),
    (r"\\", "\\"),
    (r"\0", "\0"),
    ("END", "END"),
])
def test_unescape(text: str, expected: str) -> None:
    assert unescape(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    (r"\q", "unknown escape `\\q`"),
    (r"\x3", "needs two hex digits"),
    (r"\xZZ", "needs two hex digits"),
    ("\\", "lone `\\`"),
])
def test_unescape_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        unescape(text)


# --------------------------------------------------------------------------- splitting


def _split(delimiter: bytes, chunks: list[bytes], max_line: int = 64) -> list[bytes | Overlong]:
    splitter = LineSplitter(delimiter, max_line)
    out: list[bytes | Overlong] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
        assert splitter.buffered <= max_line + len(delimiter)
    return out


@pytest.mark.parametrize(("delimiter", "chunks", "expected"), [
    (b"\r\n", [b"A\r\nB\r\n"], [b"A", b"B"]),
    (b"\r\n", [b"A\r", b"\nB\r\n"], [b"A", b"B"]),  # delimiter split across chunks
    (b"\r\n", [b"A", b"\r", b"\n", b"B", b"\r\n"], [b"A", b"B"]),
    (b"\r\n", [b"A\rB\r\n"], [b"A\rB"]),  # a lone CR is not the end of a line
    (b"\n", [b"A\r\nB\n"], [b"A\r", b"B"]),  # the caller strips the CR
    (b"\x03", [b"\x02ZONE 1\x03\x02ZONE 2\x03"], [b"\x02ZONE 1", b"\x02ZONE 2"]),
    (b"END", [b"aEN", b"DbE", b"ND"], [b"a", b"b"]),
    (b"\r\n", [b"\r\n\r\n"], [b"", b""]),  # blank lines are lines (the driver skips them)
    (b"\r\n", [b"no end yet"], []),
])
def test_split(delimiter: bytes, chunks: list[bytes], expected: list[bytes]) -> None:
    assert _split(delimiter, chunks) == expected


def test_split_every_chunking_gives_the_same_lines() -> None:
    stream = b"FIRE ZONE 03 ALARM\r\nFIRE ZONE 03 NORMAL\r\n\r\nX\r\n"
    whole = _split(b"\r\n", [stream])
    for size in range(1, 8):
        chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
        assert _split(b"\r\n", chunks) == whole
    assert whole == [b"FIRE ZONE 03 ALARM", b"FIRE ZONE 03 NORMAL", b"", b"X"]


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 1000])
def test_overlong_line_is_dropped_whole_and_reported_once(chunk_size: int) -> None:
    stream = b"OK 1\r\n" + b"x" * 200 + b"\r\nOK 2\r\n"
    chunks = [stream[i:i + chunk_size] for i in range(0, len(stream), chunk_size)]
    out = _split(b"\r\n", chunks, max_line=32)
    assert len(out) == 3
    assert out[0] == b"OK 1" and out[2] == b"OK 2"
    over = out[1]
    assert isinstance(over, Overlong)
    assert over.length == 200
    assert over.head == b"x" * LineSplitter.HEAD_BYTES


def test_line_of_exactly_max_bytes_passes_even_with_split_delimiter() -> None:
    assert _split(b"\r\n", [b"y" * 32 + b"\r", b"\n"], max_line=32) == [b"y" * 32]
    out = _split(b"\r\n", [b"y" * 33 + b"\r", b"\n"], max_line=32)
    assert isinstance(out[0], Overlong) and out[0].length == 33


def test_overlong_without_end_keeps_memory_bounded_then_recovers() -> None:
    splitter = LineSplitter(b"\n", 64)
    for _ in range(1000):  # a device streaming noise with no line end
        assert splitter.feed(b"z" * 4096) == []
        assert splitter.buffered <= 64 + 1
    out = splitter.feed(b"tail\nGOOD\n")
    assert isinstance(out[0], Overlong) and out[0].length == 4096 * 1000 + 4
    assert out[1] == b"GOOD"


def test_reset_drops_the_partial_line() -> None:
    splitter = LineSplitter(b"\n", 64)
    assert splitter.feed(b"half a li") == []
    splitter.reset()
    assert splitter.feed(b"ne\nwhole\n") == [b"ne", b"whole"]


# --------------------------------------------------------------------------- checksums


@pytest.mark.parametrize(("kind", "expected"), [
    (ChecksumKind.XOR8, 0x31),
    (ChecksumKind.SUM8, 0xDD),
    (ChecksumKind.CRC16_MODBUS, 0x4B37),  # the catalogued check value of CRC-16/MODBUS
])
def test_checksum_check_values(kind: ChecksumKind, expected: int) -> None:
    assert checksum_of(kind, b"123456789") == expected


def _spec(kind: ChecksumKind, skip: int = 0, little: bool = False,
          pattern: bytes | None = None) -> CompiledChecksum:
    digits = kind.hex_digits
    default = rb"\*(?P<checksum>[0-9A-Fa-f]{%d})$" % digits
    return CompiledChecksum(kind, re.compile(pattern or default), skip, little)


NMEA = b"$GPGLL,5300.97914,N,00259.98174,E,125926,A"


@pytest.mark.parametrize(("line", "spec", "payload"), [
    (NMEA + b"*28", _spec(ChecksumKind.XOR8, skip=1), NMEA),
    (b"123456789*31", _spec(ChecksumKind.XOR8), b"123456789"),
    (b"123456789*DD", _spec(ChecksumKind.SUM8), b"123456789"),
    (b"123456789*dd", _spec(ChecksumKind.SUM8), b"123456789"),  # lower-case hex
    (b"123456789*4B37", _spec(ChecksumKind.CRC16_MODBUS), b"123456789"),
    (b"123456789*374B", _spec(ChecksumKind.CRC16_MODBUS, little=True), b"123456789"),
    (b"123456789;31", _spec(ChecksumKind.XOR8, pattern=rb";(?P<checksum>[0-9A-F]{2})$"),
     b"123456789"),
])
def test_checksum_good(line: bytes, spec: CompiledChecksum, payload: bytes) -> None:
    assert verify_checksum(line, spec) == payload


@pytest.mark.parametrize(("line", "spec", "reason"), [
    (NMEA + b"*29", _spec(ChecksumKind.XOR8, skip=1), Reason.CHECKSUM_MISMATCH),
    (NMEA + b"*28", _spec(ChecksumKind.XOR8), Reason.CHECKSUM_MISMATCH),  # `$` counted
    (NMEA.replace(b"5300", b"5301") + b"*28", _spec(ChecksumKind.XOR8, skip=1),
     Reason.CHECKSUM_MISMATCH),
    (b"123456789*DE", _spec(ChecksumKind.SUM8), Reason.CHECKSUM_MISMATCH),
    (b"123456789*374B", _spec(ChecksumKind.CRC16_MODBUS), Reason.CHECKSUM_MISMATCH),
    (b"123456789*4B37", _spec(ChecksumKind.CRC16_MODBUS, little=True),
     Reason.CHECKSUM_MISMATCH),
    (NMEA, _spec(ChecksumKind.XOR8, skip=1), Reason.CHECKSUM_MISSING),
    (b"123456789*4B", _spec(ChecksumKind.CRC16_MODBUS), Reason.CHECKSUM_MISSING),
    (b"x*GG", _spec(ChecksumKind.XOR8, pattern=rb"\*(?P<checksum>..)$"),
     Reason.CHECKSUM_MISSING),  # the pattern let non-hex through
])
def test_checksum_bad(line: bytes, spec: CompiledChecksum, reason: Reason) -> None:
    with pytest.raises(FrameError) as info:
        verify_checksum(line, spec)
    assert info.value.reason is reason


def test_checksum_mismatch_message_names_both_values() -> None:
    with pytest.raises(FrameError, match="xor8 checksum 29 does not match the computed 28"):
        verify_checksum(NMEA + b"*29", _spec(ChecksumKind.XOR8, skip=1))


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(("raw", "encoding", "errors", "expected"), [
    (b"  ZONE 1 \t", "ascii", "replace", "ZONE 1"),
    (b"ZONE \xff1", "ascii", "replace", "ZONE \ufffd1"),
    (b"ZONE \xc3\xa9", "utf-8", "strict", "ZONE é"),
    (b"ZONE \xc3", "utf-8", "replace", "ZONE \ufffd"),
    ("火警 03".encode("gbk"), "gbk", "strict", "火警 03"),
])
def test_decode(raw: bytes, encoding: str, errors: str, expected: str) -> None:
    assert decode(raw, encoding, errors, strip=True) == expected


@pytest.mark.parametrize(("raw", "encoding"), [
    (b"ZONE \xff", "ascii"),
    (b"ZONE \xc3(", "utf-8"),
    (b"\xed\xa0\x80", "utf-8"),  # a surrogate
])
def test_decode_strict_rejects_invalid_bytes(raw: bytes, encoding: str) -> None:
    with pytest.raises(FrameError) as info:
        decode(raw, encoding, "strict", strip=True)
    assert info.value.reason is Reason.UNDECODABLE
    assert "not valid" in str(info.value)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(("text", "type_", "kwargs", "expected"), [
    ("42", ValueType.INT, {}, 42),
    ("-7", ValueType.INT, {}, -7),
    ("0023", ValueType.INT, {}, 23),
    ("23.5", ValueType.FLOAT, {}, 23.5),
    ("235", ValueType.FLOAT, {"scale": 0.1}, pytest.approx(23.5)),
    ("10", ValueType.FLOAT, {"scale": 2.0, "offset": -1.0}, 19.0),
    ("1e3", ValueType.FLOAT, {}, 1000.0),
    ("ON", ValueType.BOOL, {}, True),
    ("0", ValueType.BOOL, {}, False),
    ("no", ValueType.BOOL, {}, False),
    (" 03 ", ValueType.STR, {}, " 03 "),
    ("A", ValueType.BOOL, {"mapping": {"A": True, "N": False}}, True),
    ("N", ValueType.STR, {"mapping": {"N": "normal"}}, "normal"),
])
def test_convert(text: str, type_: ValueType, kwargs: dict[str, object], expected: object
                 ) -> None:
    assert convert(text, type_, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "type_", "mapping"), [
    ("4.2", ValueType.INT, None),
    ("", ValueType.INT, None),
    ("9" * 40, ValueType.INT, None),
    ("nan", ValueType.FLOAT, None),
    ("inf", ValueType.FLOAT, None),
    ("1e999", ValueType.FLOAT, None),
    ("12abc", ValueType.FLOAT, None),
    ("maybe", ValueType.BOOL, None),
    ("X", ValueType.BOOL, {"A": True}),
])
def test_convert_rejects(text: str, type_: ValueType, mapping: dict[str, object] | None
                         ) -> None:
    with pytest.raises(FrameError) as info:
        convert(text, type_, mapping)
    assert info.value.reason is Reason.BAD_VALUE
    assert info.value.sample == text
    assert text not in str(info.value) or not text  # the message holds no line content


# --------------------------------------------------------------------------- matching

ZONE = CompiledFrame(0, "zone", re.compile(r"FIRE ZONE (?P<zone>\d{2}) (?P<status>ALARM|NORMAL)"))
STATUS = CompiledFrame(1, "status", re.compile(r"T=(?P<t>-?\d+\.\d)(?: B=(?P<b>\d+))?"), (
    CompiledValue("t", "temperature_c", ValueType.FLOAT),
    CompiledValue("b", "battery_pct", ValueType.INT),
))
ANY = CompiledFrame(2, "any", re.compile(r"FIRE.*"))
FRAMES = [ZONE, STATUS, ANY]


@pytest.mark.parametrize(("text", "frame", "groups", "values"), [
    ("FIRE ZONE 03 ALARM", "zone", {"zone": "03", "status": "ALARM"}, {}),
    ("FIRE ZONE 3 ALARM", "any", {}, {}),  # first matching frame in order
    ("T=23.5 B=87", "status", {"t": "23.5", "b": "87"},
     {"temperature_c": 23.5, "battery_pct": 87}),
    ("T=23.5", "status", {"t": "23.5", "b": None}, {"temperature_c": 23.5}),  # optional group
])
def test_match(text: str, frame: str, groups: dict[str, str | None], values: dict[str, object]
               ) -> None:
    matched = match_frame(text, FRAMES)
    assert matched.frame.name == frame
    assert matched.groups == groups
    assert matched.values == values


@pytest.mark.parametrize(("text", "reason"), [
    ("garbage", Reason.NO_MATCH),
    ("", Reason.NO_MATCH),
    ("T=23.5 B=87 trailing", Reason.NO_MATCH),  # the whole line must match
    ("xFIRE ZONE 03 ALARM", Reason.NO_MATCH),
])
def test_match_rejects(text: str, reason: Reason) -> None:
    with pytest.raises(FrameError) as info:
        match_frame(text, FRAMES)
    assert info.value.reason is reason


def test_a_value_that_does_not_convert_rejects_the_frame() -> None:
    frame = CompiledFrame(0, "f", re.compile(r"V=(?P<v>\S+)"),
                          (CompiledValue("v", "v", ValueType.INT),))
    with pytest.raises(FrameError) as info:
        match_frame("V=12x", [frame])
    assert info.value.reason is Reason.BAD_VALUE
    assert str(info.value) == "frame `f` group `v` is not a whole number"
    assert info.value.sample == "12x"


# --------------------------------------------------------------------------- previews


@pytest.mark.parametrize(("raw", "limit", "expected"), [
    (b"FIRE ZONE 03", 24, "'FIRE ZONE 03'"),
    (b"A\r\n\x00\xff", 24, "'A\\x0d\\x0a\\x00\\xff'"),
    (b"x" * 30, 4, "'xxxx'…(+26)"),
    ("火警\n", 24, "'火警\\x0a'"),
    ("card 12345678", 0, "<13 characters hidden>"),
    (b"card", 0, "<4 bytes hidden>"),
])
def test_preview(raw: bytes | str, limit: int, expected: str) -> None:
    assert preview(raw, limit) == expected


# --------------------------------------------------------------------------- regex lint


@pytest.mark.parametrize(("pattern", "slow"), [
    (r"(a+)+$", True),
    (r"((x*))*y", True),
    (r"ZONE ((?:\d+)+)", True),
    (r"x|(\s*)*", True),  # inside an alternative
    (r"(?=(a+)+)b", True),  # inside a lookahead
    (r"FIRE ZONE (?P<zone>\d{2,3}) (?P<status>ALARM|NORMAL)", False),
    (r"(?:\d+,)*\d+", False),  # a separator makes each iteration unambiguous
    (r"(?:a++)+", False),  # possessive: no backtracking into the inner repeat
    (r"(?>a+)+", False),  # atomic group
    (r"(?:\d+)?", False),  # at most once
])
def test_nested_repeat(pattern: str, slow: bool) -> None:
    assert (nested_repeat(pattern) is not None) is slow
