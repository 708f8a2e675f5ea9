"""Batch wire format v2: the fields events share sent once per batch, compressed.

Layout (docs/wire.md is the reader's specification)::

    MAGIC (4 bytes: 00 43 45 32, "\\0CE2") | encoding (1 byte) | body

`encoding`: `z` zstd (RFC 8878 frame), `d` zlib (RFC 1950), `n` none. The body,
once decompressed, is one UTF-8 JSON object::

    {"v": 2, "n": <events>, "common": {<field>: <value>, ...}, "events": [{...}, ...]}

Event i is `common` merged with `events[i]`, with two derived fields:
- `seq` absent from an event: the previous event's seq + 1 (event 0 must carry it);
- `source` absent from both: `/{district}/{street}/{community}/{gateway}/{subject}`.
A key in both `common` and an event is a framing error (never "last one wins").

Invariants
1. `decode(encode(bodies))` gives back each event object equal, as JSON, to its body,
   for bodies that are JSON objects with an integer `seq` and a `source` (every outbox
   row is).
2. A v1 payload (a JSON array or object, maybe after whitespace) never starts with MAGIC
   (NUL is not JSON), so one byte tells the formats apart on any MQTT version.
3. `decode` never holds more than `max_bytes` decompressed bytes (a decompression bomb
   costs at most that), and raises only `BatchV2Error`, whose message names what is wrong.
4. `common` of a decoded batch always names the batch's `district`, `community` and
   `gateway` as strings: the collector checks them against the topic once per batch.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any, Literal

import zstandard

MAGIC = b"\x00CE2"
#: MQTT v5 announcement (the payload is self-describing; these only tell a reader early).
CONTENT_TYPE = "application/vnd.community.batch.v2+json"
Encoding = Literal["zstd", "zlib", "none"]
_CODE: dict[str, bytes] = {"zstd": b"z", "zlib": b"d", "none": b"n"}
_NAME = {code: name for name, code in _CODE.items()}
#: The encoder's choice (docs/dependencies.md: measured on the peer workload).
DEFAULT_ENCODING: Encoding = "zstd"
DEFAULT_LEVEL = 3
#: Always per event, even when equal across a batch (identity and payload).
_PER_EVENT = frozenset({"id", "seq", "data"})
#: Fields the batch must carry in `common` (invariant 4).
BATCH_KEYS = ("district", "community", "gateway")


class BatchV2Error(ValueError):
    """A v2 payload that cannot be read; the message names the problem."""


def is_v2(payload: bytes) -> bool:
    return payload[:4] == MAGIC


def _derived_source(obj: dict[str, Any]) -> str | None:
    try:
        return (f"/{obj['district']}/{obj['street']}/{obj['community']}/{obj['gateway']}/"
                f"{obj['subject']}")
    except KeyError:
        return None


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (Python's `1 == True == 1.0` is not)."""
    return type(a) is type(b) and (a == b if not isinstance(a, dict | list)
                                   else _COMPACT.encode(a) == _COMPACT.encode(b))


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
#: One compressor per level, used by the agent's event loop thread only (not thread-safe).
_compressors: dict[int, zstandard.ZstdCompressor] = {}


def _split(body: str) -> tuple[dict[str, Any], str | None]:
    """The event's members before `data` (parsed) and the text from `data`'s value to the
    end (kept as it is: never parsed nor re-serialized, ~half of the encoder's CPU).

    The outbox writes `data` last. The cut is where `,"data":` first occurs: never inside
    a string (a quote is escaped there), and at the top level if the text before it plus
    `}` is an object; then the text after it, put back after `"data":` in an object, reads
    as the same members. The batch's place (`BATCH_KEYS`) must be before the cut, so that
    it can go to `common`. Anything else is parsed whole."""
    cut = body.find(',"data":')
    if cut > 0 and body.endswith("}"):
        try:
            head = json.loads(body[:cut] + "}")
        except ValueError:
            head = None
        if isinstance(head, dict) and "data" not in head and all(k in head
                                                                  for k in BATCH_KEYS):
            return head, body[cut + 8:-1]
    whole = json.loads(body)
    if not isinstance(whole, dict):
        raise ValueError("a batch v2 event must be a JSON object")
    return whole, None


def encode(bodies: Sequence[str], *, encoding: Encoding = DEFAULT_ENCODING,
           level: int = DEFAULT_LEVEL) -> bytes:
    """One v2 payload from serialized envelope-v1 events (the outbox's rows), in order.
    Raises ValueError for a body that is not a JSON object."""
    split = [_split(b) for b in bodies]
    events = [head for head, _ in split]
    common: dict[str, Any] = {}
    if events:
        first = events[0]
        common = {k: v for k, v in first.items() if k not in _PER_EVENT
                  and all(k in e and _same(e[k], v) for e in events[1:])}
        if "source" in common and common["source"] != _derived_source(first):
            pass  # shared and not derivable: keep it in common
        elif all("source" in e and e["source"] == _derived_source(e) for e in events):
            common.pop("source", None)
            for e in events:
                e.pop("source", None)
    parts: list[str] = []
    previous: int | None = None
    for e, (_, rest) in zip(events, split, strict=True):
        one = {k: v for k, v in e.items() if k not in common}
        seq = one.get("seq")
        if type(seq) is int and previous is not None and seq == previous + 1:
            del one["seq"]
        previous = seq if type(seq) is int else None
        text = _COMPACT.encode(one)
        if rest is not None:
            text = (text[:-1] + ',"data":' if one else '{"data":') + rest + "}"
        parts.append(text)
    body = (f'{{"v":2,"n":{len(parts)},"common":{_COMPACT.encode(common)},"events":['
            + ",".join(parts) + "]}").encode("utf-8")
    if encoding == "zstd":
        cctx = _compressors.get(level)
        if cctx is None:
            cctx = _compressors[level] = zstandard.ZstdCompressor(level=level)
        body = cctx.compress(body)
    elif encoding == "zlib":
        body = zlib.compress(body, level)
    return MAGIC + _CODE[encoding] + body


def decompress(payload: bytes, max_bytes: int) -> tuple[Encoding, bytes]:
    """The encoding named by the header and the body, at most `max_bytes` of it."""
    if not is_v2(payload):
        raise BatchV2Error("not a v2 batch (no magic prefix)")
    code = payload[4:5]
    name = _NAME.get(code)
    if name is None:
        raise BatchV2Error(f"v2 batch names unknown encoding {code!r} "
                           "(known: z=zstd, d=zlib, n=none)")
    data = payload[5:]
    encoding: Encoding = "zstd" if name == "zstd" else "zlib" if name == "zlib" else "none"
    if encoding == "none":
        if len(data) > max_bytes:
            raise BatchV2Error(f"v2 batch body of {len(data)} bytes exceeds {max_bytes}")
        return encoding, data
    if encoding == "zlib":
        d = zlib.decompressobj()
        try:
            out = d.decompress(data, max_bytes + 1)
        except zlib.error as exc:
            raise BatchV2Error(f"v2 batch announced zlib but is not zlib data: {exc}") from None
        if len(out) > max_bytes:
            raise BatchV2Error(f"v2 batch decompresses to more than {max_bytes} bytes "
                               "(ingest.max_payload_bytes)")
        if not d.eof:
            raise BatchV2Error("v2 batch zlib stream is truncated")
        if d.unused_data:
            raise BatchV2Error("v2 batch has bytes after its zlib stream")
        return encoding, out
    try:
        # Bounded output whatever the frame claims (a bomb stops at max_bytes + 1).
        dctx = zstandard.ZstdDecompressor()  # per call: a context is not thread-safe
        reader = dctx.stream_reader(data, read_across_frames=False)
        out = reader.read(max_bytes + 1)
        if len(out) > max_bytes:
            raise BatchV2Error(f"v2 batch decompresses to more than {max_bytes} bytes "
                               "(ingest.max_payload_bytes)")
        # The whole output is now known to be at most max_bytes, so a full decode is
        # bounded too; it alone tells a truncated frame or trailing bytes (~1 GB/s: cheap).
        zd = dctx.decompressobj()
        out = zd.decompress(data)
        if not zd.eof:
            raise BatchV2Error("v2 batch zstd frame is truncated")
        if zd.unused_data:
            raise BatchV2Error("v2 batch has bytes after its zstd frame")
    except zstandard.ZstdError as exc:
        raise BatchV2Error(f"v2 batch announced zstd but is not zstd data: {exc}") from None
    return encoding, out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode(payload: bytes, *, max_bytes: int, max_events: int) -> tuple[dict[str, Any],
                                                                         list[Any]]:
    """(common, events) of a v2 payload, every event expanded to a full envelope object
    (a non-object entry is passed through as it is, for the event's own rejection)."""
    _, body = decompress(payload, max_bytes)
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise BatchV2Error(f"v2 batch body is not UTF-8: {exc.reason} at byte {exc.start}") \
            from None
    except ValueError as exc:
        raise BatchV2Error(f"v2 batch body is not JSON: {exc}") from None
    except RecursionError:
        raise BatchV2Error("v2 batch body is nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("v") != 2:
        raise BatchV2Error("v2 batch body is not an object with \"v\": 2")
    common, events, count = doc.get("common"), doc.get("events"), doc.get("n")
    if not isinstance(common, dict) or not isinstance(events, list):
        raise BatchV2Error("v2 batch body needs \"common\" (object) and \"events\" (array)")
    if type(count) is not int or count != len(events):
        raise BatchV2Error(f"v2 batch says n={count!r} but holds {len(events)} events")
    if len(events) > max_events:
        raise BatchV2Error(f"batch of {len(events)} events exceeds ingest.max_events_per_batch "
                           f"({max_events})")
    for key in BATCH_KEYS:
        if not isinstance(common.get(key), str):
            raise BatchV2Error(f"v2 batch common has no {key} string")
    for key in _PER_EVENT:
        if key in common:
            raise BatchV2Error(f"v2 batch common must not hold {key!r} (per event only)")
    out: list[Any] = []
    previous: Any = None
    for index, slim in enumerate(events):
        if not isinstance(slim, dict):
            out.append(slim)
            previous = None
            continue
        clash = common.keys() & slim.keys()
        if clash:
            raise BatchV2Error(f"v2 batch event {index} repeats common field(s) "
                               f"{', '.join(sorted(clash))}")
        full = {**common, **slim}
        if "seq" not in full:
            if type(previous) is not int:
                raise BatchV2Error(f"v2 batch event {index} has no seq and no previous seq")
            full["seq"] = previous + 1
        previous = full["seq"]
        if "source" not in full:
            source = _derived_source(full)
            if source is not None:
                full["source"] = source
        out.append(full)
    return common, out
