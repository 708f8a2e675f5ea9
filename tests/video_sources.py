"""Real video sources for camera tests and benches, all on 127.0.0.1 and random ports.

- `mjpeg_source()`: an aiohttp MJPEG-over-HTTP server in this event loop, showing a
  `SyntheticScene` whose `mode` the test switches (drivers/onvif/simulator/video.py).
- `write_clip()`: a clip file written with OpenCV (MJPG .avi, mp4v .mp4) from scene modes.
- `RtspSource`: tests/rtsp_server.py (gst-rtsp-server, H.264) run with Debian's
  /usr/bin/python3; `require_rtsp()` skips without gi + GstRtspServer, fails under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import pytest
from aiohttp import web

from drivers.onvif.simulator.video import Mode, SyntheticScene, add_mjpeg_routes
from tests.peers import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass
class MjpegSource:
    scene: SyntheticScene
    port: int
    path: str = "/video.mjpg"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def url_with_password(self, user: str = "admin", password: str = "s3cret-pw") -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}{self.path}"


@contextlib.asynccontextmanager
async def mjpeg_source(fps: float = 15, *, routes: int = 1) -> AsyncIterator[MjpegSource]:
    """Serve one scene as MJPEG; with `routes > 1` also at `/video1.mjpg`..., each its own
    producer (so each route is a separate camera for the server)."""
    scene = SyntheticScene()
    app = web.Application()
    add_mjpeg_routes(app, scene, "/video.mjpg", fps)
    for i in range(1, routes):
        add_mjpeg_routes(app, scene, f"/video{i}.mjpg", fps)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield MjpegSource(scene, port)
    finally:
        scene.mode = "off"
        await runner.cleanup()


def write_clip(path: Path, fourcc: str, segments: Sequence[tuple[Mode, int]],
               fps: float = 25) -> Path:
    """Write `segments` ((mode, frames), ...) of a 640x360 scene to `path` with OpenCV."""
    scene = SyntheticScene()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps,
                             (scene.width, scene.height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} to {path}")
    try:
        for mode, count in segments:
            scene.mode = mode
            frozen = scene.frame() if mode == "frozen" else None
            for _ in range(count):
                writer.write(frozen if frozen is not None else scene.frame())
    finally:
        writer.release()
    return path


def rtsp_available() -> str | None:
    """None if /usr/bin/python3 can import gi + GstRtspServer, else why not."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} is missing"
    probe = ("import gi; gi.require_version('Gst', '1.0'); "
             "gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert Gst.ElementFactory.find('x264enc'), 'x264enc'")
    result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30,
                            check=False)
    if result.returncode == 0:
        return None
    return "gst-rtsp-server is not usable from /usr/bin/python3 (" + (
        result.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1] + ")"


def require_rtsp() -> None:
    """Skip without a local RTSP server; fail under CI=true (CI installs it)."""
    why = rtsp_available()
    if why is None:
        return
    reason = (f"{why}; Debian: apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
              "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly")
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class RtspSource:
    """tests/rtsp_server.py in its own process; `stop()`/`start()` keep the port."""

    port: int = field(default_factory=free_port)
    fps: int = 15
    mounts: int = 1
    proc: subprocess.Popen[bytes] | None = None

    def url(self, mount: int = 0) -> str:
        return f"rtsp://127.0.0.1:{self.port}/stream{mount or ''}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(ROOT / "tests" / "rtsp_server.py"), "--port", str(self.port),
             "--fps", str(self.fps), "--mounts", str(self.mounts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError("the RTSP server did not start")
        wait_port(self.port)

    def pattern(self, name: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"pattern {name}\n".encode())
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.proc = None
