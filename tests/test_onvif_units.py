"""Pure parts of the ONVIF driver: the topic table, notification parsing, the snapshot
ring, defensive XML and the options model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from lxml import etree
from pydantic import ValidationError

from drivers.onvif.alarms import CameraAlarms
from drivers.onvif.client import redact_url, with_credentials
from drivers.onvif.notifications import parse_messages
from drivers.onvif.options import OnvifCamera, SnapshotOptions
from drivers.onvif.simulator.services import HOSTILE_BODY
from drivers.onvif.snapshots import SNAPSHOT_ID, SnapshotRing
from drivers.onvif.topics import CAMERA_EVENT_TYPES, Notification, map_notification
from drivers.onvif.xmlsafe import HostileXml, parse_untrusted
from edge_agent.contract.envelope import ALARM_TYPES, CATALOG
from edge_agent.sdk.testing import RecordingSink

#: topic, source, data, operation -> (type, active) or None
CASES = [
    ("tns1:RuleEngine/CellMotionDetector/Motion", {"IsMotion": "true"}, "Changed",
     ("camera.motion", True)),
    ("tns1:RuleEngine/CellMotionDetector/Motion", {"IsMotion": "false"}, "Changed",
     ("camera.motion", False)),
    ("tt:VideoSource/MotionAlarm", {"State": "1"}, "", ("camera.motion", True)),
    ("tns1:RuleEngine/TamperDetector/Tamper", {"IsTamper": "TRUE"}, "Changed",
     ("camera.tamper", True)),
    ("tns1:VideoSource/ImageTooBlurry/AnalyticsService", {"State": "true"}, "Changed",
     ("camera.tamper", True)),
    ("tns1:VideoSource/ImageTooDark/ImagingService", {"State": "true"}, "Changed",
     ("camera.tamper", True)),
    ("tns1:VideoSource/GlobalSceneChange/AnalyticsService", {"State": "false"}, "Changed",
     ("camera.tamper", False)),
    ("tns1:RuleEngine/FieldDetector/ObjectsInside", {"IsInside": "true"}, "Changed",
     ("camera.intrusion", True)),
    ("tns1:RuleEngine/LineDetector/Crossed", {"ObjectId": "7"}, "", ("camera.line_crossing",
                                                                      None)),
    ("tns1:RuleEngine/LineDetector/Crossed", {}, "Initialized", None),
    ("tns1:VideoSource/SignalLoss", {"State": "true"}, "Changed", ("camera.video_loss", True)),
    ("tns1:RuleEngine/CellMotionDetector/Motion//.", {"IsMotion": "true"}, "Initialized",
     ("camera.motion", True)),
    ("tns1:RuleEngine/CellMotionDetector/Motion", {"IsMotion": "maybe"}, "Changed", None),
    ("tns1:RuleEngine/CellMotionDetector/Motion", {"IsMotion": "true"}, "Deleted",
     ("camera.motion", False)),
    ("tns1:Device/Trigger/DigitalInput", {"LogicalState": "true"}, "Changed", None),
    ("tns1:Monitoring/ProcessorUsage", {"Value": "12"}, "Changed", None),
]


@pytest.mark.parametrize(("topic", "data", "operation", "expected"), CASES)
def test_topic_table(topic: str, data: dict[str, str], operation: str,
                     expected: tuple[str, bool | None] | None) -> None:
    mapped = map_notification(Notification(topic, {"Rule": "R1"}, data, operation))
    assert (None if mapped is None else (mapped.type, mapped.active)) == expected
    if mapped is not None:
        assert mapped.type in CATALOG and mapped.data["rule"] == "R1"
        assert (mapped.active is None) == (mapped.type not in ALARM_TYPES)


def test_every_mapped_type_is_in_the_catalog() -> None:
    assert set(CATALOG) >= CAMERA_EVENT_TYPES


def test_parse_messages_from_zeep_objects_and_raw_elements() -> None:
    item = SimpleNamespace
    parsed = item(Topic=item(_value_1="tns1:RuleEngine/CellMotionDetector/Motion"),
                  Message=item(_value_1=item(
                      Source=item(SimpleItem=[item(Name="Rule", Value="R")]),
                      Data=item(SimpleItem=[item(Name="IsMotion", Value="true")]),
                      PropertyOperation="Changed", UtcTime=None)))
    raw = etree.fromstring(
        '<tt:Message xmlns:tt="http://www.onvif.org/ver10/schema" UtcTime="2026-01-01T00:00:00Z"'
        ' PropertyOperation="Initialized"><tt:Source><tt:SimpleItem Name="Rule" Value="Q"/>'
        '</tt:Source><tt:Data><tt:SimpleItem Name="State" Value="false"/></tt:Data>'
        "</tt:Message>")
    odd = item(Topic=None, Message=None)
    reply = item(NotificationMessage=[parsed, item(Topic="tns1:VideoSource/SignalLoss",
                                                   Message=item(_value_1=raw)), odd])
    msgs = parse_messages(reply)
    assert [(m.source, m.data, m.operation) for m in msgs] == [
        ({"Rule": "R"}, {"IsMotion": "true"}, "Changed"),
        ({"Rule": "Q"}, {"State": "false"}, "Initialized")]
    assert msgs[1].utc_time == 1767225600.0
    assert parse_messages(item()) == []


async def test_alarm_book_raises_once_and_clears_with_the_same_id() -> None:
    sink = RecordingSink()
    alarms = CameraAlarms("cam-1", sink, SnapshotOptions(enabled=False), None, lambda: 0.0)
    motion = "tns1:RuleEngine/CellMotionDetector/Motion"
    await alarms.handle([Notification(motion, {"Rule": "A"}, {"IsMotion": "true"}, "Changed"),
                         Notification(motion, {"Rule": "A"}, {"IsMotion": "true"}, "Changed"),
                         Notification(motion, {"Rule": "B"}, {"IsMotion": "true"}, "Changed"),
                         Notification(motion, {"Rule": "A"}, {"IsMotion": "false"}, "Changed"),
                         Notification(motion, {"Rule": "A"}, {"IsMotion": "false"}, "Changed")])
    states = [(e.data["rule"], e.data["state"], e.data["alarm_id"]) for e in sink.events]
    assert [s[:2] for s in states] == [("A", "raised"), ("B", "raised"), ("A", "cleared")]
    assert states[0][2] == states[2][2] != states[1][2]
    alarms.channel_lost("test")
    alarms.channel_lost("again")  # one alarm while lost
    alarms.channel_up()
    alarms.channel_up()
    assert [e.data["state"] for e in sink.of("camera.events_lost")] == ["raised", "cleared"]
    assert sink.invalid == []


async def test_alarm_book_is_bounded_whatever_sources_the_camera_invents() -> None:
    from drivers.onvif.alarms import ACTIVE_MAX

    sink = RecordingSink()
    alarms = CameraAlarms("cam-1", sink, SnapshotOptions(enabled=False), None, lambda: 0.0)
    motion = "tns1:RuleEngine/CellMotionDetector/Motion"
    await alarms.handle([Notification(motion, {"Rule": f"r{i}"}, {"IsMotion": "true"})
                         for i in range(ACTIVE_MAX + 10)])
    assert len(alarms.active) == ACTIVE_MAX == len(sink.of("camera.motion"))
    await alarms.handle([Notification(motion, {"Rule": "r0"}, {"IsMotion": "false"})])
    await alarms.handle([Notification(motion, {"Rule": "new"}, {"IsMotion": "true"})])
    assert len(alarms.active) == ACTIVE_MAX and "new" in sink.of("camera.motion")[-1].data["rule"]


def _jpeg(n: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + bytes([n % 256]) * 1000


async def test_snapshot_ring_bounds_atomic_names_and_refuses_junk(tmp_path: Path) -> None:
    ring = SnapshotRing(tmp_path / "snaps", max_bytes=3500, max_files=5)
    refs = [await ring.store(_jpeg(i)) for i in range(6)]
    names = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    assert names == [f"{r.id}.jpg" for r in refs[-3:]]  # 3 x 1004 bytes fit in 3500
    assert all(SNAPSHOT_ID.match(r.id) for r in refs)
    assert not list((tmp_path / "snaps").glob(".*"))  # no temporary file left
    with pytest.raises(ValueError, match="not a JPEG"):
        await ring.store(b"<html>401</html>")
    assert ring.path("../../etc/passwd") is None
    ring2 = SnapshotRing(tmp_path / "s2", max_bytes=10**6, max_files=2)
    await asyncio.gather(*(ring2.store(_jpeg(i)) for i in range(5)))
    assert len(list((tmp_path / "s2").iterdir())) == 2


@pytest.mark.parametrize("doc", [
    HOSTILE_BODY,
    b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "http://127.0.0.1:1/x.dtd"><x/>',
    b"<unclosed>",
    b"x" * (1024 * 1024 + 1),
])
def test_untrusted_xml_is_refused(doc: bytes) -> None:
    with pytest.raises(HostileXml):
        parse_untrusted(doc)


def test_xinclude_is_not_processed() -> None:
    root = parse_untrusted(b'<x xmlns:xi="http://www.w3.org/2001/XInclude">'
                           b'<xi:include href="/etc/passwd" parse="text"/></x>')
    assert "root:" not in etree.tostring(root).decode()


def test_credentials_only_in_memory_urls() -> None:
    url = with_credentials("rtsp://10.0.0.5:554/Streaming/102", "ad min", "p@ss:w/rd")
    assert url == "rtsp://ad%20min:p%40ss%3Aw%2Frd@10.0.0.5:554/Streaming/102"
    assert redact_url(url) == "rtsp://10.0.0.5:554/Streaming/102"
    assert with_credentials("http://h/x", None, None) == "http://h/x"


@pytest.mark.parametrize(("entry", "where", "text"), [
    ({"host": "rtsp://cam/1"}, ("host",), "looks like a URL"),
    ({"host": "admin:pw@10.0.0.1"}, ("host",), "no credentials"),
    ({"host": "10.0.0.1:80"}, ("host",), "holds a port"),
    ({"host": "300.1.1.1"}, ("host",), "not an IP address"),
    ({"username": "admin"}, ("password",), "password` is missing"),
    ({"events": {"liveness_s": 5, "pull_timeout_s": 10}}, ("events", "liveness_s"),
     "must exceed"),
    ({"snapshots": {"on": ["camera.health"]}}, ("snapshots", "on", 0), "not a camera alarm"),
    ({"video_profile": 99}, ("video_profile",), "between -16 and 15"),
])
def test_options_name_the_key(entry: dict[str, object], where: tuple[object, ...],
                              text: str) -> None:
    with pytest.raises(ValidationError) as err:
        OnvifCamera.model_validate({"id": "c", "driver": "onvif", "host": "10.0.0.1", **entry})
    found = [e for e in err.value.errors() if e["loc"] == where]
    assert found and text in found[0]["msg"], err.value.errors()


def test_options_accept_names_and_ipv6() -> None:
    for host in ("cam-1.lan", "10.0.0.1", "fe80::1", "[fe80::1]"):
        assert OnvifCamera.model_validate({"id": "c", "driver": "onvif", "host": host})


def test_the_driver_takes_the_ring_from_the_gateway_config(tmp_path: Path) -> None:
    from drivers.onvif import DRIVER
    from drivers.onvif.camera_process import PipeSink
    from drivers.onvif.driver import OnvifDriver
    from drivers.onvif.host import CameraHost
    from edge_agent.config.models import SnapshotsConfig

    sink = RecordingSink(snapshots=SnapshotsConfig(dir=tmp_path / "ring", max_files=7))
    cam = OnvifCamera.model_validate({"id": "c", "driver": "onvif", "host": "10.0.0.1"})
    drv = DRIVER.build([cam], sink)
    assert isinstance(drv, CameraHost) and drv.snapshots == sink.snapshots
    start = drv._start_message(drv.groups[0])  # what the camera worker is handed
    worker_ring = OnvifDriver([cam], PipeSink(None, start)).ring  # type: ignore[arg-type]
    assert worker_ring.dir == tmp_path / "ring" and worker_ring.max_files == 7
