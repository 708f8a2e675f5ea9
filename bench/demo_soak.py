"""Agent memory over a long `./run demo`: RSS every 10 s, and its slope after warm-up.

    .venv/bin/python bench/demo_soak.py [--minutes 60] [--every 10] [--warmup-minutes 5]

Starts scripts/demo.py (Modbus and camera simulators, collector with its managed
Mosquitto, one agent) as `./run demo` does, finds the agent (`python -m edge_agent run`)
and its camera processes (every process under it: the workers, and their template when
there are two workers or more), and samples every `--every` seconds the agent core's
RSS/USS/PSS and theirs (psutil memory_full_info), one JSON line each. At the end:
the least-squares slope of each series over the samples after `--warmup-minutes`
(MiB/hour), the first and last values and the peak. A leak shows as a slope that stays
positive when the run is longer; a few MiB/hour over 15 minutes is within noise of the
allocator and of SQLite's page cache filling. Judge RSS and USS: PSS also moves when
other processes map the same libraries (OpenCV's pages shared with another worker).
The demo's state (var/demo/) is kept. Stops the demo (SIGTERM to its process group) at
the end or on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench._common import emit, summary  # noqa: E402

MIB = 1024 * 1024


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mx) * (v - my) for t, v in points)
    return round(cov / var * 3600, 2)


def find_agent(demo: psutil.Process) -> psutil.Process | None:
    for proc in demo.children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "edge_agent" in cmd and "run" in cmd and "--config" in cmd:
            return proc
    return None


def mem(proc: psutil.Process) -> dict[str, float]:
    """`file`: the file-backed part of RSS (libraries; it grows with what other processes
    put in the page cache), to tell that from the process's own (anonymous) memory."""
    info = proc.memory_full_info()
    return {"rss": round(info.rss / MIB, 2), "uss": round(info.uss / MIB, 2),
            "pss": round(info.pss / MIB, 2), "file": round(info.shared / MIB, 2)}


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--minutes", type=float, default=60.0)
@click.option("--every", type=float, default=10.0)
@click.option("--warmup-minutes", type=float, default=5.0)
def main(minutes: float, every: float, warmup_minutes: float) -> None:
    demo_proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "demo.py")], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
    demo = psutil.Process(demo_proc.pid)
    series: dict[str, list[tuple[float, float]]] = {"agent_rss": [], "agent_uss": [],
                                                    "agent_pss": [], "workers_rss": [],
                                                    "workers_pss": []}
    started = time.monotonic()
    agent: psutil.Process | None = None
    try:
        while time.monotonic() - started < minutes * 60:
            if demo_proc.poll() is not None:
                raise SystemExit(f"the demo exited ({demo_proc.returncode})")
            agent = agent if agent is not None and agent.is_running() else find_agent(demo)
            if agent is not None:
                try:
                    core = mem(agent)
                    workers = [mem(w) for w in agent.children(recursive=True)]
                except psutil.Error:
                    agent = None
                    continue
                t = round(time.monotonic() - started, 1)
                row: dict[str, Any] = {"t_s": t, "agent": core, "workers": workers}
                emit(row)
                for key in ("rss", "uss", "pss"):
                    series[f"agent_{key}"].append((t, core[key]))
                series["workers_rss"].append((t, sum(w["rss"] for w in workers)))
                series["workers_pss"].append((t, sum(w["pss"] for w in workers)))
            time.sleep(every)
    finally:
        with_pg = os.getpgid(demo_proc.pid)
        os.killpg(with_pg, signal.SIGTERM)
        try:
            demo_proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(with_pg, signal.SIGKILL)
    cut = warmup_minutes * 60
    result: dict[str, Any] = {"minutes": minutes, "warmup_minutes": warmup_minutes,
                              "samples": len(series["agent_rss"])}
    for name, points in series.items():
        after = [p for p in points if p[0] >= cut]
        result[name] = {"slope_mib_per_hour": slope_per_hour(after),
                        "first": points[0][1] if points else None,
                        "last": points[-1][1] if points else None,
                        "peak": max((v for _, v in points), default=None)}
    summary(result)


if __name__ == "__main__":
    main()
