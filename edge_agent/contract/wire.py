"""Payloads on the wire: event batches (edge → collector) and commit acks (collector → edge).

Batch: a JSON array of envelope-v1 events (CloudEvents batched JSON,
`application/cloudevents-batch+json`), all from one gateway and one epoch.

Ack (`.../ack`, QoS 1), sent only after the store committed::

    {"v": 1, "epoch": "<epoch>", "committed": [[1, 200], [205, 205]], "rejected": [[201, 204]]}

`committed`: seqs now durably in the district store (new or already there).
`rejected`: seqs the collector put in quarantine; resending cannot help, so the
edge deletes them too. Ranges are inclusive [first, last], sorted, disjoint.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ACK_VERSION = 1


def to_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """[1,2,3,7,8] -> [[1,3],[7,8]]"""
    out: list[list[int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def iter_ranges(ranges: Iterable[Iterable[int]]) -> Iterable[int]:
    for first, last in ranges:
        yield from range(first, last + 1)


def encode_batch(event_bodies: Iterable[str]) -> bytes:
    """Join already-serialized events into one batch without re-parsing them."""
    return ("[" + ",".join(event_bodies) + "]").encode("utf-8")


class AckError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Ack:
    epoch: str
    committed: list[list[int]] = field(default_factory=list)
    rejected: list[list[int]] = field(default_factory=list)

    def encode(self) -> bytes:
        return json.dumps(
            {"v": ACK_VERSION, "epoch": self.epoch, "committed": self.committed,
             "rejected": self.rejected},
            separators=(",", ":"),
        ).encode()

    def seqs(self) -> set[int]:
        """Every seq the ack names. Expands the ranges: only for acks this process built
        or already bounded (tests, the collector); the agent uses `seqs_among`."""
        return set(iter_ranges(self.committed)) | set(iter_ranges(self.rejected))

    def named(self) -> int:
        """How many seqs the ranges name (counted, never expanded; overlaps counted twice)."""
        return sum(last - first + 1 for first, last in (*self.committed, *self.rejected))

    def seqs_among(self, candidates: Sequence[int]) -> set[int]:
        """The seqs of sorted `candidates` that the ack names: work and memory bounded by
        `len(candidates)` and the number of ranges, however wide the ranges are."""
        found: set[int] = set()
        for first, last in (*self.committed, *self.rejected):
            lo = bisect.bisect_left(candidates, first)
            hi = bisect.bisect_right(candidates, last, lo)
            found.update(candidates[lo:hi])
        return found

    @classmethod
    def decode(cls, payload: bytes | bytearray) -> Ack:
        try:
            obj: Any = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise AckError(f"ack is not JSON: {exc}") from None
        if not isinstance(obj, dict) or obj.get("v") != ACK_VERSION:
            raise AckError("ack is not a v1 object")
        epoch = obj.get("epoch")
        if not isinstance(epoch, str):
            raise AckError("ack has no epoch")
        lists = []
        for key in ("committed", "rejected"):
            ranges = obj.get(key, [])
            if not isinstance(ranges, list) or not all(
                isinstance(r, list) and len(r) == 2 and all(type(x) is int and x >= 1 for x in r)
                and r[0] <= r[1] and r[1] - r[0] < 1_000_000
                for r in ranges
            ):
                raise AckError(f"ack {key} is not a list of [first, last] seq ranges")
            lists.append(ranges)
        return cls(epoch, lists[0], lists[1])
