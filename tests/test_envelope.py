"""Envelope v1, topics and wire formats: the contracts both sides program against."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edge_agent.contract.envelope import (
    CATALOG,
    Hierarchy,
    Retention,
    UnknownEventType,
    _UlidFactory,
    new_event,
    new_ulid,
    schema,
)
from edge_agent.contract.topics import GatewayTopics, TopicError, parse_topic, shared_subscription
from edge_agent.contract.wire import Ack, AckError, encode_batch, iter_ranges, to_ranges

H = Hierarchy(district="371312", street="371312001", community="371312001001", gateway="gw-0001")
VALIDATOR = jsonschema.Draft7Validator(schema())

SAMPLE_DATA = {
    "gate.state": {"door": "open", "lock": "unlocked"},
    "gate.access": {"result": "granted", "credential_hash": "sha256:" + "ab" * 32,
                    "method": "card", "direction": "in"},
    "smoke.reading": {"density_db_m": 0.02, "temperature_c": 24.5, "battery_pct": 88},
    "water.level": {"level_m": 1.2},
    "water.pressure": {"pressure_kpa": 310.5},
    "sensor.reading": {"kind": "meter", "quantities": {"voltage": {"value": 230.1, "unit": "V"},
                                                       "energy": {"value": 12, "unit": "kWh"}}},
    "device.alarm": {"state": "raised", "alarm_id": "a-1", "alarm_type": "elevator.fault",
                     "kind": "elevator", "fault_code": 3},
    "camera.health": {"fps": 12.5, "width": 640, "height": 360, "last_frame_age_s": 0.4},
    "device.online": {"offline_s": 12.0},
    "device.offline": {"reason": "timeout"},
    "gateway.heartbeat": {"uptime_s": 10, "outbox_events": 0},
    "gateway.driver_installed": {"driver": "simulated", "version": "1.2.0",
                                 "previous": "builtin", "keyids": ["ab" * 32]},
    "gateway.driver_rolled_back": {"driver": "simulated", "version": "1.1.0",
                                   "previous": "1.2.0", "reason": "crashed: boom"},
    "camera.video_worker_restarted": {"worker": 0, "reason": "killed by SIGABRT",
                                      "restarts": 1, "cameras": 8, "retry_in_s": 0.8},
    "gateway.driver_refused": {"driver": "simulated", "version": "1.0.0",
                               "reason": "downgrade: older than 1.1.0"},
    "gateway.data_loss": {"reason": "outbox_full", "evicted": 2, "seq_ranges": [[3, 4]],
                          "by_type": {"smoke.reading": {"count": 2,
                                                        "first_time": "2026-11-28T00:00:00.000Z",
                                                        "last_time": "2026-11-28T00:00:01.000Z"}}},
    **{f"{kind}.chattering": {"state": "raised", "alarm_id": "c-1", "alarm_type": alarm,
                              "toggles": 11}
       for kind, alarm in (("gate", "gate.forced_open"), ("smoke", "smoke.alarm"),
                           ("water", "water.leak"), ("camera", "camera.tamper"))},
    "device.chattering": {"state": "raised", "alarm_id": "c-1", "alarm_type": "pump.failure",
                          "toggles": 11},
}


def test_catalog_and_schema_agree() -> None:
    assert set(schema()["properties"]["type"]["enum"]) == set(CATALOG)
    typed = {c["if"]["properties"]["type"]["const"] for c in schema()["allOf"]}
    assert typed == set(CATALOG)


@pytest.mark.parametrize("type_", sorted(CATALOG))
def test_every_catalog_type_mints_a_valid_event(type_: str) -> None:
    data = SAMPLE_DATA.get(type_, {"state": "raised", "alarm_id": "a-1"})
    event = new_event(H, "dev-1", type_, data).stamped("0123456789abcdef", 7)
    body = json.loads(event.to_json())
    VALIDATOR.validate(body)
    assert body["source"] == "/371312/371312001/371312001001/gw-0001/dev-1"
    assert body["severity"] == CATALOG[type_].severity
    assert list(body)[:3] == ["specversion", "id", "source"]


@pytest.mark.parametrize(("type_", "data", "needle"), [
    ("smoke.alarm", {"state": "on", "alarm_id": "x"}, "state"),
    ("smoke.alarm", {"state": "raised"}, "alarm_id"),
    ("gate.access", {"result": "granted", "credential": "12345678"}, "credential"),
    ("water.level", {"level_cm": 3}, "level_m"),
    ("smoke.chattering", {"state": "raised", "alarm_id": "c"}, "alarm_type"),
    ("smoke.chattering", {"state": "raised", "alarm_id": "c", "alarm_type": "water.leak"},
     "alarm_type"),
    ("sensor.reading", {"kind": "meter", "quantities": {"v": {"value": 1, "unit": "volt"}}},
     "unit"),
    ("sensor.reading", {"kind": "meter", "quantities": {"v": {"value": "1", "unit": "V"}}},
     "value"),
    ("sensor.reading", {"kind": "meter", "quantities": {}}, "quantities"),
    ("sensor.reading", {"quantities": {"v": {"value": 1, "unit": "V"}}}, "kind"),
    ("sensor.reading", {"kind": "meter", "quantities": {"Volt age": {"value": 1, "unit": "V"}}},
     "quantities"),
    ("device.alarm", {"state": "raised", "alarm_id": "a", "kind": "x"}, "alarm_type"),
    ("device.alarm", {"state": "raised", "alarm_id": "a", "kind": "x", "alarm_type": "fault"},
     "alarm_type"),
    ("device.alarm", {"state": "raised", "alarm_id": "a", "kind": "x",
                      "alarm_type": "smoke.alarm"}, "alarm_type"),
])
def test_schema_rejects_bad_data(type_: str, data: dict[str, object], needle: str) -> None:
    body = json.loads(new_event(H, "d", type_, data).stamped("0123456789abcdef", 1).to_json())
    errors = list(VALIDATOR.iter_errors(body))
    assert errors
    assert any(needle in f"{e.message} {list(e.absolute_path)} {e.schema}" for e in errors)


def test_unstamped_event_is_not_valid_on_the_wire() -> None:
    body = json.loads(new_event(H, "d", "water.level", {"level_m": 1}).to_json())
    assert "seq" not in body
    assert not VALIDATOR.is_valid(body)


def test_unknown_type_is_refused() -> None:
    with pytest.raises(UnknownEventType):
        new_event(H, "d", "smoke.alarmed", {})


def test_ulids_are_monotonic_and_well_formed() -> None:
    ids = [new_ulid(1_800_000_000_000) for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert all(len(i) == 26 and i.isalnum() for i in ids)


def test_ulid_encodes_the_timestamp() -> None:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    ulid = _UlidFactory()(1_795_840_906_123)
    ms = 0
    for ch in ulid[:10]:
        ms = ms * 32 + alphabet.index(ch)
    assert ms == 1_795_840_906_123


def test_retention_classes() -> None:
    assert CATALOG["smoke.alarm"].retention is Retention.ALARM
    assert CATALOG["gateway.data_loss"].retention is Retention.ALARM
    assert CATALOG["smoke.reading"].retention is Retention.TELEMETRY


def test_topics_roundtrip() -> None:
    t = GatewayTopics("371312", "371312001001", "gw-0001")
    assert t.events == "cd/v1/371312/371312001001/gw-0001/events"
    assert parse_topic(t.ack) == (t, "ack")
    assert shared_subscription("collectors") == "$share/collectors/cd/v1/+/+/+/events"


@pytest.mark.parametrize("topic", [
    "cd/v1/371312/c/gw/events/extra", "cd/v2/371312/c/gw/events", "cd/v1/37131/c/gw/events",
    "cd/v1/371312/c/gw/telemetry", "cd/v1/371312/c/../events", "cd/v1/371312/c/+/events",
    "cd/v1/371312/c/gw\n/events", "cd/v1/371312/c\n/gw/events"])
def test_bad_topics_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


def test_ack_roundtrip_and_ranges() -> None:
    assert to_ranges([5, 1, 2, 3, 9, 8]) == [[1, 3], [5, 5], [8, 9]]
    assert list(iter_ranges([[1, 3], [5, 5]])) == [1, 2, 3, 5]
    ack = Ack("0123456789abcdef", [[1, 3]], [[4, 4]])
    assert Ack.decode(ack.encode()) == ack
    assert ack.seqs() == {1, 2, 3, 4}
    assert encode_batch(['{"a":1}', '{"b":2}']) == b'[{"a":1},{"b":2}]'


@pytest.mark.parametrize("payload", [
    b"", b"not json", b"[]", b'{"v":2,"epoch":"e"}', b'{"v":1}',
    b'{"v":1,"epoch":"e","committed":[[3,1]]}', b'{"v":1,"epoch":"e","committed":[[0,1]]}',
    b'{"v":1,"epoch":"e","committed":[[1,99999999]]}', b'{"v":1,"epoch":"e","rejected":"x"}',
    b'\xff\xfe'])
def test_bad_acks_are_refused(payload: bytes) -> None:
    with pytest.raises(AckError):
        Ack.decode(payload)


def test_endpoint_from_broker_url() -> None:
    from edge_agent.config.models import TlsConfig
    from edge_agent.contract.mqtt import Endpoint

    plain = Endpoint.for_broker("mqtt://127.0.0.1", username=None, password=None, tls=None,
                                protocol="auto", keepalive_s=30)
    assert (plain.host, plain.port, plain.use_tls) == ("127.0.0.1", 1883, False)
    tls = Endpoint.for_broker("mqtts://127.0.0.1:8884", username="gw", password=None,
                              tls=TlsConfig(), protocol="5", keepalive_s=30)
    assert (tls.port, tls.use_tls, tls.describe()) == (8884, True, "mqtts://127.0.0.1:8884")
