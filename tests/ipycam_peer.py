"""ipycam (PyPI "Pure Python Virtual IP Camera with ONVIF support"), a camera this project
did not write, as a test peer on 127.0.0.1 and a random port.

`IPCamera.start()` would bind every interface, answer WS-Discovery on UDP 3702 and look
for go2rtc/FFmpeg to push RTSP; none of that is wanted (or installed) here. So only its
ONVIF and HTTP side runs: ipycam's own `IPCameraHTTPHandler` (device and media services,
WS-Security, HTTP Basic on the snapshot) in a threading server bound to 127.0.0.1. It has
no events service, which is what these tests are for. Its stream URI points at
`rtsp_port` (ipycam's RTSP needs FFmpeg or go2rtc): give it a `tests.video_sources`
`RtspSource` to have a real stream there. One frame is handed to it (`IPCamera.stream`)
so its snapshot has a picture.
"""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tests.peers import free_port


@dataclass
class IpyCam:
    port: int
    camera: Any
    #: what the camera was asked, in order: "POST /onvif/..." and "GET path auth=Basic"
    requests: list[str]


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


@contextlib.contextmanager
def ipycam(*, username: str = "", password: str = "", rtsp_port: int = 0,
           stream_path: str = "stream") -> Iterator[IpyCam]:
    """An ipycam ONVIF server on 127.0.0.1 (open when `username` is empty, as shipped)."""
    from ipycam import CameraConfig, IPCamera, IPCameraHTTPHandler

    port = free_port()
    config = CameraConfig(name="ipycam-peer", local_ip="127.0.0.1", onvif_port=port,
                          rtsp_port=rtsp_port or free_port(), main_stream_name=stream_path,
                          sub_stream_name=stream_path, username=username, password=password,
                          show_timestamp=False, main_width=640, main_height=360)
    camera = IPCamera(config)
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[:, :320] = (40, 160, 220)
    camera.stream(frame)  # the picture its snapshot serves
    seen: list[str] = []

    class Handler(IPCameraHTTPHandler):
        def do_GET(self) -> None:
            seen.append(f"GET {self.path} auth={self.headers.get('Authorization', '')[:5]}")
            super().do_GET()

        def do_POST(self) -> None:
            seen.append(f"POST {self.path}")
            super().do_POST()

    Handler.camera = camera
    server = _Server(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="ipycam", daemon=True)
    thread.start()
    try:
        yield IpyCam(port, camera, seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        camera.ptz.stop()
