"""collector.fast_envelope: never looser than the full check, and used for good events.

The invariant is checked by property: events mutated one to three fields at a time towards
every kind of near miss; whenever the fast path calls one plainly valid, the full check
(envelope schema, topic, source) finds nothing wrong with its envelope, and the validator
with its fast path reports exactly what the full check reports.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.fast_envelope import KNOWN, MEMO_MAX, Rules, plainly_valid
from collector.validate import _problem as problem
from collector.validate import check_payload, full_problem
from edge_agent.contract.envelope import schema
from tests.test_collector_support import alarm, as_dict, batch, new_epoch, reading, topics

EPOCH = new_epoch()
TOPIC = topics("gw-a")
RULES = Rules.of(schema())
assert RULES is not None


def _good() -> list[dict[str, Any]]:
    return [as_dict(reading("gw-a", EPOCH, 7)), as_dict(alarm("gw-a", EPOCH, 8)),
            as_dict(alarm("gw-a", EPOCH, 9, "cleared"))]


def _near(value: Any) -> st.SearchStrategy[Any]:
    """Values near a good one: edits of its text, other JSON kinds, edge numbers."""
    texts: list[st.SearchStrategy[Any]] = []
    if isinstance(value, str):
        texts = [
            st.just(value + "\n"), st.just(" " + value), st.just(value.lower()),
            st.just(value.upper()), st.just(value[:-1]), st.just(value + value[-1:]),
            st.just(value * 6),
            st.builds(lambda i, c: value[:i] + c + value[i + 1:],
                      st.integers(0, max(0, len(value) - 1)),
                      st.sampled_from(list("09aZ/-_.:TZ\n\x00é9"))),
        ]
    return st.one_of(*texts, st.none(), st.booleans(), st.integers(-2, 2**64),
                     st.floats(allow_nan=False), st.just(13.0), st.text(max_size=70),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(), st.integers(),
                                                                         max_size=2))


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    event = copy.deepcopy(draw(st.sampled_from(_good())))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*sorted(KNOWN), "extra"]))
        action = draw(st.sampled_from(["drop", "set", "set"]))
        if action == "drop":
            event.pop(key, None)
        else:
            event[key] = draw(_near(event.get(key, "x")))
    return event


@st.composite
def odd_times(draw: st.DrawFn) -> str:
    """Times that match the pattern, real or not (Feb 30th, hour 24, second 60 …)."""
    digits = st.integers(0, 99)
    y = draw(st.integers(0, 9999))
    mo, d, h, mi, s = (draw(digits) for _ in range(5))
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{draw(st.integers(0, 999)):03d}Z"


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(mutated())
def test_the_fast_path_finds_what_the_full_check_finds(event: dict[str, Any]) -> None:
    found = full_problem(event, TOPIC, None)
    if plainly_valid(event, TOPIC, RULES):  # the envelope is good: only data may be wrong
        assert found is None or found.startswith("data"), event
    assert problem(event, TOPIC, None) == found


@settings(max_examples=2000, deadline=None)
@given(odd_times())
def test_times_the_fast_path_takes_are_real(time: str) -> None:
    event = {**_good()[0], "time": time}
    if plainly_valid(event, TOPIC, RULES):
        assert full_problem(event, TOPIC, None) is None, time


def test_good_events_take_the_fast_path_and_still_get_their_data_checked() -> None:
    for event in _good():
        assert plainly_valid(event, TOPIC, RULES)
    bad_data = {**_good()[1], "data": {"state": "burning", "alarm_id": "x"}}
    assert plainly_valid(bad_data, TOPIC, RULES)
    verdict = check_payload(batch([alarm("gw-a", EPOCH, 8)]).replace(b'"raised"', b'"burning"'),
                            TOPIC)
    assert not verdict.accepted
    assert "data.state must be one of ['raised', 'cleared']" in verdict.rejected[0].reason


@pytest.mark.parametrize("change", [
    "29th of February in a leap year", "another gateway's topic", "a trailing newline",
])
def test_near_misses_take_the_full_path(change: str) -> None:
    event = _good()[0]
    if change == "29th of February in a leap year":
        event["time"] = "2024-02-29T10:00:00.000Z"  # real, but past the 28th: full path
        assert not plainly_valid(event, TOPIC, RULES)
        assert full_problem(event, TOPIC, None) is None
        return
    if change == "another gateway's topic":
        assert not plainly_valid(event, topics("gw-b"), RULES)
        return
    event["epoch"] += "\n"  # re.search with `$` lets this through; fullmatch does not
    assert not plainly_valid(event, TOPIC, RULES)


def _schema_with(edit: Any) -> dict[str, Any]:
    changed = copy.deepcopy(schema())
    edit(changed)
    return changed


@pytest.mark.parametrize("edit", [
    lambda s: s["properties"].update(color={"type": "string"}),
    lambda s: s.update(additionalProperties=True),
    lambda s: s["required"].remove("severity"),
    lambda s: s["properties"]["seq"].update(type="number"),
    lambda s: s["properties"]["source"].update(minLength=40),
    lambda s: s["properties"]["data"].update(required=["x"]),
    lambda s: s["properties"]["street"].update({"$ref": "#/$defs/time"}),
    lambda s: s["$defs"]["time"].update(format="date-time"),
], ids=["new property", "open object", "optional field", "number seq", "new source rule",
        "stricter data", "street unlike subject", "other time format"])
def test_a_schema_of_another_shape_turns_the_fast_path_off(edit: Any) -> None:
    assert Rules.of(_schema_with(edit)) is None


def test_rules_are_read_from_the_schema() -> None:
    def lower_case_segments(s: dict[str, Any]) -> None:
        s["$defs"]["segment"]["pattern"] = "^[a-z0-9-]{1,64}$"
    rules = Rules.of(_schema_with(lower_case_segments))
    assert rules is not None
    event = _good()[0]
    assert plainly_valid(event, TOPIC, rules)
    event["subject"] = "Smoke-01"
    event["source"] = event["source"].rsplit("/", 1)[0] + "/Smoke-01"
    assert not plainly_valid(event, TOPIC, rules)


def test_the_segment_memo_is_bounded() -> None:
    rules = Rules.of(schema())
    assert rules is not None
    for i in range(MEMO_MAX + 10):
        event = _good()[0]
        event["subject"] = f"dev-{i}"
        event["source"] = event["source"].rsplit("/", 1)[0] + f"/dev-{i}"
        assert plainly_valid(event, TOPIC, rules)
        assert len(rules.good_segments) <= MEMO_MAX
