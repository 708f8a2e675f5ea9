"""What to send and what an answer means; pure (no I/O), so it is tested alone.

- `plan_batch`: the first events of a page, at most `max_events` and `max_bytes` (one
  event always goes, however large: a batch that can never be smaller must still move);
- `batch_id`: derived from the subscription and the batch's first and last positions, so
  a retried batch has the same `Webhook-Id` even across a collector restart (the cursor
  did not move, the same events are read again);
- `classify`: 2xx delivered; no answer (timeout, connection error), 408, 429 and 5xx
  retried with back-off; any other status rejected (retried a bounded number of times,
  then dead-lettered);
- `retry_after_s`: the `Retry-After` header (seconds or an HTTP date);
- `check_url`: https anywhere, plain http only to the loopback (tests, a local relay).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from collector.stream.position import Position

CONTENT_TYPE = "application/cloudevents-batch+json"


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    body: bytes
    events: int
    last: Position


def batch_id(name: str, first: Position, last: Position) -> str:
    text = f"{name}|{first.kind}|{first.a}|{first.b}|{last.a}|{last.b}"
    return "msg_" + hashlib.sha256(text.encode()).hexdigest()[:32]


def plan_batch(name: str, events: Sequence[tuple[Position, bytes]], max_events: int,
               max_bytes: int) -> Batch | None:
    """The batch to send next from `events` (in order); None when there are none."""
    taken: list[bytes] = []
    size = 2
    last: Position | None = None
    for pos, body in events[:max_events]:
        if taken and size + len(body) + 1 > max_bytes:
            break
        taken.append(body)
        size += len(body) + (1 if len(taken) > 1 else 0)
        last = pos
    if last is None:
        return None
    return Batch(batch_id(name, events[0][0], last), b"[" + b",".join(taken) + b"]",
                 len(taken), last)


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


def classify(status: int | None) -> Verdict:
    """`status` None: no HTTP answer (timeout, refused, reset, TLS failure)."""
    if status is None or status in (408, 429) or status >= 500:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    return Verdict.REJECTED


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds the receiver asked us to wait, or None (absent or unreadable)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def wait_s(backoff_s: float, retry_after: float | None, retry_after_max_s: float) -> float:
    """The wait before a retry: the back-off's, or longer when the receiver asked."""
    if retry_after is None:
        return backoff_s
    return max(backoff_s, min(retry_after, retry_after_max_s))


def check_url(url: str) -> str:
    """`url` when it may be a target; ValueError saying why not."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535"
        raise ValueError(f"{url!r}: not a URL ({exc}); e.g. https://host/path") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r}: the target must be an https:// URL")
    if parts.username or parts.password:
        raise ValueError("the target URL must not carry credentials (the signature "
                         "authenticates the batches)")
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = False
        if not loopback or parts.hostname not in ("127.0.0.1", "::1"):
            raise ValueError(f"{url!r}: plain http only to 127.0.0.1 or [::1] (a local relay, "
                             "tests); use https")
    return url
