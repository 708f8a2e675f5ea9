"""The ONVIF driver against ipycam, an ONVIF camera this project did not write (no events
service, snapshots behind HTTP Basic, open by default), on 127.0.0.1. Its video is a
real H.264 RTSP stream from tests/rtsp_server.py (ipycam's own RTSP needs FFmpeg or
go2rtc, not installed): ipycam hands out its URI, the driver's video health reads it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from drivers.onvif.client import CameraClient
from drivers.onvif.driver import NO_EVENTS_REASON
from drivers.onvif.errors import AuthError
from drivers.onvif.options import OnvifCamera
from edge_agent.sdk.api import DeviceState
from edge_agent.sdk.testing import RecordingSink, running
from tests.ipycam_peer import ipycam
from tests.onvif_sim import data_of, in_process, wait_for
from tests.video_sources import RtspSource, require_rtsp

pytestmark = pytest.mark.timeout(120)


def entry(port: int, tmp_path: Path, *, username: str = "", password: str = "",
          video: bool = False) -> OnvifCamera:
    login = {}
    if username:
        (tmp_path / "pw").write_text(password + "\n")
        login = {"username": username, "password": {"file": str(tmp_path / "pw")}}
    return OnvifCamera.model_validate({
        "id": "ipycam-1", "driver": "onvif", "host": "127.0.0.1", "port": port, **login,
        "timeout_s": 5, "offline_after": 2, "backoff": {"initial_s": 0.1, "max_s": 0.5},
        "events": {"pull_timeout_s": 1, "liveness_s": 2, "termination_s": 60,
                   "renew_margin_s": 10},
        "snapshots": {"min_interval_s": 0, "stream_fallback": False},
        "video": {"enabled": video, "sample_fps": 5, "health_interval_s": 1}})


async def test_open_ipycam_without_events_is_online_with_video_health_and_snapshots(
        tmp_path: Path) -> None:
    require_rtsp()
    rtsp = RtspSource()
    rtsp.start()
    try:
        with ipycam(rtsp_port=rtsp.port) as cam:
            sink = RecordingSink()
            drv = in_process([entry(cam.port, tmp_path, video=True)], sink, tmp_path)
            with structlog.testing.capture_logs() as logs:
                async with running(drv):
                    await wait_for(lambda: len(sink.of("camera.health")) >= 3, 60,
                                   "video health from the RTSP stream ipycam names")
                    await asyncio.sleep(3)  # past liveness_s: a reconnect loop would show
                    ref = await drv.worker("ipycam-1").taker.take()
    finally:
        rtsp.stop()
    assert sink.current["ipycam-1"] is DeviceState.ONLINE
    assert [s for s in sink.states if s[0] == "ipycam-1"][-1][2] == NO_EVENTS_REASON
    assert "camera.events_lost" not in sink.types() and "device.offline" not in sink.types()
    assert [e["event"] for e in logs].count("camera_without_events") == 1
    assert [e["event"] for e in logs].count("camera_connected") == 1, "no reconnect loop"
    assert not [e for e in logs if e["event"] == "camera_error"]
    assert data_of(sink, "camera.health")[-1]["fps"] > 0
    assert "camera.video_loss" not in sink.types()
    assert ref is not None and ref.bytes > 1000


async def test_ipycam_with_credentials_serves_its_snapshot_over_basic(tmp_path: Path) -> None:
    with ipycam(username="admin", password="ipy-secret-1") as cam:
        sink = RecordingSink()
        drv = in_process([entry(cam.port, tmp_path, username="admin", password="ipy-secret-1")],
                     sink, tmp_path)
        with structlog.testing.capture_logs() as logs:
            async with running(drv):
                await wait_for(lambda: sink.current.get("ipycam-1") is DeviceState.ONLINE,
                               30, "online")
                ref = await drv.worker("ipycam-1").taker.take()
    assert ref is not None and ref.bytes > 1000
    snapshot_gets = [r for r in cam.requests if r.startswith("GET /snapshot.jpg")]
    # asked first without credentials; Basic only once the camera asked for it
    assert snapshot_gets[:2] == ["GET /snapshot.jpg auth=", "GET /snapshot.jpg auth=Basic"]
    assert "ipy-secret-1" not in repr(logs)
    assert "camera.events_lost" not in sink.types()


async def test_a_wrong_password_on_ipycam_is_an_auth_error(tmp_path: Path) -> None:
    with ipycam(username="admin", password="ipy-secret-1") as cam:
        client = CameraClient("ipycam-1", "127.0.0.1", cam.port, "admin", "wrong")
        with pytest.raises(AuthError) as err:
            await client.connect()
        await client.close()
        sink = RecordingSink()
        drv = in_process([entry(cam.port, tmp_path, username="admin", password="wrong")],
                     sink, tmp_path)
        async with running(drv):
            await wait_for(lambda: sink.current.get("ipycam-1") is DeviceState.ERROR, 30,
                           "error")
    assert "wrong" not in str(err.value)
    reason = data_of(sink, "device.offline")[0]["reason"]
    assert reason.startswith("GetServices") and "refused the credentials" in reason
