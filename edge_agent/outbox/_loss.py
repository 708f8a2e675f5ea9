"""The pending loss report (invariant 6).

Evicted rows are counted into ONE pending report, persisted as meta `loss_report`, until
the outbox emits it as a `gateway.data_loss` event. This module holds the report itself:
adding evictions to it, cutting it at `max_ranges` seq ranges, its JSON form in meta (and
the check of that form when a file is opened) and the `data` of the event that reports it.
When to emit it is the write's business (`_write`).
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.outbox._errors import Corrupt

#: An evicted row: (seq, type, observed time as RFC 3339).
Evicted = tuple[int, str, str]


@dataclass(slots=True)
class Loss:
    """The pending loss report: evictions not yet named in a data_loss event. Persisted as
    meta `loss_report`; never changed in place once it is the outbox's (copy first)."""

    since: float
    evicted: int = 0
    by_type: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq_ranges: list[list[int]] = field(default_factory=list)
    #: of `evicted`, rows the uplink may have sent (seq at or below what it had sent when
    #: they were evicted): perhaps stored, their ack not seen. The rest were never sent.
    unconfirmed: int = 0

    def copy(self) -> Loss:
        return Loss(self.since, self.evicted,
                    {k: dict(v) for k, v in self.by_type.items()},
                    [[a, b] for a, b in self.seq_ranges], self.unconfirmed)

    def add_run(self, first: int, last: int, max_ranges: int, sent_through: int = 0) -> bool:
        """Name seqs first..last (none named yet) in `seq_ranges` and count them in
        `evicted`; False (nothing changed) if that would take more than `max_ranges`
        ranges. (Only the first seq of a run can need a new range, so cutting between runs
        is cutting at the first row that does not fit.)"""
        ranges = self.seq_ranges
        i = bisect.bisect_left(ranges, [first])  # the first range starting after `first`
        joins_left = i > 0 and ranges[i - 1][1] + 1 == first
        joins_right = i < len(ranges) and ranges[i][0] == last + 1
        if joins_left and joins_right:
            ranges[i - 1][1] = ranges[i][1]
            del ranges[i]
        elif joins_left:
            ranges[i - 1][1] = last
        elif joins_right:
            ranges[i][0] = first
        elif len(ranges) >= max_ranges:
            return False
        else:
            ranges.insert(i, [first, last])
        self.evicted += last - first + 1
        self.unconfirmed += max(0, min(last, sent_through) - first + 1)
        return True

    def count_types(self, items: Sequence[Evicted]) -> None:
        by_type = self.by_type
        for _, type_, observed in items:
            entry = by_type.get(type_)
            if entry is None:
                by_type[type_] = {"count": 1, "first_time": observed, "last_time": observed}
            else:
                entry["count"] += 1
                if observed < entry["first_time"]:
                    entry["first_time"] = observed
                if observed > entry["last_time"]:
                    entry["last_time"] = observed

    def data(self) -> dict[str, Any]:
        """The `data` of the gateway.data_loss event that reports it."""
        return {"reason": "outbox_full", "evicted": self.evicted,
                "lost": self.evicted - self.unconfirmed, "unconfirmed": self.unconfirmed,
                "by_type": dict(sorted(self.by_type.items())), "seq_ranges": self.seq_ranges}

    def to_json(self) -> str:
        return json.dumps({"evicted": self.evicted, "by_type": self.by_type,
                           "seq_ranges": self.seq_ranges, "pending_since": self.since,
                           "unconfirmed": self.unconfirmed},
                          separators=(",", ":"))


def add_loss(loss: Loss | None, items: Sequence[Evicted], now: float,
             max_ranges: int, sent_through: int = 0) -> tuple[Loss, list[Loss]]:
    """`loss` (not modified) with `items` added, and the reports that became full on the
    way: when adding a row would give a report more than `max_ranges` ranges, that report
    (holding exactly `max_ranges`) is done and a new one, pending since `now`, starts with
    the row. Rows at or below `sent_through` count as `unconfirmed`."""
    work = loss.copy() if loss is not None else Loss(now)
    done: list[Loss] = []
    rows = sorted(items)
    start = 0
    for j in range(1, len(rows) + 1):
        if j < len(rows) and rows[j][0] == rows[j - 1][0] + 1:
            continue
        run = rows[start:j]  # consecutive seqs
        if not work.add_run(run[0][0], run[-1][0], max_ranges, sent_through):
            done.append(work)
            work = Loss(now)
            work.add_run(run[0][0], run[-1][0], max_ranges, sent_through)
        work.count_types(run)
        start = j
    return work, done


def parse_loss(text: object, next_seq: int, evicted_total: int, epoch: str) -> Loss:
    """The pending loss report stored in meta, checked; `Corrupt` if it is not one."""
    def bad(why: str) -> Corrupt:
        return Corrupt(f"meta loss_report is not a pending loss report: {why}", epoch)

    def is_int(x: object) -> bool:
        return type(x) is int

    try:
        obj = json.loads(str(text))
    except ValueError as exc:
        raise bad(f"not JSON ({exc})") from None
    keys = {"evicted", "by_type", "seq_ranges", "pending_since"}
    if not isinstance(obj, dict) or set(obj) - {"unconfirmed"} != keys:
        raise bad(f"expected an object with keys {sorted(keys)} (and unconfirmed)")
    # Written before `unconfirmed` was kept: whether they were sent is not known.
    unconfirmed: Any = obj.get("unconfirmed", obj["evicted"])
    evicted, by_type, ranges, since = (obj[k] for k in
                                       ("evicted", "by_type", "seq_ranges", "pending_since"))
    if not is_int(evicted) or not 1 <= evicted <= evicted_total:
        raise bad(f"evicted={evicted!r} (evicted_total={evicted_total})")
    if type(since) not in (int, float) or not math.isfinite(since):
        raise bad(f"pending_since={since!r}")
    if not isinstance(ranges, list) or not ranges:
        raise bad("seq_ranges empty or not a list")
    prev, named = -1, 0
    for r in ranges:
        if not (isinstance(r, list) and len(r) == 2 and is_int(r[0]) and is_int(r[1])
                and prev + 1 < r[0] <= r[1] < next_seq):
            raise bad(f"seq range {r!r} (ranges must be sorted, apart, below {next_seq})")
        prev, named = r[1], named + r[1] - r[0] + 1
    if named != evicted:
        raise bad(f"seq_ranges name {named} seqs, evicted={evicted}")
    if not isinstance(by_type, dict) or not all(
            isinstance(v, dict) and set(v) == {"count", "first_time", "last_time"}
            and is_int(v["count"]) and v["count"] >= 1 and isinstance(v["first_time"], str)
            and isinstance(v["last_time"], str) for v in by_type.values()):
        raise bad("by_type entries must be {count, first_time, last_time}")
    if sum(v["count"] for v in by_type.values()) != evicted:
        raise bad("by_type counts do not add up to evicted")
    if not is_int(unconfirmed) or not 0 <= unconfirmed <= evicted:
        raise bad(f"unconfirmed={unconfirmed!r} (evicted={evicted})")
    return Loss(float(since), evicted, by_type, ranges, unconfirmed)
