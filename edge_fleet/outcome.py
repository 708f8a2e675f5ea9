"""What one gateway's push came to, and the defensive reading of the box's answer.

`edge-agent drivers install ... --json` prints exactly one JSON object on one line
(the contract in docs/fleet-ops.md). The box is not trusted: output that is not exactly
that (garbage, several lines, a non-object, an unknown outcome, fields of the wrong type,
an exit code that contradicts the outcome, more bytes than `MAX_OUTPUT_BYTES`) is an
`error` for that gateway, never an exception, and text from the box is clipped and
stripped of control characters before it reaches a report or a terminal. Pure.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from edge_agent.contract.install_exit import INSTALL_EXIT


class Outcome(StrEnum):
    INSTALLED = "installed"
    ALREADY_CURRENT = "already_current"
    REFUSED = "refused"
    ROLLED_BACK = "rolled_back"
    PENDING = "pending"
    UNREACHABLE = "unreachable"
    ERROR = "error"
    SKIPPED = "skipped"


#: outcomes that count as success for the exit code (pending: probation not over, so no)
OK = frozenset({Outcome.INSTALLED, Outcome.ALREADY_CURRENT})
#: the outcomes the box itself may report, with the exit code the contract gives each
REMOTE_EXIT = {Outcome(name): code for name, code in INSTALL_EXIT.items()}
MAX_OUTPUT_BYTES = 64 * 1024
MAX_REASON_CHARS = 300
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class GatewayResult:
    gateway: str
    address: str
    outcome: Outcome
    reason: str = ""
    seconds: float = 0.0
    driver: str | None = None
    version: str | None = None
    previous: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in OK

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["seconds"] = round(self.seconds, 3)
        return data


def clean(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Text from a box made safe to print: control and bidi characters escaped, one
    line, at most `limit` characters."""
    text = text.replace("\r\n", "\n").strip().replace("\n", " | ")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Answer:
    """The box's answer, read: an outcome it may report, or an error saying why not."""

    outcome: Outcome
    reason: str
    driver: str | None = None
    version: str | None = None
    previous: str | None = None
    gateway: str | None = None


def read_answer(stdout: bytes, stderr: bytes, exit_status: int | None,
                truncated: bool = False) -> Answer:
    """Read what `edge-agent drivers install --json` printed and how it exited."""
    if truncated:
        return Answer(Outcome.ERROR, f"the box printed more than {MAX_OUTPUT_BYTES} bytes; "
                      "not an edge-agent answer")
    text = stdout.decode("utf-8", errors="replace").strip()
    err_tail = clean(stderr.decode("utf-8", errors="replace")[-2000:], 200)
    if exit_status == 127:
        return Answer(Outcome.ERROR, "edge-agent not found on the box (hint: set `edge_agent` "
                      f"in the inventory to its path); {err_tail}".rstrip("; "))
    if not text:
        return Answer(Outcome.ERROR, f"no answer on stdout (exit {exit_status}); {err_tail}"
                      .rstrip("; "))
    lines = text.splitlines()
    if len(lines) != 1:
        return Answer(Outcome.ERROR, f"expected one JSON line, got {len(lines)} lines: "
                      f"{clean(text, 120)}")
    try:
        data = json.loads(lines[0])
    except ValueError:
        return Answer(Outcome.ERROR, f"not JSON: {clean(text, 120)}")
    if not isinstance(data, dict):
        return Answer(Outcome.ERROR, f"not a JSON object: {clean(text, 120)}")
    return _from_object(data, exit_status, err_tail)


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return clean(value, 80) if isinstance(value, str) else None


def _from_object(data: dict[str, Any], exit_status: int | None, err_tail: str) -> Answer:
    raw = data.get("outcome")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        return Answer(Outcome.ERROR, "the answer's `reason` is not text")
    reason = clean(reason)
    if raw == "error":
        return Answer(Outcome.ERROR, f"edge-agent: {reason or err_tail or 'error'}")
    try:
        outcome = Outcome(raw) if isinstance(raw, str) else None
    except ValueError:
        outcome = None
    if outcome is None or outcome not in REMOTE_EXIT:
        return Answer(Outcome.ERROR, f"unknown outcome {clean(str(raw), 40)!r} in the answer")
    if exit_status != REMOTE_EXIT[outcome]:
        return Answer(Outcome.ERROR, f"exit {exit_status} contradicts outcome {outcome.value} "
                      f"(expected {REMOTE_EXIT[outcome]}); {reason}".rstrip("; "))
    return Answer(outcome, reason, driver=_text(data, "driver"), version=_text(data, "version"),
                  previous=_text(data, "previous"), gateway=_text(data, "gateway"))
