"""collector.validate: pure checks of one payload against the schema and its topic."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from collector.model import EventRow
from collector.validate import Limits, check_payload
from tests.test_collector_support import (
    alarm,
    as_dict,
    batch,
    dumps,
    new_epoch,
    reading,
    topics,
)

EPOCH = new_epoch()


def test_good_batch_is_accepted_whole() -> None:
    events = [reading("gw-a", EPOCH, s) for s in range(1, 6)] + [alarm("gw-a", EPOCH, 6)]
    verdict = check_payload(batch(events), topics("gw-a"))
    assert verdict.rejected == []
    assert [r.seq for r in verdict.accepted] == [1, 2, 3, 4, 5, 6]
    row = verdict.accepted[-1]
    assert isinstance(row, EventRow)
    assert (row.id, row.type, row.device, row.epoch) == (events[-1].id, "smoke.alarm",
                                                         "smoke-02", EPOCH)
    assert json.loads(row.data) == events[-1].data


def test_single_event_object_is_a_batch_of_one() -> None:
    verdict = check_payload(reading("gw-a", EPOCH, 1).to_json().encode(), topics("gw-a"))
    assert len(verdict.accepted) == 1 and not verdict.rejected


def _mutate(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(ev: dict[str, Any]) -> dict[str, Any]:
        for key, value in changes.items():
            if value is ...:
                ev.pop(key)
            else:
                ev[key] = value
        return ev
    return apply


# (case, payload-level mutation of event 0, expected fragment of the reason, acked by seq?)
EVENT_CASES: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str, bool]] = [
    ("wrong schema: bad alarm state",
     lambda e: {**e, "type": "smoke.alarm", "data": {"state": "burning", "alarm_id": "x"}},
     "data.state must be one of ['raised', 'cleared']", True),
    ("missing fields", _mutate(severity=..., time=...), "event is missing time, severity", True),
    ("extra field", _mutate(color="red"), "must not contain", True),
    ("bad seq", _mutate(seq=0), "seq must be bigger than or equal to 1", False),
    ("bad epoch", _mutate(epoch="XYZ"), "epoch must match pattern", True),
    ("unknown type", _mutate(type="smoke.party"), "type 'smoke.party' is not in catalog v1", True),
    ("missing type", _mutate(type=...), "event is missing type", True),
    ("gateway vs topic", lambda e: {**e, "gateway": "gw-b",
                                    "source": e["source"].replace("/gw-a/", "/gw-b/")},
     "gateway 'gw-b' differs from the topic's 'gw-a'", True),
    ("community vs topic", _mutate(community="999"), "community '999' differs", True),
    ("source mismatch", _mutate(source="/371312/371312001/371312001001/gw-a/other"),
     "does not match its hierarchy and subject", True),
    ("data not an object", _mutate(data=[1, 2]), "data must be object", True),
]


@pytest.mark.parametrize(("case", "mutate", "reason", "acked"), EVENT_CASES,
                         ids=[c[0] for c in EVENT_CASES])
def test_bad_event_is_rejected_with_a_precise_reason(
        case: str, mutate: Callable[[dict[str, Any]], dict[str, Any]], reason: str,
        acked: bool) -> None:
    good = reading("gw-a", EPOCH, 1)
    bad = mutate(as_dict(good))
    verdict = check_payload(dumps([bad]), topics("gw-a"))
    assert verdict.accepted == []
    [rej] = verdict.rejected
    assert rej.reason.startswith(f"event 0 (id {good.id}): "), rej.reason
    assert reason in rej.reason, rej.reason
    assert json.loads(rej.raw) == bad
    assert rej.event_id == good.id
    if acked:
        assert rej.epoch == (bad["epoch"] if bad.get("epoch") == EPOCH else None)
        assert rej.seq == 1
    else:
        assert rej.seq is None


PAYLOAD_CASES: list[tuple[str, bytes, Limits, str]] = [
    ("not JSON", b"\x00\xffhello", Limits(), "payload is not"),
    ("truncated JSON", b'[{"id": "x"', Limits(), "payload is not JSON"),
    ("NaN", b'[{"x": NaN}]', Limits(), "NaN is not valid JSON"),
    ("too deep", b"[" * 100_000 + b"]" * 100_000, Limits(max_payload_bytes=10**6),
     "nested too deeply"),
    ("a number", b"42", Limits(), "payload is a JSON number"),
    ("a string", b'"hi"', Limits(), "payload is a JSON string"),
    ("oversized", b"[" + b" " * 2000 + b"]", Limits(max_payload_bytes=1000),
     "payload of 2002 bytes exceeds ingest.max_payload_bytes (1000)"),
    ("too many events", dumps([{}] * 11), Limits(max_events_per_batch=10),
     "batch of 11 events exceeds ingest.max_events_per_batch (10)"),
]


@pytest.mark.parametrize(("case", "payload", "limits", "reason"), PAYLOAD_CASES,
                         ids=[c[0] for c in PAYLOAD_CASES])
def test_bad_payload_is_one_quarantine_entry_with_the_raw_bytes(
        case: str, payload: bytes, limits: Limits, reason: str) -> None:
    verdict = check_payload(payload, topics("gw-a"), limits)
    assert verdict.accepted == []
    [rej] = verdict.rejected
    assert reason in rej.reason, rej.reason
    # named like a v2 batch's reason: the topic and its gateway come first
    assert rej.reason.startswith(("v1 batch on ", "batch on ")), rej.reason
    assert f"on {topics('gw-a').events} (gateway gw-a): " in rej.reason, rej.reason
    assert rej.raw == payload
    assert (rej.event_id, rej.epoch, rej.seq) == (None, None, None)


def test_mixed_batch_keeps_the_good_events() -> None:
    good = [reading("gw-a", EPOCH, s) for s in (1, 2, 4)]
    bad = as_dict(reading("gw-a", EPOCH, 3))
    bad["data"] = {"battery_pct": 500}
    payload = dumps([as_dict(good[0]), as_dict(good[1]), bad, "junk", as_dict(good[2])])
    verdict = check_payload(payload, topics("gw-a"))
    assert [r.seq for r in verdict.accepted] == [1, 2, 4]
    assert [(r.seq, r.reason.split(":")[0]) for r in verdict.rejected] == [
        (3, f"event 2 (id {bad['id']})"), (None, "event 3")]
    assert "data.battery_pct must be smaller than or equal to 100" in verdict.rejected[0].reason
    assert "is a JSON string, expected an object" in verdict.rejected[1].reason


def test_empty_batch_is_nothing() -> None:
    verdict = check_payload(b"[]", topics("gw-a"))
    assert verdict.accepted == [] and verdict.rejected == []


@pytest.mark.parametrize("text", ["Infinity", "NaN", "1234567890123456789012", "\\u0000",
                                  "烟感 2 号", "\U0001f525"])
def test_what_only_looks_unstorable_is_accepted(text: str) -> None:
    """The fast check flags these; the walk then finds nothing wrong."""
    ev = as_dict(alarm("gw-a", EPOCH, 1))
    ev["data"]["alarm_id"] = text
    ev["data"]["density_db_m"] = 2**63 - 1
    verdict = check_payload(dumps([ev]), topics("gw-a"))
    assert verdict.rejected == [] and json.loads(verdict.accepted[0].data)["alarm_id"] == text
