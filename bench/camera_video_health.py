"""Camera video health: CPU and memory per watched camera, cameras per core.

    .venv/bin/python bench/camera_video_health.py [--cameras 16] [--seconds 20]
        [--source mjpeg|rtsp] [--strategies drain|read-all|reopen] [--fps 15]

(--cameras, --source and --strategies repeat; by default 16 and 32 cameras, both
sources, all three strategies.)

Processes: the video source runs in its own process (its CPU is not counted): an MJPEG
640x360 15 fps stream over HTTP (drivers/onvif/simulator/video.py, one shared encoder, one
TCP connection per camera), or RTSP H.264 640x360 15 fps from tests/rtsp_server.py
(gst-rtsp-server under /usr/bin/python3, one shared encoder; skipped if missing). Each
round runs in a fresh worker process watching N cameras at the default options
(1 sampled frame/s, 160x90 grey analysis) and reports, over a steady window after a
warm-up: process CPU (user+sys, psutil) as a share of one core, per camera, and the
derived cameras per core; RSS growth over the worker's baseline (cv2 and numpy already
imported) per camera; samples/s achieved; alarms (any is a false alarm: the scene is
healthy).

Strategies (how the 15 fps are turned into 1 analysed frame/s):
- `drain`: what VideoMonitor does: grab() (demux + decode) up to the live edge, retrieve()
  (colour conversion) the last frame only, analyse a 160x90 thumbnail; shared pool.
- `read-all`: the naive loop: one thread per camera, read() (decode + convert) every
  frame, analyse one a second.
- `reopen`: open the stream, read one frame, close, once a second (MJPEG only).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench._common import emit, summary  # noqa: E402
from tests.peers import free_port, wait_port  # noqa: E402

# ---- the source process -------------------------------------------------------------

async def _serve_mjpeg(port: int, fps: float) -> None:
    from aiohttp import web

    from drivers.onvif.simulator.video import SyntheticScene, add_mjpeg_routes

    app = web.Application()
    add_mjpeg_routes(app, SyntheticScene(), "/video.mjpg", fps)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def start_source(kind: str, fps: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if kind == "mjpeg":
        proc = subprocess.Popen([sys.executable, __file__, "--serve-mjpeg", str(port),
                                 "--fps", str(fps)])
        url = f"http://127.0.0.1:{port}/video.mjpg"
    else:
        proc = subprocess.Popen(
            ["/usr/bin/python3", str(ROOT / "tests" / "rtsp_server.py"), "--port", str(port),
             "--fps", str(fps)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        url = f"rtsp://127.0.0.1:{port}/stream"
    wait_port(port, 20)
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- the measured worker process ----------------------------------------------------

class CountingSink:
    def __init__(self) -> None:
        self.alarms: list[tuple[str, str, dict[str, Any]]] = []

    def emit(self, device: str, type_: str, data: dict[str, Any], **_: Any) -> None:
        if type_ != "camera.health":
            self.alarms.append((device, type_, data))

    def device_state(self, *_: Any) -> None:
        pass

    # the rest of edge_agent.sdk.api.EventSink: no salt, default settings, nothing restored
    credential_salt = b""
    snapshots = None
    alarm_chatter = None

    def restored_alarms(self, device: str) -> list[Any]:
        return []

    def poll_error(self, device: str, reason: str) -> None:
        pass

    def chatter_toggles(self, device: str, suppressed: int) -> None:
        pass


async def _drain(url: str, n: int, warmup: float, seconds: float) -> dict[str, Any]:
    from drivers.onvif.video_monitor import VideoMonitor
    from drivers.onvif.video_options import VideoHealthOptions
    from drivers.onvif.video_sampler import VideoWorkers

    pool = VideoWorkers()
    sink = CountingSink()
    monitors = [VideoMonitor(f"cam-{i}", url, VideoHealthOptions(), sink, pool=pool)
                for i in range(n)]
    tasks = [asyncio.create_task(m.run()) for m in monitors]
    window = await _window(warmup, seconds, lambda: sum(m.samples for m in monitors))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {**window, "alarms": len(sink.alarms), "alarm_examples": sink.alarms[:3],
            "pool_threads": pool.max_workers, "pool_peak": pool.peak}


def _threads(url: str, n: int, warmup: float, seconds: float, strategy: str) -> dict[str, Any]:
    import cv2

    from drivers.onvif.video_analysis import measure, thumbnail
    from drivers.onvif.video_options import VideoHealthOptions

    options = VideoHealthOptions()
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000,
              cv2.CAP_PROP_N_THREADS, 1]
    samples = [0] * n
    running = True

    def read_all(i: int) -> None:
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        last, previous = 0.0, None
        while running:
            ok, frame = cap.read()
            if not ok:
                continue
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                thumb = thumbnail(frame)
                measure(thumb, previous, options)
                previous, samples[i] = thumb, samples[i] + 1
        cap.release()

    def reopen(i: int) -> None:
        previous = None
        while running:
            started = time.monotonic()
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
            ok, frame = cap.read()
            cap.release()
            if ok:
                thumb = thumbnail(frame)
                measure(thumb, previous, options)
                previous, samples[i] = thumb, samples[i] + 1
            time.sleep(max(0.0, started + 1.0 - time.monotonic()))

    target = read_all if strategy == "read-all" else reopen
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    window = asyncio.run(_window(warmup, seconds, lambda: sum(samples)))
    running = False
    for t in threads:
        t.join(10)
    return window


async def _window(warmup: float, seconds: float, samples: Any) -> dict[str, Any]:
    proc = psutil.Process()
    await asyncio.sleep(warmup)
    c0, s0, t0 = proc.cpu_times(), samples(), time.monotonic()
    peak = proc.memory_info().rss
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.5)
        peak = max(peak, proc.memory_info().rss)
    c1, s1, t1 = proc.cpu_times(), samples(), time.monotonic()
    cpu = (c1.user - c0.user + c1.system - c0.system) / (t1 - t0)
    return {"cpu_share": cpu, "samples_per_s": (s1 - s0) / (t1 - t0), "rss_peak": peak}


def worker(args: SimpleNamespace) -> None:
    import cv2  # noqa: F401 - the baseline includes OpenCV and numpy
    import numpy  # noqa: F401

    import drivers.onvif.video_monitor  # noqa: F401

    baseline = psutil.Process().memory_info().rss
    if args.strategy == "drain":
        result = asyncio.run(_drain(args.url, args.n, args.warmup, args.seconds))
    else:
        result = _threads(args.url, args.n, args.warmup, args.seconds, args.strategy)
    result["rss_baseline"] = baseline
    sys.stdout.write(json.dumps(result) + "\n")


def run_round(url: str, source: str, fps: int, strategy: str, n: int, warmup: float,
              seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", "--url", url, "--n", str(n),
         "--strategy", strategy, "--warmup", str(warmup), "--seconds", str(seconds)],
        capture_output=True, check=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    r = json.loads(out.stdout.strip().splitlines()[-1])
    per_cam = r["cpu_share"] / n
    row = {"source": source, "stream_fps": fps, "strategy": strategy, "cameras": n,
           "cpu_pct_of_core": round(100 * r["cpu_share"], 1),
           "cpu_pct_per_camera": round(100 * per_cam, 2),
           "cameras_per_core": round(1 / per_cam, 1) if per_cam > 0 else None,
           "rss_baseline_mib": round(r["rss_baseline"] / 2**20, 1),
           "rss_per_camera_mib": round((r["rss_peak"] - r["rss_baseline"]) / 2**20 / n, 2),
           "samples_per_s": round(r["samples_per_s"], 2)}
    for key in ("alarms", "alarm_examples", "pool_threads", "pool_peak"):
        if key in r:
            row[key] = r[key]
    return row


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--cameras", type=int, multiple=True, default=(16, 32))
@click.option("--seconds", type=float, default=20)
@click.option("--warmup", type=float, default=8)
@click.option("--source", type=click.Choice(["mjpeg", "rtsp"]), multiple=True,
              default=("mjpeg", "rtsp"))
@click.option("--strategies", type=click.Choice(["drain", "read-all", "reopen"]), multiple=True,
              default=("drain", "read-all", "reopen"))
@click.option("--fps", type=int, default=15, help="frame rate of the source stream")
@click.option("--serve-mjpeg", type=int, hidden=True)
@click.option("--worker", is_flag=True, hidden=True)
@click.option("--url", hidden=True)
@click.option("--n", type=int, hidden=True)
@click.option("--strategy", hidden=True)
def main(**options: Any) -> None:
    args = SimpleNamespace(**options)
    if args.serve_mjpeg:
        asyncio.run(_serve_mjpeg(args.serve_mjpeg, args.fps))
        return
    if args.worker:
        worker(args)
        return

    rows: list[dict[str, Any]] = []
    for source in args.source:
        if source == "rtsp":
            from tests.video_sources import rtsp_available

            why = rtsp_available()
            if why is not None:
                emit({"source": "rtsp", "skipped": why})
                continue
        proc, url = start_source(source, args.fps)
        try:
            for strategy in args.strategies:
                if strategy == "reopen" and source != "mjpeg":
                    continue
                for n in args.cameras if strategy == "drain" else args.cameras[:1]:
                    row = run_round(url, source, args.fps, strategy, n, args.warmup,
                                    args.seconds)
                    emit(row)
                    rows.append(row)
        finally:
            stop(proc)
    best = [r for r in rows if r["strategy"] == "drain"]
    summary({
        "default_rate": f"1 sampled frame/s, 640x360 {args.fps} fps source",
        "cameras_per_core": {f"{r['source']}@{r['cameras']}": r["cameras_per_core"]
                             for r in best},
        "rss_per_camera_mib": {f"{r['source']}@{r['cameras']}": r["rss_per_camera_mib"]
                               for r in best},
        "target": ">= 16 cameras per core, <= 10 MiB per camera",
    })


if __name__ == "__main__":
    main()
