"""A synthetic camera picture and an MJPEG-over-HTTP source for the simulator, tests, demo.

`SyntheticScene` draws a 640x360 textured scene with moving shapes and a clock, so
consecutive frames differ the way a live camera's do. Its `mode` switches what the
"camera" shows, at run time:

- `normal`: the moving scene;
- `black`: an all-black picture (lens capped in the dark, sensor dead);
- `overexposed`: the scene washed out to near white (a torch or the sun into the lens);
- `frozen`: the last normal picture, byte for byte, forever (a stuck encoder);
- `covered`: a uniform dark grey with a soft gradient (a hand or tape over the lens);
- `blurred`: the scene heavily defocused (lens sprayed, knocked out of focus);
- `off`: the stream stops: open MJPEG connections are closed, new ones get 503.

`add_mjpeg_routes(app, scene)` serves `multipart/x-mixed-replace` MJPEG at `path`.
One producer task per route encodes each frame once, at `fps`, only while somebody
watches, and every client is sent the same bytes; a slow client skips frames rather
than queueing them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal, get_args

import cv2
import numpy as np
from aiohttp import web

from edge_agent.contract.logs import get_logger

__all__ = ["MODES", "Mode", "SyntheticScene", "add_mjpeg_routes"]

log = get_logger("drivers.onvif.simulator.video")

Mode = Literal["normal", "black", "overexposed", "frozen", "covered", "blurred", "off"]
MODES: tuple[str, ...] = get_args(Mode)
BOUNDARY = "frame"


class SyntheticScene:
    """A moving 640x360 test picture; set `.mode` to simulate a camera fault."""

    def __init__(self, width: int = 640, height: int = 360, *, seed: int = 7,
                 quality: int = 80) -> None:
        self.width, self.height, self.quality = width, height, quality
        self.mode: Mode = "normal"
        self._frame_no = 0
        self._frozen: bytes | None = None
        rng = np.random.default_rng(seed)
        # Texture: gradients, a checkerboard and coarse noise, so the picture has detail
        # (edges, variance) everywhere, like a street scene.
        yy, xx = np.mgrid[0:height, 0:width]
        checker = (((xx // 40) + (yy // 40)) % 2 * 50).astype(np.float32)
        noise = cv2.resize(rng.integers(0, 80, (height // 8, width // 8), dtype=np.uint8),
                           (width, height), interpolation=cv2.INTER_NEAREST)
        base = np.stack([60 + xx * 0.15 + checker, 70 + yy * 0.2 + noise * 0.5,
                         50 + checker * 0.5 + noise], axis=-1)
        # Four copies with their own sensor noise, taken in turn: a live picture is never
        # identical from one frame to the next even where nothing moves.
        self._backgrounds = [
            np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
            for _ in range(4)]
        shade = 40 + (yy / max(height - 1, 1) * 12)
        self._covered = np.repeat(shade[..., None], 3, axis=2).astype(np.uint8)

    @property
    def off(self) -> bool:
        """The stream is stopped (`mode == "off"`)."""
        return self.mode == "off"

    def frame(self) -> np.ndarray:
        """The current picture (BGR) for the current mode; `off` gives the last normal one."""
        mode = self.mode
        if mode == "black":
            return np.zeros((self.height, self.width, 3), np.uint8)
        if mode == "covered":
            return self._covered.copy()
        img = self._draw()
        if mode == "overexposed":
            return cv2.add(img, np.full_like(img, 200))
        if mode == "blurred":
            return cv2.GaussianBlur(img, (0, 0), 8)
        return img

    def jpeg(self) -> bytes:
        """The current picture as JPEG; `frozen` repeats the same bytes every time."""
        if self.mode == "frozen":
            if self._frozen is None:
                self._frozen = self._encode(self._draw())
            return self._frozen
        data = self._encode(self.frame())
        if self.mode == "normal":
            self._frozen = data  # what a freeze will show
        return data

    def _encode(self, img: np.ndarray) -> bytes:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:  # pragma: no cover - encoding a valid uint8 image does not fail
            raise RuntimeError("JPEG encoding failed")
        return buf.tobytes()

    def _draw(self) -> np.ndarray:
        self._frame_no += 1
        n, w, h = self._frame_no, self.width, self.height
        img = self._backgrounds[n % len(self._backgrounds)].copy()
        x = int((n * 9) % (w + 120)) - 60
        y = int(h / 2 + (h / 3) * np.sin(n / 15))
        cv2.circle(img, (x, y), 40, (30, 200, 240), -1)
        cv2.rectangle(img, (w - x - 50, 40), (w - x + 10, 100), (220, 60, 60), -1)
        stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d} #{n}"
        cv2.putText(img, stamp, (10, h - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        return img


class _Broadcast:
    """Encode frames at `fps` while clients watch; every client gets the newest frame."""

    def __init__(self, scene: SyntheticScene, fps: float) -> None:
        self.scene, self.period = scene, 1.0 / fps
        self.frame: bytes = b""
        self.seq = 0
        self.clients = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._responses: dict[web.StreamResponse, web.Request] = {}

    async def _produce(self) -> None:
        next_at = time.monotonic()
        while self.clients > 0:
            if self.scene.off:
                self._close_all()
            else:
                self.frame = self.scene.jpeg()
                self.seq += 1
            async with self._changed:
                self._changed.notify_all()
            next_at += self.period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - self.period)
        self._task = None

    def _close_all(self) -> None:
        for resp, request in list(self._responses.items()):
            resp.force_close()
            if request.transport is not None:
                request.transport.close()
        self._responses.clear()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.scene.off:
            raise web.HTTPServiceUnavailable(text="camera off\n")
        resp = web.StreamResponse(headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-cache", "Connection": "close"})
        await resp.prepare(request)
        self.clients += 1
        self._responses[resp] = request
        if self._task is None:
            self._task = asyncio.create_task(self._produce())
        sent = -1

        def ready() -> bool:
            return self.seq != sent or resp not in self._responses

        try:
            while not self.scene.off and resp in self._responses:
                async with self._changed:
                    await self._changed.wait_for(ready)
                if resp not in self._responses:
                    break
                sent, frame = self.seq, self.frame
                await resp.write(b"--" + BOUNDARY.encode() + b"\r\nContent-Type: image/jpeg\r\n"
                                 + f"Content-Length: {len(frame)}\r\n\r\n".encode()
                                 + frame + b"\r\n")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.clients -= 1
            self._responses.pop(resp, None)
        return resp


def add_mjpeg_routes(app: web.Application, scene: SyntheticScene, path: str = "/video.mjpg",
                     fps: float = 15) -> None:
    """Serve `scene` as MJPEG at `path` (and one JPEG at `path` + `.jpg`)."""
    if fps <= 0:
        raise ValueError("fps must be positive")
    broadcast = _Broadcast(scene, fps)

    async def snapshot(_request: web.Request) -> web.Response:
        if scene.off:
            raise web.HTTPServiceUnavailable(text="camera off\n")
        return web.Response(body=scene.jpeg(), content_type="image/jpeg")

    app.router.add_get(path, broadcast.handle)
    app.router.add_get(path + ".jpg", snapshot)
