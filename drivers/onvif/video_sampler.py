"""OpenCV capture of one camera stream, run in a bounded worker pool.

`VideoWorkers` is one thread pool shared by every camera of the agent: all blocking
OpenCV calls (read, decode, analysis) run there, so the event loop never waits on a
decoder, and never more than `max_workers` threads decode at once however many cameras
there are. Opening a stream runs in a separate lane of `open_workers` threads (default
1): OpenCV holds one process-wide lock for the whole of an FFmpeg open, so opens are
serial anyway, and a camera that hangs in open (up to `open_timeout_s`) must not hold
up the sampling of the others.

Opens are fast because FFmpeg is told not to analyse the stream first
(`OPENCV_FFMPEG_CAPTURE_OPTIONS`: `analyzeduration` 0, `probesize` 32; RTSP over TCP
interleaved, which survives packet loss and NAT): an RTSP H.264 open takes ~0.2 s
instead of ~2 s (waiting for a key frame), which with the global lock made 32
cameras take a minute to start. A value already in the environment is kept.

`VideoSampler` is the blocking part for one stream, called from that pool. Each
`sample()` catches up with the live edge and decodes one picture:

- `grab()` frames as fast as they come back from the buffer, each one demuxed and
  decoded by FFmpeg (H.264 needs every frame; MJPEG decodes ~0.5 ms per 640x360 frame),
  but not converted to BGR, which is the expensive part we skip;
- stop at the first `grab()` that had to wait for the network (the live edge), then
  `retrieve()` that frame only. Between samples the socket buffers what arrives.

So a stream at 15-25 fps costs its demux + decode, and the colour conversion and
analysis happen at `sample_fps` only. FFmpeg's decoder threads are pinned to 1 per
stream (`CAP_PROP_N_THREADS`): the pool, not FFmpeg, decides the parallelism.
FFmpeg's and OpenCV's own stderr chatter is silenced (it is not structured and could
show URLs); failures come back as `StreamError` with a plain reason.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

# Read by OpenCV's FFmpeg backend when it loads (AV_LOG_QUIET) and at each open.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS",
                      "rtsp_transport;tcp|analyzeduration;0|probesize;32")

import cv2
import numpy as np

from .video_analysis import thumbnail
from .video_options import VideoHealthOptions

__all__ = ["DEFAULT_WORKERS", "Sample", "StreamError", "VideoSampler", "VideoWorkers", "redact"]

T = TypeVar("T")

#: Threads of the shared pool: enough to keep both cores decoding while a few threads
#: wait on a slow open (up to `open_timeout_s`) or on the live edge of a stream.
DEFAULT_WORKERS = min(8, 2 * (os.cpu_count() or 1))
#: A `grab()` slower than this waited for the network: we are at the live edge.
LIVE_EDGE_S = 0.015

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def redact(url: str, secrets: Iterable[str] = ()) -> str:
    """The URL without user and password (`rtsp://***@host:554/path`), safe to log. Each
    of `secrets` is masked wherever else it appears: some cameras put the password in the
    path or query of the stream URI they hand out (`/user=admin_password=...`)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable url>"
    out = url
    if parts.username is not None or parts.password is not None:
        netloc = "***@" + (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
        out = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    for secret in secrets:
        for form in {secret, quote(secret, safe="")} - {""}:
            out = out.replace(form, "***")
    return out


class VideoWorkers:
    """One bounded thread pool for every camera's blocking video work."""

    _shared: ClassVar[VideoWorkers | None] = None

    def __init__(self, max_workers: int = DEFAULT_WORKERS, open_workers: int = 1) -> None:
        if max_workers < 1 or open_workers < 1:
            raise ValueError("max_workers and open_workers must be at least 1")
        self.max_workers, self.open_workers = max_workers, open_workers
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="video")
        self._opener = ThreadPoolExecutor(open_workers, thread_name_prefix="video-open")
        self._lock = threading.Lock()
        self.active = 0      # sampling jobs running now
        self.peak = 0        # most sampling jobs ever running at once (<= max_workers)
        self.jobs = 0
        self._opening = 0
        self.open_peak = 0   # most opens ever running at once (<= open_workers)

    @classmethod
    def shared(cls) -> VideoWorkers:
        """The process-wide pool used by monitors not given one."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the pool and wait for it without blocking the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, args)

    async def run_open(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a stream open `fn(*args)` in the open lane."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._opener, self._call_open, fn, args)

    def _call_open(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self._lock:
            self._opening += 1
            self.open_peak = max(self.open_peak, self._opening)
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._opening -= 1

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run `fn(*args)` in the pool without waiting (e.g. a release on cancellation)."""
        return self._executor.submit(self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self._lock:
            self.active += 1
            self.jobs += 1
            self.peak = max(self.peak, self.active)
        try:
            return fn(*args)
        finally:
            with self._lock:
                self.active -= 1

    def shutdown(self) -> None:
        self._opener.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True, cancel_futures=True)


class StreamError(Exception):
    """The stream cannot be opened or stopped; `str()` is a plain reason without secrets."""


@dataclass(frozen=True)
class Sample:
    frame: np.ndarray      # the decoded picture (BGR, stream resolution)
    thumb: np.ndarray      # its grey thumbnail, for the analysis
    frames: int            # frames read from the stream for this sample (this one included)
    at: float              # time.monotonic() when it was decoded
    thread: str            # the worker thread that decoded it


class VideoSampler:
    """Blocking capture of one stream; every method is meant for a `VideoWorkers` thread.

    One lock serialises the methods, so a `close()` submitted while a `sample()` still
    runs in another worker waits for it instead of freeing the decoder under it."""

    def __init__(self, url: str, options: VideoHealthOptions,
                 secrets: Iterable[str] = ()) -> None:
        self._url = url
        self.safe_url = redact(url, secrets)
        self.options = options
        self._cap: cv2.VideoCapture | None = None
        self._lock = threading.Lock()
        self._max_grabs = 64

    @property
    def is_open(self) -> bool:
        return self._cap is not None

    def open(self) -> None:
        with self._lock:
            self._release()
            o = self.options
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(o.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(o.read_timeout_s * 1000),
                      cv2.CAP_PROP_N_THREADS, 1]
            cap = cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)
            if not cap.isOpened():
                cap.release()
                raise StreamError(self._why_not_open())
            fps = cap.get(cv2.CAP_PROP_FPS)
            fps = fps if 1 <= fps <= 120 else 30.0
            # Never read more than twice a sample period's worth of frames in one go.
            self._max_grabs = max(2, int(2 * fps / o.sample_fps) + 2)
            self._cap = cap

    def sample(self) -> Sample:
        """Catch up with the live edge, decode that frame. Raises StreamError if it stopped."""
        with self._lock:
            cap = self._cap
            if cap is None:
                raise StreamError("stream is not open")
            frames = failures = 0
            while frames < self._max_grabs:
                started = time.monotonic()
                if not cap.grab():
                    # One failed grab can be a partial frame (seen right after open);
                    # two in a row, or one after the read timeout, is a stopped stream.
                    failures += 1
                    waited = time.monotonic() - started
                    if failures >= 2 or waited >= self.options.read_timeout_s * 0.9:
                        self._release()
                        raise StreamError(
                            "stream stopped: no frame within "
                            f"{self.options.read_timeout_s:g} s" if waited >= 1 else
                            "stream stopped: the camera closed the connection")
                    continue
                frames += 1
                failures = 0
                if time.monotonic() - started > LIVE_EDGE_S:
                    break
            ok, frame = cap.retrieve()
            if not ok or frame is None or frame.size == 0:
                self._release()
                raise StreamError("stream stopped: a frame could not be decoded")
            return Sample(frame=frame, thumb=thumbnail(frame), frames=frames,
                          at=time.monotonic(), thread=threading.current_thread().name)

    def close(self) -> None:
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _why_not_open(self) -> str:
        """A plain reason for a failed open: can we even connect to the host?"""
        try:
            parts = urlsplit(self._url)
            host = parts.hostname
            port = parts.port or {"rtsp": 554, "http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            return "cannot open stream: the URL is not valid"
        if not host or port is None:
            return f"cannot open stream {self.safe_url}: not a network stream or file missing"
        where = f"{host}:{port}"
        try:
            timeout = min(2.0, self.options.open_timeout_s)
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except TimeoutError:
            return f"cannot connect to {where}: no answer"
        except ConnectionRefusedError:
            return f"cannot connect to {where}: connection refused"
        except OSError as exc:
            return f"cannot connect to {where}: {exc.strerror or type(exc).__name__}"
        from .stream_probe import why_not_open

        return why_not_open(self._url, host, port, self.options.open_timeout_s, self.safe_url)
