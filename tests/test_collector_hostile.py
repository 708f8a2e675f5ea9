"""Hostile payloads from a real gateway account, through Mosquitto with the shipped ACL and
passwords, to a running collector: what is stored, what is quarantined, what is acked.

Each case sends one batch `[good 1, hostile 2, good 3]`: the good events must be stored
and acked whatever event 2 does, and event 2 must be quarantined with a precise reason
(and acked as rejected when it carries a usable epoch and seq).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
from aiomqtt import ProtocolVersion
from click.testing import CliRunner
from pydantic import SecretStr

from collector import validate
from collector.cli import main
from collector.ingest import Collector
from collector.store import Store, open_store
from edge_agent.contract.mqtt import Endpoint
from edge_agent.contract.wire import Ack
from tests.harness import wait_until
from tests.peers import Mosquitto
from tests.test_collector_mqtt import FAST, acks_until, db_rows, district_mosquitto, running
from tests.test_collector_support import (
    alarm,
    as_dict,
    data_loss,
    new_epoch,
    reading,
    topics,
)

__all__ = ["district_mosquitto"]  # the fixture, imported for pytest

Mutation = Callable[[dict[str, Any]], dict[str, Any]]
Build = Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class Hostile:
    name: str
    #: builds event 2 (seq 2) from the epoch
    event: Build
    reason: str
    #: acked as rejected (the event has a well-formed epoch and integer seq)
    acked: bool = True
    #: applied to the batch's JSON text (for what json.dumps cannot write)
    text: Callable[[str], str] = lambda t: t


def _with(base: Build, mutate: Mutation) -> Build:
    return lambda epoch: mutate(base(epoch))


def _reading(epoch: str) -> dict[str, Any]:
    return as_dict(reading("gw-a", epoch, 2))


def _alarm(epoch: str) -> dict[str, Any]:
    return as_dict(alarm("gw-a", epoch, 2))


def _report(epoch: str) -> dict[str, Any]:
    ev = as_dict(data_loss("gw-a", epoch, 2, [[1, 1]]))
    ev["data"]["by_type"] = {"x": ev["data"]["by_type"]["smoke.reading"]}
    return ev


def _set(path: str, value: Any) -> Mutation:
    def apply(ev: dict[str, Any]) -> dict[str, Any]:
        *parents, last = path.split(".")
        target = ev
        for p in parents:
            target = target[p]
        target[last] = value
        return ev
    return apply


HOSTILE = [
    Hostile("lone surrogate", _with(_alarm, _set("data.alarm_id", "a-\ud800")),
            "data.alarm_id: has a lone surrogate (\\ud800) at character 2"),
    Hostile("surrogate in a key", _with(_reading, _set("data.\udfff", 1)),
            "data: a key has a lone surrogate (\\udfff)"),
    Hostile("integer beyond 64 bits",
            lambda epoch: as_dict(data_loss("gw-a", epoch, 2, [[2**63, 2**63]])),
            "data.seq_ranges[0][0]: integer 9223372036854775808 does not fit in 64 bits"),
    Hostile("1e400 is infinity", _with(_reading, _set("data.temperature_c", "HUGE")),
            "data.temperature_c: number is out of range (inf)",
            text=lambda t: t.replace('"HUGE"', "1e400")),
    Hostile("NUL in a string", _with(_alarm, _set("data.alarm_id", "a\x00b")),
            "data.alarm_id: contains NUL"),
    Hostile("impossible time", _with(_reading, _set("time", "9999-99-99T99:99:99.999Z")),
            "time '9999-99-99T99:99:99.999Z' is not a real date and time"),
    Hostile("impossible time in data", _with(_report, _set("data.by_type.x.first_time",
                                                          "2026-02-30T00:00:00.000Z")),
            "data.by_type.x.first_time '2026-02-30T00:00:00.000Z' is not a real date and time"),
    Hostile("seq 13.0 is not an integer", _with(_reading, _set("seq", 2.0)),
            "seq must be a JSON integer, not 2.0", acked=False),
    Hostile("terminal escapes in the id",
            _with(_reading, lambda e: {**e, "id": "\x1b[2J\x1b]0;owned\x07",
                                       "type": "smoke.party"}),
            "event 1 (id \\x1b[2J\\x1b]0;owned\\x07): type 'smoke.party' is not in catalog v1"),
]


@dataclass
class District:
    """Mosquitto with the shipped ACL and accounts, and where a test's store lives."""

    broker: Mosquitto
    passwords: dict[str, str]
    store_url: str

    def collector_endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.broker.port, username="collector-c1",
                        password=SecretStr(self.passwords["collector-c1"]))

    @contextlib.asynccontextmanager
    async def gateway(self, gw: str) -> AsyncIterator[aiomqtt.Client]:
        async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier=f"{gw}-fake",
                                  username=gw, password=self.passwords[gw],
                                  protocol=ProtocolVersion.V5) as client:
            await client.subscribe(f"cd/v1/+/+/{gw}/ack", qos=1)  # acks of any topic it used
            yield client


@pytest.fixture
def district(district_mosquitto: tuple[Mosquitto, dict[str, str]], tmp_path: Path) -> District:
    mq, users = district_mosquitto
    return District(mq, users, f"sqlite:///{tmp_path / 'district.db'}")


def collector_for(district: District, store: Store, **kw: Any) -> Collector:
    return Collector(store, district.collector_endpoint(), client_id="collector-c1",
                     share_group="collectors", backoff=FAST, **kw)


def encode(events: list[dict[str, Any]]) -> bytes:
    return json.dumps(events).encode()  # ensure_ascii: a lone surrogate is sent as \ud800


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
async def test_one_hostile_event_does_not_poison_its_batch(
        district: District, case: Hostile) -> None:
    epoch = new_epoch()
    good = [as_dict(reading("gw-a", epoch, 1)), as_dict(reading("gw-a", epoch, 3))]
    hostile = case.event(epoch)
    payload = case.text(json.dumps([good[0], hostile, good[1]])).encode()
    store = open_store(district.store_url)
    collector = collector_for(district, store)
    async with running(collector), district.gateway("gw-a") as gw:
        await gw.publish(topics("gw-a").events, payload, qos=1)
        acks = await acks_until(gw, {1, 2, 3} if case.acked else {1, 3})
    store.close()
    assert acks == [Ack(epoch, [[1, 1], [3, 3]], [[2, 2]] if case.acked else [])]
    url = district.store_url
    assert db_rows(url, "SELECT id, seq FROM events ORDER BY seq") == [
        (good[0]["id"], 1), (good[1]["id"], 3)]
    for (data,) in db_rows(url, "SELECT data FROM events"):
        json.loads(data, parse_constant=lambda c: pytest.fail(f"{c} stored as JSON"))
    [(reason, topic, gateway)] = db_rows(
        url, "SELECT reason, topic, gateway_from_topic FROM quarantine")
    assert case.reason in reason, reason
    assert (topic, gateway) == (topics("gw-a").events, "gw-a")
    listing = CliRunner().invoke(main, ["quarantine", "--store", url])
    assert listing.exit_code == 0, listing.output
    assert not any(ch in listing.output for ch in "\x1b\x07\x00"), repr(listing.output)
    assert collector.counters.inserted == 2 and collector.counters.store_failures == 0


async def test_a_value_validation_missed_is_refused_alone_by_the_store(
        district: District, monkeypatch: pytest.MonkeyPatch) -> None:
    """Second line of defence: were validation to let an unstorable value through, the
    failed batch transaction is retried event by event; the refused one is quarantined."""
    monkeypatch.setattr(validate, "unstorable", lambda *args: None)
    epoch = new_epoch()
    surrogate = _set("data.alarm_id", "a-\ud800")(as_dict(alarm("gw-a", epoch, 2)))
    huge = as_dict(data_loss("gw-a", epoch, 4, [[2**64, 2**64]]))
    events = [as_dict(reading("gw-a", epoch, 1)), surrogate, as_dict(reading("gw-a", epoch, 3)),
              huge, as_dict(data_loss("gw-a", epoch, 5, [[6, 6]]))]
    store = open_store(district.store_url)
    collector = collector_for(district, store)
    async with running(collector), district.gateway("gw-a") as gw:
        await gw.publish(topics("gw-a").events, encode(events), qos=1)
        acks = await acks_until(gw, {1, 2, 3, 4, 5})
    store.close()
    assert acks == [Ack(epoch, [[1, 1], [3, 3], [5, 5]], [[2, 2], [4, 4]])]
    url = district.store_url
    assert db_rows(url, "SELECT seq FROM events ORDER BY seq") == [(1,), (3,), (5,)]
    quarantined = db_rows(url, "SELECT event_id, reason, raw FROM quarantine ORDER BY id")
    assert [q[0] for q in quarantined] == [surrogate["id"], huge["id"]]
    assert "the store refused it (UnicodeEncodeError" in quarantined[0][1]
    assert "the store refused it (OverflowError" in quarantined[1][1]
    assert json.loads(quarantined[0][2])["data"]["alarm_id"] == "a-\ud800"  # kept, escaped
    # the stored data_loss explains its range; nothing of the refused one is left
    assert db_rows(url, "SELECT from_seq, to_seq FROM explained_gaps") == [(6, 6)]


async def test_an_id_sent_again_with_other_content_is_kept_as_a_conflict(
        district: District) -> None:
    epoch = new_epoch()
    original = as_dict(alarm("gw-a", epoch, 1))
    forged = _set("data.state", "cleared")(json.loads(json.dumps(original)))
    store = open_store(district.store_url)
    collector = collector_for(district, store)
    async with running(collector), district.gateway("gw-a") as gw:
        t = topics("gw-a").events
        await gw.publish(t, encode([original]), qos=1)
        assert await acks_until(gw, {1}) == [Ack(epoch, [[1, 1]], [])]
        await gw.publish(t, encode([forged]), qos=1)
        assert await acks_until(gw, {1}) == [Ack(epoch, [], [[1, 1]])]
        await gw.publish(t, encode([original]), qos=1)  # the same content: a duplicate
        assert await acks_until(gw, {1}) == [Ack(epoch, [[1, 1]], [])]
    store.close()
    url = district.store_url
    [(data,)] = db_rows(url, "SELECT data FROM events WHERE id = ?", original["id"])
    assert json.loads(data)["state"] == "raised"
    [(reason, event_id, raw)] = db_rows(url, "SELECT reason, event_id, raw FROM quarantine")
    assert event_id == original["id"] and json.loads(raw)["data"]["state"] == "cleared"
    assert "conflict" in reason and reason.count("sha256:") == 2, reason
    stored_hash, received_hash = (part.split(",")[0].split(")")[0]
                                  for part in reason.split("sha256:")[1:])
    assert stored_hash != received_hash and len(stored_hash) == 64
    assert (collector.counters.conflicts, collector.counters.duplicates) == (1, 1)


async def test_a_payload_refused_whole_names_its_topic_in_its_reason_and_log_line(
        district: District) -> None:
    """A v1 payload that is no UTF-8 JSON (audit: its reason and its `payload_quarantined`
    line named no topic, where a v2 batch's did): both name the topic it came on."""
    topic = topics("gw-b").events
    store = open_store(district.store_url)
    collector = collector_for(district, store)
    with structlog.testing.capture_logs() as logs:
        async with running(collector), district.gateway("gw-b") as gw:
            await gw.publish(topic, b'[{"a":\xff}]', qos=1)
            await wait_until(lambda: collector.counters.quarantined, 20, "the quarantine")
    store.close()
    [(reason, stored_topic)] = db_rows(district.store_url,
                                       "SELECT reason, topic FROM quarantine")
    assert stored_topic == topic
    assert reason == (f"v1 batch on {topic} (gateway gw-b): payload is not UTF-8 JSON: "
                      "invalid start byte at byte 6"), reason
    assert len(reason) <= validate.REASON_MAX
    [line] = [e for e in logs if e["event"] == "payload_quarantined"]
    assert (line["topic"], line["gateway"]) == (topic, "gw-b"), line
    assert line["first_reason"] == reason
