"""Status page parts on their own: activity, reasons, Host policy, credential, catalogs."""

from __future__ import annotations

import base64
import json
import time
from importlib import resources

import pytest

from edge_agent.contract.envelope import CATALOG, Hierarchy, Severity, new_event
from edge_agent.pipeline.open_alarms import OpenAlarm as KeptAlarm
from edge_agent.rules import engine as rules_engine
from edge_agent.rules.engine import new_alarm_id
from edge_agent.status.access import Credential, HostPolicy, split_host
from edge_agent.status.activity import Activity
from edge_agent.status.reasons import RULES, reason_code, scrub
from edge_agent.status.throttle import client_key

H = Hierarchy(district="371312", street="371312001", community="371312001001", gateway="gw-u")
SNAP = "01KB2ZQ5E8Y3V0N7W1T6G4H9C2"


def catalog(lang: str) -> dict[str, str]:
    text = resources.files("edge_agent.status").joinpath(f"i18n/{lang}.json").read_text("utf-8")
    loaded: dict[str, str] = json.loads(text)
    return loaded


def test_activity_opens_and_clears_alarms_by_device_type_and_id() -> None:
    act = Activity()
    act.record(new_event(H, "smoke-1", "smoke.alarm", {"state": "raised", "alarm_id": "a1"}))
    act.record(new_event(H, "gate-1", "gate.held_open", {"state": "raised", "alarm_id": "a1"}))
    act.record(new_event(H, "smoke-1", "smoke.reading", {"density_db_m": 0.1}))
    act.record(new_event(H, "gw-u", "gateway.heartbeat", {"uptime_s": 1}))
    opened = act.open_alarms()
    assert [(a.device, a.type) for a in opened] == [("smoke-1", "smoke.alarm"),
                                                     ("gate-1", "gate.held_open")]
    assert [e.type for e in act.recent] == ["smoke.alarm", "gate.held_open"]  # no telemetry
    act.record(new_event(H, "smoke-1", "smoke.alarm", {"state": "cleared", "alarm_id": "a1"}))
    assert [a.device for a in act.open_alarms()] == ["gate-1"]


def test_activity_closes_alarms_by_their_clear_whatever_its_severity() -> None:
    """The engines send clears with severity info (rules, serial-line zones, video health);
    a raise configured down to info is still an open alarm; motion is no alarm."""
    act = Activity()
    act.record(new_event(H, "smoke-1", "smoke.alarm", {"state": "raised", "alarm_id": "a1"}))
    act.record(new_event(H, "panel", "smoke.fault", {"state": "raised", "alarm_id": "f1"},
                         severity=Severity.INFO))
    act.record(new_event(H, "cam-1", "camera.motion", {"state": "raised", "alarm_id": "m1"}))
    assert [(a.device, a.severity) for a in act.open_alarms()] == [("smoke-1", "critical"),
                                                                    ("panel", "info")]
    act.record(new_event(H, "smoke-1", "smoke.alarm", {"state": "cleared", "alarm_id": "a1"},
                         severity=Severity.INFO))
    act.record(new_event(H, "panel", "smoke.fault", {"state": "cleared", "alarm_id": "f1"},
                         severity=Severity.INFO))
    assert act.open_alarms() == []


def test_activity_lists_again_the_alarms_a_driver_takes_back_after_a_restart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The engine's ULIDs from a factory of its own: the shared one is monotonic across tests,
    # and one that ran before in this process may have minted a later time than now.
    monkeypatch.setattr(rules_engine, "new_ulid", type(rules_engine.new_ulid)())
    raised_at = time.time()  # an id minted now carries now
    rules_id = new_alarm_id("smoke-1", "smoke.alarm", raised_at)
    act = Activity()
    act.restore("smoke-1", [KeptAlarm("smoke.alarm", rules_id, {"density_db_m": 0.2}),
                            KeptAlarm("camera.motion", "m1", {})])
    act.restore("panel", [KeptAlarm("smoke.fault", "no-ulid-here", {"zone": "07"})])
    opened = {a.device: a for a in act.open_alarms()}
    assert set(opened) == {"smoke-1", "panel"}  # motion is no alarm
    assert opened["smoke-1"].raised_at == pytest.approx(raised_at, abs=0.5)
    assert opened["smoke-1"].severity == "critical"
    assert opened["smoke-1"].data == {"state": "raised", "alarm_id": rules_id,
                                      "density_db_m": 0.2}
    assert opened["panel"].raised_at == pytest.approx(time.time(), abs=60)  # unknown: now
    act.record(new_event(H, "smoke-1", "smoke.alarm", {"state": "cleared", "alarm_id": rules_id},
                         severity=Severity.INFO))
    assert [a.device for a in act.open_alarms()] == ["panel"]


def test_activity_is_bounded_and_hides_credential_hashes() -> None:
    act = Activity(recent_max=5, open_max=3)
    for i in range(10):
        act.record(new_event(H, "w", "water.leak", {"state": "raised", "alarm_id": f"x{i}"}))
    act.record(new_event(H, "g", "gate.access", {"result": "granted",
                                                 "credential_hash": "sha256:" + "0" * 64}))
    assert len(act.recent) == 5 and len(act.open) == 3
    assert [a.alarm_id for a in act.open_alarms()] == ["x9", "x8", "x7"]
    assert act.recent[-1].data == {"result": "granted"}


@pytest.mark.parametrize(("snapshot", "kept"), [
    ({"id": SNAP, "bytes": 10, "sha256": "ab"}, SNAP),
    ({"id": "../../etc/passwd"}, None),
    ({"id": SNAP.lower()}, None),
    ("not-a-dict", None),
])
def test_snapshot_ids_are_strict_ulids(snapshot: object, kept: str | None) -> None:
    act = Activity()
    act.record(new_event(H, "cam-1", "camera.tamper",
                         {"state": "raised", "alarm_id": "t1", "snapshot": snapshot}))
    assert act.open_alarms()[0].snapshot == kept
    assert len(act.snapshots) == (1 if kept else 0)
    assert "snapshot" not in act.recent[-1].data


@pytest.mark.parametrize(("reason", "code"), [
    ("tcp://127.0.0.1:502 unit 1: no answer within 1.0 s (3 failed polls)", "timeout"),
    ("[Errno 111] Connection refused", "refused"),
    ("[Errno 113] No route to host", "unreachable"),
    ("cannot open: [Errno 2] No such file or directory: '/dev/ttyUSB0'", "port"),
    ("unit 3: read input_register 0+4 refused with exception 2 (illegal data address)",
     "device_exception"),
    ("tcp://127.0.0.1:502 unit 1: read discrete_input 0..0: no reply within 0.3s "
     "(2 failed polls)", "timeout"),
    ("rtu:/dev/ttyUSB0 unit 2: no valid reply within 1s, only garbage", "corrupt"),
    ("tcp://127.0.0.1:502: connection lost: [Errno 104] reset", "reset"),
    ("HTTP 401 Unauthorized from http://127.0.0.1:8000/onvif/device_service", "auth"),
    ("bad CRC in reply", "corrupt"),
    ("no frames for 10 s", "video"),
    ("something new", "other"),
])
def test_reasons_map_to_plain_words_codes(reason: str, code: str) -> None:
    assert reason_code(reason) == code


def test_scrub_removes_url_credentials() -> None:
    assert scrub("rtsp://admin:hunter2@127.0.0.1:554/live failed") == \
        "rtsp://***@127.0.0.1:554/live failed"


@pytest.mark.parametrize(("header", "local", "ok"), [
    ("192.168.1.20:8080", "192.168.1.20", True),     # what staff type: the box's own IP
    ("192.168.1.20", "::ffff:192.168.1.20", True),
    ("192.168.1.99:8080", "192.168.1.20", False),    # another IP: rebinding or a typo
    ("127.0.0.1:8080", "127.0.0.1", True),
    ("[::1]:8080", "::1", True),
    ("localhost:8080", "127.0.0.1", True),
    ("gw-0001:8080", "192.168.1.20", True),
    ("GW-0001.local.", "192.168.1.20", True),
    ("status.community.example", "192.168.1.20", True),
    ("cam.wy.example", "192.168.1.20", True),
    ("evil.example:8080", "192.168.1.20", False),
    ("", "127.0.0.1", False),
    (None, "127.0.0.1", False),
])
def test_host_policy(header: str | None, local: str, ok: bool) -> None:
    policy = HostPolicy(["status.community.example", "*.wy.example"], hostname="gw-0001")
    assert policy.allows(header, local) is ok


def test_split_host() -> None:
    assert split_host("[fe80::1]:8080") == "fe80::1"
    assert split_host("Example.ORG:80") == "example.org"


def test_credential_sessions_and_headers() -> None:
    cred = Credential("pa:ss")
    basic = "Basic " + base64.b64encode(b"staff:pa:ss").decode()
    assert cred.authorization_valid(basic) and cred.authorization_valid("Bearer pa:ss")
    assert not cred.authorization_valid("Bearer wrong")
    assert not cred.authorization_valid("Basic !!!")
    token = cred.open_session()
    assert cred.session_valid(token) and not cred.session_valid("forged")
    cred.close_session(token)
    assert not cred.session_valid(token)
    nothing = Credential(None)
    assert not nothing.configured and not nothing.matches("") and not nothing.session_valid("x")


def test_catalogs_have_the_same_keys_and_cover_states_reasons_and_event_types() -> None:
    zh, en = catalog("zh-CN"), catalog("en")
    assert set(zh) == set(en)
    needed = {f"event.{t}" for t in CATALOG} | {f"reason.{code}" for code, _ in RULES}
    needed |= {"reason.other"} | {f"state.{s}" for s in ("online", "offline", "error", "unknown")}
    assert needed <= set(zh), sorted(needed - set(zh))
    assert zh["uplink.offline_since"].startswith("离线自")
    assert all(v.strip() for v in zh.values()) and all(v.strip() for v in en.values())


@pytest.mark.parametrize(("remote", "key"), [
    ("192.168.1.20", "192.168.1.20"),
    ("::ffff:192.168.1.20", "192.168.1.20"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb:cccc:dddd:eeee", "2001:db8:1:2::/64"),  # same host's /64: one line
    ("fe80::1%eth0", "fe80::/64"),
    (None, "?"),
    ("not-an-address", "not-an-address"),
])
def test_guess_lines_are_per_ipv4_address_and_per_ipv6_64(remote: str | None, key: str) -> None:
    assert client_key(remote) == key


def test_activity_keeps_as_many_alarms_as_the_pipeline_and_lists_the_first_ones() -> None:
    from edge_agent.pipeline.open_alarms import MAX_OPEN

    act = Activity()
    assert act.open_max == MAX_OPEN
    for n in range(300):
        act.record(new_event(H, "panel", "smoke.fault", {"state": "raised", "alarm_id": f"f{n}"}))
        if n % 100 == 0:
            act.record(new_event(H, "panel", "smoke.alarm",
                                 {"state": "raised", "alarm_id": f"a{n}"}))
    listed = act.open_alarms(50)
    assert listed == act.open_alarms()[:50]
    assert [a.alarm_id for a in listed[:4]] == ["a200", "a100", "a0", "f299"]
    assert len(act.open) == 303


def test_the_schema_bounds_the_alarm_list_as_the_document_does() -> None:
    from edge_agent.status.snapshot import ALARMS_LISTED

    schemas = resources.files("edge_agent.contract.schemas")
    doc = json.loads(schemas.joinpath("status-v1.schema.json").read_text("utf-8"))
    assert doc["properties"]["alarms"]["maxItems"] == ALARMS_LISTED
    assert "alarms_not_listed" in doc["required"]
