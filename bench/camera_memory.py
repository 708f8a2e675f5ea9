"""Memory of the agent core and of its camera worker processes, with 1, 16, 32 cameras.

    .venv/bin/python bench/camera_memory.py [--cameras 1 --cameras 16 --cameras 32]
        [--source rtsp|mjpeg] [--per-worker 8] [--warmup 30] [--logs DIR] [--repeat 1]

Each round runs a real `edge-agent run` (python -m edge_agent) on a generated gateway
config with N ONVIF cameras (video health on, default options: 1 sampled frame/s),
`process.cameras_per_worker` = --per-worker. The cameras are simulated
(drivers/onvif/simulator, run in this bench's process, one simulator for all, no
credentials); their stream URI points at one RTSP H.264 640x360 15 fps server
(tests/rtsp_server.py under /usr/bin/python3; every camera its own RTSP session and
decoder) or at the simulator's MJPEG stream. The uplink broker is absent (the agent
buffers in its outbox, as when the district is unreachable). After --warmup seconds the
agent and each worker are measured 3 times, 5 s apart, with psutil `memory_full_info`:
RSS, USS (pages only this process holds) and PSS (shared pages split among their users),
median of the three. The round also counts the streams the workers opened (from their
logs), so a round where video did not run is visible; `--logs DIR` keeps each round's
agent log (the workers' logs are in it) as `DIR/<cameras>-<n>.log`. `--repeat N` runs
the list of camera counts N times.

The camera processes are every process under the agent: the worker template
(drivers/onvif/template.py, which forks the workers; reported on its own) and the
workers. `camera_pss_total_mib` / `camera_uss_total_mib` sum template + workers: PSS
splits the pages they share, so the total is what they cost together; USS counts only
private pages. Run from an older checkout (no template), the template row is null.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench._common import emit, summary  # noqa: E402
from tests.peers import free_port  # noqa: E402

MIB = 1024 * 1024


class Simulator:
    """One ONVIF simulator on its own event loop in a thread."""

    def __init__(self, stream_uri: str | None) -> None:
        from drivers.onvif.simulator import OnvifSimulator

        self.sim = OnvifSimulator(username=None, stream_uri=stream_uri)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Simulator:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def rtsp_server() -> tuple[subprocess.Popen[str], str] | None:
    if not Path("/usr/bin/python3").exists():
        return None
    port = free_port()
    proc = subprocess.Popen(["/usr/bin/python3", str(ROOT / "tests" / "rtsp_server.py"),
                             "--port", str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        return None
    return proc, f"rtsp://127.0.0.1:{port}/stream"


def config(tmp: Path, cameras: int, sim_port: int, per_worker: int, video: bool) -> Path:
    lines = [
        "gateway: {id: gw-bench-01, district: '371312', street: '371312001', "
        "community: '371312001001'}",
        f"uplink: {{broker: 'mqtt://127.0.0.1:{free_port()}'}}",
        f"outbox: {{path: {tmp / 'outbox.db'}, max_bytes: 64MiB}}",
        f"snapshots: {{dir: {tmp / 'snapshots'}}}",
        "devices:",
    ]
    for i in range(cameras):
        lines.append(f"  - {{id: cam-{i:02d}, driver: onvif, host: 127.0.0.1, port: {sim_port},"
                     f" process: {{cameras_per_worker: {per_worker}}}, "
                     "snapshots: {enabled: false}, "
                     f"video: {{enabled: {str(video).lower()}}}}}")
    path = tmp / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def memory(proc: psutil.Process) -> dict[str, float]:
    """`file`: the file-backed part of RSS (libraries), which grows with what other
    processes put in the page cache (the kernel maps cached neighbour pages on a fault):
    RSS moves with it, PSS and USS much less."""
    info = proc.memory_full_info()
    return {"rss": info.rss / MIB, "uss": info.uss / MIB, "pss": info.pss / MIB,
            "file": info.shared / MIB, "threads": proc.num_threads()}


def is_template(proc: psutil.Process, agent: psutil.Process) -> bool:
    """The agent's child started as the template (its forked workers keep its command
    line but are its children, not the agent's)."""
    return proc.ppid() == agent.pid and any("onvif.template" in a for a in proc.cmdline())


def measure(agent: psutil.Process) -> tuple[dict[str, float], dict[str, float] | None,
                                            list[dict[str, float]]]:
    """Median of 3 samples: the agent core, the template (None without one), each worker."""
    rounds: list[tuple[dict[str, float], list[dict[str, float]], list[dict[str, float]]]] = []
    for i in range(3):
        if i:
            time.sleep(5)
        tree = sorted(agent.children(recursive=True), key=lambda p: p.pid)
        templates = [p for p in tree if is_template(p, agent)]
        rounds.append((memory(agent), [memory(t) for t in templates],
                       [memory(w) for w in tree if w not in templates]))

    def median(samples: list[dict[str, float]]) -> dict[str, float]:
        return {k: round(statistics.median(x[k] for x in samples), 1) for k in samples[0]}

    core = median([r[0] for r in rounds])
    template = median([r[1][0] for r in rounds]) if all(r[1] for r in rounds) else None
    count = min(len(r[2]) for r in rounds)
    return core, template, [median([r[2][i] for r in rounds]) for i in range(count)]


def run_round(cameras: int, source: str, stream_uri: str | None, per_worker: int,
              warmup: float, video: bool, keep: Path | None = None) -> dict[str, Any]:
    with Simulator(stream_uri) as sim, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cfg = config(tmp, cameras, sim.sim.port, per_worker, video)
        log = (tmp / "agent.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config",
                                 str(cfg)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(warmup)
            if proc.poll() is not None:
                raise SystemExit(f"the agent exited ({proc.returncode}): "
                                 f"{(tmp / 'agent.log').read_text()[-2000:]}")
            core, template, workers = measure(psutil.Process(proc.pid))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        text = (tmp / "agent.log").read_text(errors="replace")
    if keep is not None:
        keep.write_text(text, encoding="utf-8")
    opened = text.count('"camera_stream_opened"')
    w_pss = sum(w["pss"] for w in workers)
    camera = [*workers, *([template] if template else [])]
    return {"cameras": cameras, "source": source if video else "none", "video": video,
            "per_worker": per_worker,
            "streams_opened": opened, "agent_core_mib": core, "template_mib": template,
            "workers": len(workers),
            "worker_mib": workers,
            "workers_rss_total_mib": round(sum(w["rss"] for w in workers), 1),
            "workers_uss_total_mib": round(sum(w["uss"] for w in workers), 1),
            "workers_pss_total_mib": round(w_pss, 1),
            "worker_rss_max_mib": max((w["rss"] for w in workers), default=0.0),
            "camera_pss_total_mib": round(sum(c["pss"] for c in camera), 1),
            "camera_uss_total_mib": round(sum(c["uss"] for c in camera), 1),
            "threads_total": int(core["threads"] + sum(c["threads"] for c in camera))}


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--cameras", type=int, multiple=True, default=(1, 16, 32))
@click.option("--source", type=click.Choice(["rtsp", "mjpeg"]), default="rtsp")
@click.option("--per-worker", type=int, default=8)
@click.option("--warmup", type=float, default=30.0)
@click.option("--video/--no-video", default=True, help="video health on (default) or off")
@click.option("--logs", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="keep each round's agent log in this directory")
@click.option("--repeat", type=click.IntRange(1, 1000), default=1,
              help="run the camera counts this many times")
def main(cameras: tuple[int, ...], source: str, per_worker: int, warmup: float,
         video: bool, logs: Path | None, repeat: int) -> None:
    server = rtsp_server() if source == "rtsp" else None
    if source == "rtsp" and server is None:
        raise SystemExit("no RTSP server (needs /usr/bin/python3 with gi and gst-rtsp-server);"
                         " try --source mjpeg")
    stream_uri = server[1] if server else None
    rows = []
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    try:
        for i in range(1, repeat + 1):
            for n in cameras:
                keep = logs / f"{n}-{i}.log" if logs is not None else None
                row = run_round(n, source, stream_uri, per_worker, warmup, video, keep)
                emit(row)
                rows.append(row)
    finally:
        if server is not None:
            server[0].kill()
    summary({"source": source, "per_worker": per_worker, "rounds": [
        {"cameras": r["cameras"], "agent_core_rss_mib": r["agent_core_mib"]["rss"],
         "agent_core_pss_mib": r["agent_core_mib"]["pss"], "workers": r["workers"],
         "template_rss_mib": r["template_mib"]["rss"] if r["template_mib"] else None,
         "worker_rss_max_mib": r["worker_rss_max_mib"],
         "workers_pss_total_mib": r["workers_pss_total_mib"],
         "camera_pss_total_mib": r["camera_pss_total_mib"],
         "camera_uss_total_mib": r["camera_uss_total_mib"],
         "streams_opened": r["streams_opened"], "threads_total": r["threads_total"]}
        for r in rows]})


if __name__ == "__main__":
    main()
