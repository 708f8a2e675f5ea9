"""Video health on real video: OpenCV reading MJPEG over HTTP from a local aiohttp source,
clips written by OpenCV, and RTSP H.264 from gst-rtsp-server when the machine has it."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import structlog

from drivers.onvif.simulator.video import Mode
from drivers.onvif.video_monitor import VideoMonitor
from drivers.onvif.video_options import VideoHealthOptions
from drivers.onvif.video_sampler import VideoWorkers
from edge_agent.contract.envelope import Event
from edge_agent.sdk.testing import RecordingSink, running
from tests.peers import free_port
from tests.video_sources import RtspSource, mjpeg_source, require_rtsp, write_clip

#: Short hysteresis and a high sample rate, so each fault shows within a second.
FAST = VideoHealthOptions(
    sample_fps=10, health_interval_s=1, raise_after=2, clear_after=2, frozen_after_s=0,
    no_signal_after_s=0.3, reconnect_initial_s=0.1, reconnect_max_s=0.5,
    open_timeout_s=2, read_timeout_s=2)
ALARMS = ("camera.tamper", "camera.video_loss")
PASSWORD = "s3cret-pw"


@pytest.fixture
def pool() -> Iterator[VideoWorkers]:
    workers = VideoWorkers(2)
    yield workers
    workers.shutdown()


async def until(check: Callable[[], Any], within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if result := check():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {within}s")


async def alarm(sink: RecordingSink, type_: str, state: str, within: float = 10.0,
                alarm_id: str | None = None) -> Event:
    def found() -> Event | None:
        return next((e for e in sink.of(type_) if e.data["state"] == state
                     and alarm_id in (None, e.data["alarm_id"])), None)
    try:
        result: Event = await until(found, within)
    except AssertionError:
        seen = [(e.type, e.data) for e in sink.events]
        raise AssertionError(f"no {type_} {state}; events: {seen}") from None
    return result


FAULTS: list[tuple[Mode, str, str]] = [
    ("covered", "camera.tamper", "lens covered"),
    ("black", "camera.tamper", "image is black"),
    ("overexposed", "camera.tamper", "over-exposed"),
    ("blurred", "camera.tamper", "blurred"),
    ("frozen", "camera.video_loss", "image frozen"),
    ("off", "camera.video_loss", "stream stopped|HTTP 503 .*busy"),  # the scene answers 503
]


@pytest.mark.parametrize(("mode", "type_", "reason"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_mjpeg_fault_raises_and_clears_when_video_recovers(
        mode: Mode, type_: str, reason: str, pool: VideoWorkers) -> None:
    async with mjpeg_source() as src:
        sink = RecordingSink()
        monitor = VideoMonitor("cam-1", src.url, FAST, sink, pool=pool)
        async with running(monitor):
            await until(lambda: monitor.samples >= 3)
            src.scene.mode = mode
            raised = await alarm(sink, type_, "raised")
            assert re.search(reason, raised.data["reason"]), raised.data
            assert monitor.raised()
            src.scene.mode = "normal"
            cleared = await alarm(sink, type_, "cleared", alarm_id=raised.data["alarm_id"])
            assert cleared.data["reason"] == raised.data["reason"]
    # That condition and nothing else: every alarm event belongs to this one alarm.
    ids = {e.data["alarm_id"] for e in sink.events if e.type in ALARMS}
    assert ids == {raised.data["alarm_id"]}, [(e.type, e.data) for e in sink.events]
    assert raised.severity == "warning" and cleared.severity == "info"
    assert monitor.raised() == {}
    assert sink.invalid == []


async def test_health_reports_frame_rate_resolution_and_frame_age(pool: VideoWorkers) -> None:
    async with mjpeg_source(fps=15) as src:
        sink = RecordingSink()
        monitor = VideoMonitor("cam-1", src.url, FAST, sink, pool=pool)
        assert monitor.latest_jpeg() is None
        async with running(monitor):
            await until(lambda: len(sink.of("camera.health")) >= 2, within=5)
            jpeg = monitor.latest_jpeg()
    health = sink.of("camera.health")[1].data
    assert set(health) == {"fps", "width", "height", "last_frame_age_s"}
    assert (health["width"], health["height"]) == (640, 360)
    assert 5 <= health["fps"] <= 25, health  # every frame of the 15 fps stream is counted
    assert 0 <= health["last_frame_age_s"] < 1
    assert sink.invalid == []
    assert jpeg is not None
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape == (360, 640, 3)


async def test_decoding_and_encoding_run_in_the_pool_not_on_the_loop(
        pool: VideoWorkers) -> None:
    """Every blocking OpenCV call (open, grab, decode, analysis, the snapshot's JPEG
    encode) runs in a pool thread: each sample says which thread decoded it."""
    async with mjpeg_source(fps=25) as src:
        sink = RecordingSink()
        monitors = [VideoMonitor(f"cam-{i}", src.url, FAST, sink, pool=pool) for i in range(4)]
        tasks = [asyncio.create_task(m.run()) for m in monitors]
        await until(lambda: all(m.samples >= 10 for m in monitors))
        jpeg = await pool.run(monitors[0].latest_jpeg)  # how the snapshot fallback asks
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    main = threading.current_thread().name
    for m in monitors:
        assert m.last_sample is not None
        assert m.last_sample.thread.startswith("video") and m.last_sample.thread != main
    assert jpeg is not None and jpeg[:3] == b"\xff\xd8\xff"


async def test_many_cameras_never_use_more_threads_than_the_pool(pool: VideoWorkers) -> None:
    async with mjpeg_source(fps=15) as src:
        sink = RecordingSink()
        monitors = [VideoMonitor(f"cam-{i}", src.url, FAST, sink, pool=pool)
                    for i in range(10)]
        tasks = [asyncio.create_task(m.run()) for m in monitors]
        await until(lambda: all(m.samples >= 3 for m in monitors), within=20)
        threads = {m.last_sample.thread for m in monitors if m.last_sample}
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert 1 <= pool.peak <= pool.max_workers == 2
    assert pool.open_peak == pool.open_workers == 1
    assert len(threads) <= 2
    assert not [e for e in sink.events if e.type in ALARMS]


async def test_unreachable_camera_is_video_loss_in_plain_words_without_password(
        pool: VideoWorkers) -> None:
    port = free_port()  # nothing listens there
    sink = RecordingSink()
    url = f"rtsp://admin:{PASSWORD}@127.0.0.1:{port}/Streaming/Channels/102"
    with structlog.testing.capture_logs() as logs:
        monitor = VideoMonitor("cam-9", url, FAST, sink, pool=pool)
        async with running(monitor):
            raised = await alarm(sink, "camera.video_loss", "raised")
            await until(lambda: sink.of("camera.health"), within=3)
    assert raised.data["reason"] == f"cannot connect to 127.0.0.1:{port}: connection refused"
    assert sink.of("camera.health")[0].data["last_frame_age_s"] > 0
    text = repr(logs) + repr([e.data for e in sink.events])
    assert PASSWORD not in text and "admin" not in text
    assert not [entry for entry in logs if "exc_info" in entry or "exception" in entry]
    failed = [entry for entry in logs if entry["event"] == "camera_stream_failed"]
    assert failed and failed[0]["url"].startswith("rtsp://***@127.0.0.1")
    assert sink.invalid == []


async def test_camera_that_accepts_but_sends_nothing_is_video_loss(pool: VideoWorkers) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts (in the kernel backlog), never answers
    port = listener.getsockname()[1]
    options = FAST.model_copy(update={"open_timeout_s": 0.5, "read_timeout_s": 0.5})
    sink = RecordingSink()
    try:
        monitor = VideoMonitor("cam-8", f"http://127.0.0.1:{port}/video.mjpg", options, sink,
                               pool=pool)
        async with running(monitor):
            raised = await alarm(sink, "camera.video_loss", "raised")
    finally:
        listener.close()
    # a stalled stream is said to be one, not blamed on path, credentials or codec
    assert raised.data["reason"] == ("the camera accepted the connection but sent nothing "
                                     "in 0.5 s (stream stalled)")


async def test_motion_from_frame_difference(pool: VideoWorkers) -> None:
    options = FAST.model_copy(update={"sample_fps": 3, "motion": True, "motion_clear_after": 2})
    async with mjpeg_source() as src:
        sink = RecordingSink()
        monitor = VideoMonitor("cam-1", src.url, options, sink, pool=pool)
        async with running(monitor):
            raised = await alarm(sink, "camera.motion", "raised")  # shapes move in the scene
            src.scene.mode = "frozen"
            cleared = await alarm(sink, "camera.motion", "cleared",
                                  alarm_id=raised.data["alarm_id"])
    assert raised.data["region"] in {"top-left", "top", "top-right", "left", "centre", "right",
                                     "bottom-left", "bottom", "bottom-right"}
    assert cleared.data["region"] == raised.data["region"]
    assert sink.invalid == []


@pytest.mark.parametrize(("name", "fourcc"), [("clip.avi", "MJPG"), ("clip.mp4", "mp4v")])
async def test_clip_written_by_opencv(name: str, fourcc: str, tmp_path: Path,
                                      pool: VideoWorkers) -> None:
    clip = write_clip(tmp_path / name, fourcc,
                      [("normal", 40), ("covered", 50), ("normal", 50), ("black", 50),
                       ("normal", 60)])
    sink = RecordingSink()
    monitor = VideoMonitor("cam-file", str(clip), FAST, sink, pool=pool)
    async with running(monitor):
        covered = await alarm(sink, "camera.tamper", "raised")
        await alarm(sink, "camera.tamper", "cleared", alarm_id=covered.data["alarm_id"])
        black = await until(lambda: next((e for e in sink.of("camera.tamper")
                                          if e.data["reason"] == "image is black"), None))
        await alarm(sink, "camera.tamper", "cleared", alarm_id=black.data["alarm_id"])
    assert covered.data["reason"] == "lens covered (uniform image)"
    assert sink.invalid == []


def test_disabled_monitor_does_nothing(pool: VideoWorkers) -> None:
    sink = RecordingSink()
    monitor = VideoMonitor("cam-1", "rtsp://127.0.0.1:1/x",
                           VideoHealthOptions(enabled=False), sink, pool=pool)
    asyncio.run(monitor.run())
    assert sink.events == [] and pool.jobs == 0


async def test_rtsp_h264_black_picture_and_a_stream_that_stops(pool: VideoWorkers) -> None:
    require_rtsp()
    options = FAST.model_copy(update={"open_timeout_s": 5, "read_timeout_s": 1,
                                      "no_signal_after_s": 0.5})
    source = RtspSource()
    await asyncio.to_thread(source.start)
    sink = RecordingSink()
    try:
        monitor = VideoMonitor("cam-rtsp", source.url(), options, sink, pool=pool)
        async with running(monitor):
            health = await until(lambda: [e for e in sink.of("camera.health")
                                          if e.data.get("width")], within=15)
            source.pattern("black")
            black = await alarm(sink, "camera.tamper", "raised")
            source.pattern("smpte")
            await alarm(sink, "camera.tamper", "cleared", alarm_id=black.data["alarm_id"])
            await asyncio.to_thread(source.stop)
            lost = await alarm(sink, "camera.video_loss", "raised")
            await asyncio.to_thread(source.start)
            await alarm(sink, "camera.video_loss", "cleared", alarm_id=lost.data["alarm_id"],
                        within=20)
    finally:
        source.stop()
    assert (health[0].data["width"], health[0].data["height"]) == (640, 360)
    assert black.data["reason"] == "image is black"
    assert re.search("stream stopped|cannot", lost.data["reason"]), lost.data
    assert sink.invalid == []


async def test_rtsp_stream_at_a_wrong_path_says_so(pool: VideoWorkers) -> None:
    """The RTSP server answers, but has no stream at that path: the camera is asked
    (DESCRIBE) and its 404 reported, not a guess at path, credentials or codec."""
    require_rtsp()
    rtsp = RtspSource()
    rtsp.start()
    sink = RecordingSink()
    try:
        url = f"rtsp://admin:s3cret-pw@127.0.0.1:{rtsp.port}/no-such-stream"
        monitor = VideoMonitor("cam-9", url, FAST.model_copy(update={"open_timeout_s": 2}),
                               sink, pool=pool, secrets=("s3cret-pw",))
        async with running(monitor):
            raised = await alarm(sink, "camera.video_loss", "raised", 30)
    finally:
        rtsp.stop()
    reason = raised.data["reason"]
    assert reason.startswith("RTSP 404") and "(wrong path)" in reason, reason
    assert "s3cret-pw" not in reason and "/no-such-stream" in reason
