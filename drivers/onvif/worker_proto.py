"""The framed protocol between the agent and its camera worker processes. Pure, no I/O.

One frame = a 4-byte big-endian length, then that many bytes of UTF-8 JSON holding one
object with a string `t` (the message kind). Frames are small: results, states and
health figures only, never a picture (snapshots are written to the ring by the worker
and cross as a reference in the event's data). Both sides parse defensively: a length
over `MAX_FRAME`, bytes that are not JSON, or JSON that is not an object with a known
`t` is a `ProtocolError`; the agent then restarts the worker (the stream is out of step
and cannot be trusted), the worker exits.

Worker -> agent: `hb` (heartbeat: `rss_kib`, `cameras`), `emit` (`dev`, `type`, `data`,
`sev`, `at`), `state` (`dev`, `state`, `reason`), `poll_error` (`dev`, `reason`),
`chatter` (`dev`, `n`). Agent -> worker: `start` (the cameras' validated options as
JSON, their open alarms, the gateway's snapshot settings), then nothing: the worker
stops when the agent closes its end.
"""

from __future__ import annotations

import json
import struct
from typing import Any

#: The environment variable the template and the workers take their log level from.
WORKER_LOG_LEVEL = "EDGE_AGENT_WORKER_LOG_LEVEL"

__all__ = ["FROM_WORKER", "MAX_FRAME", "ProtocolError", "decode_body", "encode", "header_length"]

#: The largest frame either side accepts (an event's data is at most a few KiB).
MAX_FRAME = 1 << 20
HEADER = struct.Struct(">I")
FROM_WORKER = frozenset({"hb", "emit", "state", "poll_error", "chatter"})
TO_WORKER = frozenset({"start"})


class ProtocolError(ValueError):
    """A frame that breaks the protocol; the peer is not trusted any more."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame for `message` (a JSON-able object with a `t`)."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes is over {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def header_length(header: bytes) -> int:
    """The body length announced by a 4-byte header; refuses an oversized one."""
    if len(header) != HEADER.size:
        raise ProtocolError("short frame header")
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes announced, at most {MAX_FRAME}")
    return int(length)


def decode_body(body: bytes, kinds: frozenset[str]) -> dict[str, Any]:
    """The message in `body`, whose `t` must be one of `kinds`."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    kind = message.get("t")
    if not isinstance(kind, str) or kind not in kinds:
        raise ProtocolError(f"unknown message kind {str(kind)[:40]!r}")
    return message
