"""The ONVIF driver against the simulator over HTTP on 127.0.0.1, with the real
onvif-zeep-async client: events, reboot, renewal, liveness, errors, skew, hostile XML,
snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from drivers.onvif.client import CameraClient
from drivers.onvif.errors import AuthError, BadReply, SoapFault, Unreachable
from drivers.onvif.simulator import OnvifSimulator
from drivers.onvif.simulator.services import HOSTILE_BODY
from edge_agent.sdk.api import DeviceState
from edge_agent.sdk.testing import RecordingSink, running
from tests.onvif_sim import camera, data_of, driver, in_process, wait_for
from tests.peers import free_port

pytestmark = pytest.mark.timeout(60)


async def test_motion_and_tamper_arrive_as_catalog_events_within_one_pull(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    sink = RecordingSink()
    # No snapshots here: an event waits for its snapshot (up to `wait_s`), and under load
    # that wait could span another pull; this test is about delivery by the pull alone.
    cam = camera(sim, tmp_path / "pw", snapshots={"enabled": False})
    async with running(driver([cam], sink, tmp_path)):
        await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
        for fire, type_ in ((lambda: sim.motion(True), "camera.motion"),
                            (lambda: sim.tamper(True), "camera.tamper")):
            before = sim.subscriptions.pulls
            fire()
            await wait_for(lambda t=type_: sink.of(t), what=type_)
            # delivered by the pull that was waiting, or (fired between two pulls) the next
            assert sim.subscriptions.last_delivery in (before, before + 1), \
                (before, sim.subscriptions.last_delivery)
        sim.motion(False)
        await wait_for(lambda: len(sink.of("camera.motion")) == 2, what="motion cleared")
    motion = data_of(sink, "camera.motion")
    assert [m["state"] for m in motion] == ["raised", "cleared"]
    assert motion[0]["alarm_id"] == motion[1]["alarm_id"]
    assert motion[0]["alarm_id"].startswith("cam-1:camera.motion:")  # as every other alarm
    assert motion[0]["rule"] == "MyMotionDetectorRule" and motion[0]["video_source"] == "vsc0"
    tamper = data_of(sink, "camera.tamper")[0]
    assert tamper["state"] == "raised" and tamper["reason"] == "tamper"
    assert sink.invalid == [] and sink.current["cam-1"] is DeviceState.ONLINE


async def test_reboot_events_flow_again_and_the_gap_is_reported(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    sink = RecordingSink()
    async with running(driver([camera(sim, tmp_path / "pw")], sink, tmp_path)):
        await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
        sim.tamper(True)
        await wait_for(lambda: sink.of("camera.tamper"), what="tamper")
        await sim.reboot(downtime_s=1.0)
        await sim.wait_up()
        await wait_for(lambda: len(sink.of("camera.events_lost")) == 2, 20, "the gap cleared")
        sim.motion(True)
        await wait_for(lambda: sink.of("camera.motion"), what="motion after the reboot")
    lost = data_of(sink, "camera.events_lost")
    assert [x["state"] for x in lost] == ["raised", "cleared"]
    assert lost[0]["alarm_id"] == lost[1]["alarm_id"] and lost[1]["gap_s"] >= 0.9
    assert lost[0]["alarm_id"].startswith("cam-1:camera.events_lost:")
    assert "unreachable" in lost[0]["reason"] or "fault" in lost[0]["reason"].lower()
    assert sink.types().count("device.offline") == 1
    online = data_of(sink, "device.online")[-1]
    assert online["offline_s"] > 0
    assert sim.subscriptions.created == 2
    # the tamper alarm raised before the reboot is still the same alarm afterwards
    # (the new subscription's Initialized state did not raise it twice)
    assert len(sink.of("camera.tamper")) == 1
    assert sink.invalid == []


async def test_a_lapsed_subscription_is_recreated_and_the_gap_reported(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    """The camera forgets the subscription while staying up (what a quick reboot or an
    expiry looks like to PullMessages): re-created at once, reported, device stays online."""
    sink = RecordingSink()
    async with running(driver([camera(sim, tmp_path / "pw")], sink, tmp_path)):
        await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
        sim.subscriptions.drop_all()
        await wait_for(lambda: len(sink.of("camera.events_lost")) == 2, what="lost and back")
        sim.motion(True)
        await wait_for(lambda: sink.of("camera.motion"), what="motion afterwards")
    lost = data_of(sink, "camera.events_lost")
    assert "ResourceUnknown" in lost[0]["reason"] and lost[1]["gap_s"] >= 0
    assert sim.subscriptions.created == 2 and "device.offline" not in sink.types()
    assert sim.subscriptions.unsubscribed == 1, "unsubscribed on shutdown"


async def test_subscription_renewed_before_expiry(tmp_path: Path) -> None:
    async with OnvifSimulator(max_termination_s=2) as sim:  # the camera grants 2 s only
        sink = RecordingSink()
        cam = camera(sim, tmp_path / "pw", events={"termination_s": 60, "renew_margin_s": 5})
        async with running(driver([cam], sink, tmp_path)):
            # renewed at half the granted lifetime; after two renewals the first lifetime
            # is long over, so a subscription that still delivers was kept alive by them
            await wait_for(lambda: sim.subscriptions.renewed >= 2, 20, "two renewals")
            assert not sim.subscriptions.get("1", sim.camera_now()).queue
            sim.motion(True)
            await wait_for(lambda: sink.of("camera.motion"), what="motion")
        assert sim.subscriptions.created == 1, "renewed in time, never re-created"
        assert "camera.events_lost" not in sink.types()


async def test_liveness_watch_reports_a_quiet_event_channel(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", events={"pull_timeout_s": 1, "liveness_s": 2})
    with structlog.testing.capture_logs() as logs:
        async with running(in_process([cam], sink, tmp_path)):
            await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
            sim.switches.hang_pulls = True  # the event service stops answering
            await wait_for(lambda: sink.of("camera.events_lost"), 20, "the quiet report")
            sim.switches.hang_pulls = False
            await wait_for(lambda: len(sink.of("camera.events_lost")) == 2, 20, "recovery")
            sim.motion(True)
            await wait_for(lambda: sink.of("camera.motion"), what="motion afterwards")
    lost = data_of(sink, "camera.events_lost")
    assert "event channel quiet" in lost[0]["reason"]
    quiet = [e for e in logs if e["event"] == "camera_error" and e["kind"] == "subscription_lost"]
    assert quiet and "liveness_s" in quiet[0]["reason"]


async def test_wrong_password_is_a_precise_auth_error(sim: OnvifSimulator,
                                                       tmp_path: Path) -> None:
    client = CameraClient("cam-1", "127.0.0.1", sim.port, "admin", "wrong")
    with pytest.raises(AuthError) as err:
        await client.connect()
    await client.close()
    assert "cam-1" in str(err.value) and "GetServices" in str(err.value)
    assert "wrong" not in str(err.value)
    sink = RecordingSink()
    async with running(driver([camera(sim, tmp_path / "pw", password="wrong")], sink, tmp_path)):
        await wait_for(lambda: sink.current.get("cam-1") is DeviceState.ERROR, what="error")
    reason = sink.of("device.offline")[0].data["reason"]
    assert reason.startswith("GetServices:") and "credentials" in reason


async def test_soap_fault_names_the_operation(sim: OnvifSimulator, tmp_path: Path) -> None:
    sim.fault_on("GetProfiles", "Receiver", "ter:HardwareFailure", "the encoder is gone")
    client = CameraClient("cam-1", "127.0.0.1", sim.port, "admin", "sim-password")
    await client.connect()
    with pytest.raises(SoapFault) as err:
        await client.profiles()
    await client.close()
    assert err.value.operation == "GetProfiles" and err.value.subcode == "HardwareFailure"
    assert "the encoder is gone" in str(err.value)
    sink = RecordingSink()
    async with running(driver([camera(sim, tmp_path / "pw")], sink, tmp_path)):
        await wait_for(lambda: sink.current.get("cam-1") is DeviceState.ERROR, what="error")
        sim.switches.faults.clear()
        await wait_for(lambda: sink.current.get("cam-1") is DeviceState.ONLINE, what="online")
    assert sink.of("device.offline")[0].data["reason"].startswith("GetProfiles: SOAP fault")


async def test_unreachable_camera_is_retried_with_backoff_and_never_crashes(
        tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    client = CameraClient("cam-1", "127.0.0.1", port, "admin", "x", timeout_s=2)
    with pytest.raises(Unreachable) as err:
        await client.connect()
    await client.close()
    assert f"127.0.0.1:{port}" in str(err.value) and "connection refused" in str(err.value)
    sim = OnvifSimulator(port=port)
    sink = RecordingSink()
    drv = in_process([camera(sim, tmp_path / "pw")], sink, tmp_path)
    async with running(drv) as task:
        await wait_for(lambda: drv.worker("cam-1").failures >= 4, what="retries")
        assert sink.current["cam-1"] is DeviceState.OFFLINE and not task.done()
        await sim.start()  # the camera comes up later: the driver finds it
        try:
            await wait_for(lambda: sink.current["cam-1"] is DeviceState.ONLINE, what="online")
        finally:
            await sim.stop()
    assert "connection refused" in sink.of("device.offline")[0].data["reason"]


async def test_clock_skew_is_corrected_and_would_fail_uncorrected(tmp_path: Path) -> None:
    async with OnvifSimulator(clock_skew_s=2 * 3600) as sim:
        plain = CameraClient("cam-1", "127.0.0.1", sim.port, "admin", "sim-password",
                             adjust_time=False)
        with pytest.raises(AuthError):
            await plain.connect()
        await plain.close()
        fixed = CameraClient("cam-1", "127.0.0.1", sim.port, "admin", "sim-password")
        await fixed.connect()
        assert abs(fixed.clock_skew_s - 7200) < 3
        assert (await fixed.device_info()).model == "sim-camera"
        await fixed.close()


async def test_hostile_soap_reply_is_refused(sim: OnvifSimulator) -> None:
    sim.switches.hostile.add("GetDeviceInformation")
    client = CameraClient("cam-1", "127.0.0.1", sim.port, "admin", "sim-password")
    await client.connect()
    with pytest.raises(BadReply) as err:
        await client.device_info()
    await client.close()
    assert "DTD" in str(err.value) and err.value.operation == "GetDeviceInformation"


async def test_hostile_soap_request_is_refused_by_the_simulator(sim: OnvifSimulator) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
            sim.url("/onvif/device_service"), data=HOSTILE_BODY,
            headers={"Content-Type": "application/soap+xml"}) as resp:
        body = await resp.text()
    assert resp.status == 400 and "refused" in body and "lol" not in body.replace("lolz", "")


async def test_snapshot_ring_is_bounded_referenced_and_holds_no_credentials(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    sink = RecordingSink()
    with structlog.testing.capture_logs() as logs:
        async with running(in_process([camera(sim, tmp_path / "pw")], sink, tmp_path, max_files=3)):
            await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
            for i in range(5):
                sim.motion(True)
                await wait_for(lambda i=i: len(sink.of("camera.motion")) == 2 * i + 1,
                               what="raise")
                sim.motion(False)
                await wait_for(lambda i=i: len(sink.of("camera.motion")) == 2 * i + 2,
                               what="clear")
    raised = [d for d in data_of(sink, "camera.motion") if d["state"] == "raised"]
    assert all("snapshot" in d for d in raised)
    files = sorted((tmp_path / "snapshots").iterdir())
    assert [f.stem for f in files] == sorted(d["snapshot"]["id"] for d in raised)[-3:]
    import hashlib

    last = raised[-1]["snapshot"]
    blob = (tmp_path / "snapshots" / f"{last['id']}.jpg").read_bytes()
    assert len(blob) == last["bytes"] and hashlib.sha256(blob).hexdigest() == last["sha256"]
    assert blob[:3] == b"\xff\xd8\xff" and b"sim-password" not in blob
    everything = json.dumps(logs, default=str) + "".join(e.to_json() for e in sink.events)
    assert "sim-password" not in everything and "admin:" not in everything


async def test_snapshot_falls_back_to_a_stream_frame(sim: OnvifSimulator,
                                                     tmp_path: Path) -> None:
    """No snapshot URI: the alarm's snapshot is the video sampler's last frame, read from
    the stream URL with credentials injected in memory only (never logged)."""
    sim.switches.no_snapshot_uri = True
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", video={"enabled": True, "sample_fps": 5,
                                              "health_interval_s": 1})
    drv = in_process([cam], sink, tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with running(drv):
            await wait_for(lambda: sink.of("camera.health"), 30, "video health")
            worker = drv.worker("cam-1")
            await wait_for(lambda: worker.video and worker.video.latest_jpeg(), 20, "a frame")
            sim.tamper(True)
            await wait_for(lambda: sink.of("camera.tamper"), what="tamper")
    assert sink.of("camera.tamper")[0].data["snapshot"]["bytes"] > 1000
    assert any(e["event"] == "snapshot_stored" and e["source"] == "stream" for e in logs)
    text = json.dumps(logs, default=str)
    assert "sim-password" not in text and "/video.mjpg" in text


async def test_addresses_the_camera_advertises_are_pinned_to_the_configured_host(
        tmp_path: Path) -> None:
    # The camera hands out URLs for a port nobody listens on (as behind NAT): services,
    # the subscription and snapshots must still go to the configured address.
    simulator = OnvifSimulator(advertise=f"127.0.0.1:{free_port()}")
    await simulator.start()
    try:
        sink = RecordingSink()
        async with running(driver([camera(simulator, tmp_path / "pw")], sink, tmp_path)):
            await wait_for(lambda: simulator.subscriptions.pulls, what="the first pull")
            simulator.motion(True)
            await wait_for(lambda: sink.of("camera.motion"), what="motion")
        assert sink.current["cam-1"] is DeviceState.ONLINE
        assert data_of(sink, "camera.motion")[0].get("snapshot"), "snapshot via the pinned URL"
    finally:
        await simulator.stop()


def test_a_stream_uri_keeps_its_port_and_path_but_takes_the_configured_host() -> None:
    client = CameraClient("cam", "10.1.2.3", 8080, "u", "p")
    assert client._pinned("rtsp://192.168.1.64:554/Streaming/101?x=1") == \
        "rtsp://10.1.2.3:554/Streaming/101?x=1"
    assert client._pinned("rtsp://192.168.1.64/live") == "rtsp://10.1.2.3/live"
    assert CameraClient("cam", "fd00::5", 80, None, None)._pinned("rtsp://h:554/a") == \
        "rtsp://[fd00::5]:554/a"



async def test_a_snapshot_larger_than_allowed_is_refused_as_it_streams_in(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", snapshots={"max_bytes": 1024, "stream_fallback": False})
    with structlog.testing.capture_logs() as logs:
        async with running(in_process([cam], sink, tmp_path)):
            await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
            sim.motion(True)
            await wait_for(lambda: sink.of("camera.motion"), what="motion")
    assert "snapshot" not in data_of(sink, "camera.motion")[0]  # the event goes without
    refused = [e for e in logs if e["event"] == "snapshot_uri_failed"]
    assert refused and "image of more than 1024 bytes" in refused[0]["reason"]
    assert not list((tmp_path / "snapshots").glob("*.jpg"))
