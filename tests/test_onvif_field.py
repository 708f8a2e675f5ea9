"""Cameras as they are met in the field, against the simulator on 127.0.0.1: no
username, no events service, Basic-auth snapshots, NotAuthorized in a fault's text,
a camera that goes down for several reasons in a row, a stream that answers 503, and
camera alarms across a real agent restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from drivers.onvif.client import CameraClient
from drivers.onvif.driver import NO_EVENTS_REASON
from drivers.onvif.errors import AuthError
from drivers.onvif.host import CameraHost
from drivers.onvif.options import OnvifCamera
from drivers.onvif.simulator import OnvifSimulator
from edge_agent.config.models import SnapshotsConfig
from edge_agent.outbox.store import Outbox
from edge_agent.outbox.thread import OutboxThread
from edge_agent.pipeline.core import Pipeline
from edge_agent.pipeline.open_alarms import OpenAlarm, OpenAlarms
from edge_agent.sdk.api import DeviceState
from edge_agent.sdk.testing import TEST_HIERARCHY as H
from edge_agent.sdk.testing import RecordingSink, running
from edge_agent.status.reasons import reason_code
from tests.aio import cancel_and_wait
from tests.onvif_sim import camera, data_of, driver, in_process, wait_for
from tests.peers import free_port

pytestmark = pytest.mark.timeout(90)


async def test_a_camera_without_username_connects_and_delivers_events(tmp_path: Path) -> None:
    async with OnvifSimulator(username=None) as sim:  # an open camera, as many ship
        cam = camera(sim, tmp_path / "pw")
        assert cam.username is None and cam.password is None
        sink = RecordingSink()
        async with running(driver([cam], sink, tmp_path)):
            await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
            sim.motion(True)
            await wait_for(lambda: sink.of("camera.motion"), what="motion")
    assert sink.current["cam-1"] is DeviceState.ONLINE and "device.offline" not in sink.types()
    assert data_of(sink, "camera.motion")[0]["snapshot"]["bytes"] > 1000
    assert sim.snapshot_auth_seen and set(sim.snapshot_auth_seen) == {""}


@pytest.mark.parametrize("discovery", ["GetServices", "GetCapabilities"])
async def test_a_camera_without_events_service_stays_online_with_video_and_snapshots(
        sim: OnvifSimulator, tmp_path: Path, discovery: str) -> None:
    sim.switches.no_events = True
    if discovery == "GetCapabilities":  # an older camera: no GetServices at all
        sim.fault_on("GetServices", "Receiver", "ter:ActionNotSupported", "not supported")
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", events={"pull_timeout_s": 1, "liveness_s": 2},
                 video={"enabled": True, "sample_fps": 5, "health_interval_s": 1})
    drv = in_process([cam], sink, tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with running(drv):
            await wait_for(lambda: len(sink.of("camera.health")) >= 3, 40, "video health")
            await asyncio.sleep(3)  # longer than liveness_s: a loop would show by now
            ref = await drv.worker("cam-1").taker.take()
    assert sink.current["cam-1"] is DeviceState.ONLINE
    assert [s for s in sink.states if s[0] == "cam-1"][-1][2] == NO_EVENTS_REASON
    assert reason_code(NO_EVENTS_REASON) == "no_events", "the page says it in plain words"
    assert "camera.events_lost" not in sink.types() and "device.offline" not in sink.types()
    assert sim.requests["CreatePullPointSubscription"] == 0
    assert sim.requests["GetProfiles"] == 1, "connected once, no reconnect loop"
    assert [e for e in logs if e["event"] == "camera_without_events"].__len__() == 1
    assert not [e for e in logs if e["event"] == "camera_error"]
    assert ref is not None and sim.snapshots_served == 1
    health = data_of(sink, "camera.health")[-1]
    assert health["fps"] > 0 and health["width"] == 640


async def test_a_camera_that_cannot_subscribe_is_a_camera_without_events(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    sim.fault_on("CreatePullPointSubscription", "Receiver", "ter:ActionNotSupported",
                 "PullPoint is not supported")
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", events={"pull_timeout_s": 1, "liveness_s": 2})
    async with running(driver([cam], sink, tmp_path)):
        await wait_for(lambda: sink.current.get("cam-1") is DeviceState.ONLINE, what="online")
        await asyncio.sleep(3)  # past liveness_s
    assert sim.requests["CreatePullPointSubscription"] == 1, "asked once, no loop"
    assert sim.requests["GetDeviceInformation"] >= 2, "still watched"
    assert sink.states[-1][2] == NO_EVENTS_REASON
    assert "camera.events_lost" not in sink.types() and "device.offline" not in sink.types()


async def test_snapshot_behind_basic_auth_answers_the_challenge(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    sim.switches.basic_snapshots = True
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", snapshots={"stream_fallback": False})
    with structlog.testing.capture_logs() as logs:
        async with running(in_process([cam], sink, tmp_path)):
            await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
            sim.motion(True)
            await wait_for(lambda: sink.of("camera.motion"), what="motion")
    assert data_of(sink, "camera.motion")[0]["snapshot"]["bytes"] > 1000
    # nothing sent before the camera asked, then Basic because that is what it asked for
    assert sim.snapshot_auth_seen[:2] == ["", "basic"]
    assert [e["event"] for e in logs].count("snapshot_basic_auth") == 1
    assert "sim-password" not in json.dumps(logs, default=str)


async def test_snapshot_behind_digest_never_sends_basic(sim: OnvifSimulator) -> None:
    client = CameraClient("cam-1", "127.0.0.1", sim.port, "admin", "sim-password")
    await client.connect()
    try:
        assert (await client.snapshot("main", 1 << 22, 5))[:3] == b"\xff\xd8\xff"
        sim.switches.basic_snapshots = True
        sim.set_password("changed")
        with pytest.raises(AuthError) as err:
            await client.snapshot("main", 1 << 22, 5)
    finally:
        await client.close()
    assert sim.snapshot_auth_seen[:2] == ["", "digest"]
    assert "refused the username or password" in str(err.value)


async def test_not_authorized_in_the_fault_text_is_an_auth_error(sim: OnvifSimulator) -> None:
    sim.fault_on("GetProfiles", "Sender", "", "ter:NotAuthorized")
    client = CameraClient("cam-1", "127.0.0.1", sim.port, "admin", "sim-password")
    await client.connect()
    try:
        with pytest.raises(AuthError) as err:
            await client.profiles()
    finally:
        await client.close()
    assert err.value.operation == "GetProfiles" and err.value.kind == "auth"


async def test_a_camera_down_for_changing_reasons_is_reported_offline_once(
        tmp_path: Path) -> None:
    port = free_port()  # nothing listens yet: unreachable
    sim = OnvifSimulator(port=port)
    sink = RecordingSink()
    drv = in_process([camera(sim, tmp_path / "pw")], sink, tmp_path)
    async with running(drv):
        await wait_for(lambda: sink.current.get("cam-1") is DeviceState.OFFLINE, what="offline")
        sim.fault_on("GetDeviceInformation", "Receiver", "ter:HardwareFailure", "encoder gone")
        await sim.start()
        try:
            await wait_for(lambda: "encoder gone" in (sink.states[-1][2] or ""),
                           what="the new reason")
            failures = drv.worker("cam-1").failures
            await wait_for(lambda: drv.worker("cam-1").failures >= failures + 2,
                           what="more failures")
            sim.switches.faults.clear()
            await wait_for(lambda: sink.current["cam-1"] is DeviceState.ONLINE, what="online")
        finally:
            await sim.stop()
    assert [t for t in sink.types() if t.startswith("device.")] == \
        ["device.offline", "device.online"]
    assert "unreachable" in data_of(sink, "device.offline")[0]["reason"]


async def test_a_stream_answering_503_is_reported_as_such(sim: OnvifSimulator,
                                                          tmp_path: Path) -> None:
    sim.switches.stream_status = 503
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", video={"enabled": True, "sample_fps": 5,
                                              "open_timeout_s": 2, "no_signal_after_s": 0})
    async with running(driver([cam], sink, tmp_path)):
        lost = await wait_for(lambda: [d for d in data_of(sink, "camera.video_loss")
                                       if d["state"] == "raised"], 40, "video loss")
    reason = lost[0]["reason"]
    assert reason.startswith("HTTP 503") and "busy" in reason, reason
    assert "wrong path" not in reason and "sim-password" not in reason


async def test_onvif_answering_503_is_a_busy_camera_not_a_wrong_port(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    sim.switches.soap_status = 503
    sink = RecordingSink()
    async with running(driver([camera(sim, tmp_path / "pw")], sink, tmp_path)):
        await wait_for(lambda: sink.of("device.offline"), what="down")
        sim.switches.soap_status = 0
        await wait_for(lambda: sink.current["cam-1"] is DeviceState.ONLINE, what="online")
    reason = data_of(sink, "device.offline")[0]["reason"]
    assert "HTTP 503" in reason and "busy" in reason and "ONVIF port" not in reason, reason


# ---------------------------------------------------------------- across a restart


@contextlib.asynccontextmanager
async def agent_run(tmp_path: Path, cam: OnvifCamera) -> AsyncIterator[Pipeline]:
    """The agent's own pieces: outbox, pipeline with its open-alarm file, ONVIF driver."""
    outbox = await OutboxThread.open(tmp_path / "outbox.db", max_bytes=10**8, hierarchy=H)
    pipeline = Pipeline(H, outbox, commit_linger_s=0.01)
    pipeline.open_alarms = OpenAlarms(tmp_path / "open-alarms.json")
    pipe_task = asyncio.create_task(pipeline.run())
    try:
        snapshots = SnapshotsConfig(dir=tmp_path / "snapshots")
        async with running(CameraHost([cam], pipeline, snapshots=snapshots)):
            yield pipeline
    finally:
        await cancel_and_wait(pipe_task)
        await outbox.close()


def stored(tmp_path: Path, type_: str) -> list[dict[str, Any]]:
    with Outbox.open(tmp_path / "outbox.db", max_bytes=10**8, hierarchy=H) as box:
        rows = box.fetch(lane=1, after_seq=0, limit=1000, max_bytes=10**8)
    return [json.loads(r.body)["data"] for r in rows if r.type == type_]


async def test_a_camera_alarm_open_across_a_restart_keeps_its_id(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    cam = camera(sim, tmp_path / "pw", snapshots={"enabled": False})
    sim.tamper(True)
    async with agent_run(tmp_path, cam) as pipeline:
        seen: list[Any] = []
        pipeline.on_event = seen.append
        await wait_for(lambda: [e for e in seen if e.type == "camera.tamper"], what="tamper")
        await asyncio.sleep(0.2)  # committed
    (raised,) = stored(tmp_path, "camera.tamper")
    assert raised["state"] == "raised"
    async with agent_run(tmp_path, cam) as pipeline:  # restarted, the camera still tampered
        seen = []
        pipeline.on_event = seen.append
        created = sim.subscriptions.created
        await wait_for(lambda: sim.subscriptions.created > created and
                       sim.subscriptions.pulls, what="a new subscription")
        await asyncio.sleep(1.5)  # its Initialized state (tamper: true) has been pulled
        assert [e for e in seen if e.type == "camera.tamper"] == [], "no second raise"
        sim.tamper(False)
        await wait_for(lambda: [e for e in seen if e.type == "camera.tamper"], what="clear")
        await asyncio.sleep(0.2)
    alarms = stored(tmp_path, "camera.tamper")
    assert [a["state"] for a in alarms] == ["raised", "cleared"]
    assert alarms[1]["alarm_id"] == raised["alarm_id"]
    assert json.loads((tmp_path / "open-alarms.json").read_text("utf-8")) == {"open": []}


class RestoringSink(RecordingSink):
    """What the pipeline hands a driver at start: the camera's alarms left open."""

    def __init__(self, open_alarms: list[OpenAlarm]) -> None:
        super().__init__()
        self.open_alarms = open_alarms

    def restored_alarms(self, device: str) -> list[OpenAlarm]:
        return self.open_alarms if device == "cam-1" else []


async def test_video_and_channel_alarms_open_before_a_restart_clear_under_their_ids(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    """Video loss and a lost event channel left open by the last run: the video is fine
    and the channel comes up now, so both clear under their old ids; nothing is raised."""
    sink = RestoringSink([
        OpenAlarm("camera.video_loss", "video-before", {"reason": "stream stopped"}),
        OpenAlarm("camera.events_lost", "channel-before", {"reason": "unreachable"})])
    cam = camera(sim, tmp_path / "pw", video={"enabled": True, "sample_fps": 5,
                                              "clear_after": 2})
    async with running(driver([cam], sink, tmp_path)):
        await wait_for(lambda: sink.of("camera.video_loss") and sink.of("camera.events_lost"),
                       40, "both cleared")
    (video,) = data_of(sink, "camera.video_loss")
    (channel,) = data_of(sink, "camera.events_lost")
    assert (video["state"], video["alarm_id"]) == ("cleared", "video-before")
    assert (channel["state"], channel["alarm_id"]) == ("cleared", "channel-before")
