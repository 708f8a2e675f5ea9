"""Status page figures: latency with 200 devices, memory it adds, effect on polling.

    .venv/bin/python bench/status_page.py [--devices 200] [--period 2] [--seconds 15]

An agent process with `--devices` simulated smoke detectors (one reading every
`--period` s each; an alarm open on some), its uplink pointed at a closed port (no
broker: the page must work offline too), runs three times:
1. `off`: status page disabled: the baseline RSS and polling jitter;
2. `on`: page enabled, no browser: latency of GET / and GET /api/status, sequential
   (`--requests` each) and 10 at a time, measured inside the window (polling while the
   API is hammered: the worst case);
3. `sse10`: 10 browsers' worth of `/api/stream` connections open and read for the whole
   window (polling while 10 pages are open); the latencies again after the window.
Polling effect: every reading's `time` is when the device task ran; per device the gap
between readings minus `--period` is the loop's lateness. Its p50/p99 and the readings/s
committed come from the outbox rows written during the phase. RSS is the agent's
resident memory (psutil) at the end of each phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import click
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, summary
from tests.harness import agent, gateway_yaml, write_yaml
from tests.peers import free_port, wait_port

MIB = 1024 * 1024


def config(folder: Path, devices: int, period: float, port: int | None) -> Path:
    devs = [{"id": f"smoke-{i:03d}", "driver": "simulated", "kind": "smoke",
             "name": f"{i // 20 + 1}号楼 {i % 20 + 1}层烟感", "period_s": period,
             "alarm_every_s": 600 if i % 50 else 1, "alarm_duration_s": 3600, "seed": i}
            for i in range(devices)]
    cfg = gateway_yaml("gw-bench", f"mqtt://127.0.0.1:{free_port()}", folder / "outbox.db",
                       devices=devs, outbox_max_bytes="512MiB")
    cfg["status_page"] = ({"enabled": True, "listen": f"127.0.0.1:{port}"} if port
                          else {"enabled": False})
    cfg["log_level"] = "warning"
    return write_yaml(folder / "gateway.yaml", cfg)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lateness(db: Path, since: float, until: float, period: float) -> tuple[list[float], int]:
    """Per-device reading gaps minus the period (ms) for readings stored in the window
    (read after the agent stopped: the outbox holds its lock while it runs)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT body FROM events WHERE type = 'smoke.reading' AND "
                            "created BETWEEN ? AND ? ORDER BY seq", (since, until)).fetchall()
    finally:
        conn.close()
    last: dict[str, float] = {}
    late: list[float] = []
    for (body,) in rows:
        event = json.loads(body)
        at = datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
        if event["subject"] in last:
            late.append((at - last[event["subject"]] - period) * 1000)
        last[event["subject"]] = at
    return late, len(rows)


async def latency(session: aiohttp.ClientSession, url: str, n: int,
                  concurrency: int) -> dict[str, float]:
    times: list[float] = []
    size = 0

    async def worker(count: int) -> None:
        nonlocal size
        for _ in range(count):
            started = time.perf_counter()
            async with session.get(url) as r:
                body = await r.read()
                assert r.status == 200, r.status
            times.append((time.perf_counter() - started) * 1000)
            size = len(body)

    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return {"p50_ms": round(pct(times, 0.5), 2), "p99_ms": round(pct(times, 0.99), 2),
            "max_ms": round(max(times), 2), "requests": len(times), "bytes": size}


async def measure(session: aiohttp.ClientSession, base: str, n: int,
                  out: dict[str, Any]) -> None:
    for path in ("/", "/api/status"):
        out[f"GET {path} sequential"] = await latency(session, base + path, n, 1)
    out["GET /api/status x10 concurrent"] = await latency(session, base + "/api/status", n, 10)


async def sse_reader(url: str, source: str, stop: asyncio.Event, counts: list[int]) -> None:
    """One browser's stream, from its own address (the page allows 8 streams per address)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as r:
        assert r.status == 200, r.status
        while not stop.is_set():
            line = await r.content.readline()
            if not line:
                return
            if line.startswith(b"data: "):
                counts.append(len(line))


async def phase(name: str, folder: Path, args: SimpleNamespace) -> dict[str, Any]:
    await asyncio.to_thread(folder.mkdir)
    port = free_port() if name != "off" else None
    proc = agent(config(folder, args.devices, args.period, port), folder / "agent.log").start()
    assert proc.proc is not None
    out: dict[str, Any] = {"phase": name}
    frames: list[int] = []
    start = elapsed = 0.0
    try:
        if port:
            wait_port(port, 20)
        await asyncio.sleep(args.warmup)
        start = time.time()
        stop = asyncio.Event()
        streams: list[asyncio.Task[None]] = []
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            if name == "sse10":
                streams = [asyncio.create_task(sse_reader(f"{base}/api/stream",
                                                          f"127.0.0.{10 + i}", stop, frames))
                           for i in range(10)]
                await asyncio.sleep(1)
            if name == "on":  # hammered during the window: the worst case for polling
                await measure(session, base, args.requests, out)
            await asyncio.sleep(max(0.0, args.seconds - (time.time() - start)))
            elapsed = time.time() - start
            out["rss_mib"] = round(psutil.Process(proc.proc.pid).memory_info().rss / MIB, 1)
            if name == "sse10":  # 10 pages open and idle during the window; latency after it
                await measure(session, base, args.requests, out)
            stop.set()
            for task in streams:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await task
    finally:
        proc.stop()
    late, readings = lateness(folder / "outbox.db", start, start + elapsed, args.period)
    out.update({"readings_per_s": round(readings / elapsed, 1),
                "poll_late_p50_ms": round(pct(late, 0.5), 2),
                "poll_late_p99_ms": round(pct(late, 0.99), 2),
                "poll_late_mean_ms": round(statistics.fmean(late), 2) if late else None})
    if frames:
        out["sse_documents"] = len(frames)
        out["sse_document_bytes"] = frames[-1]
    emit(out)
    return out


@click.command(help=__doc__)
@click.option("--devices", type=int, default=200)
@click.option("--period", type=float, default=2.0)
@click.option("--seconds", type=float, default=15.0)
@click.option("--warmup", type=float, default=4.0)
@click.option("--requests", type=int, default=300)
def main(**options: Any) -> None:
    asyncio.run(_main(SimpleNamespace(**options)))


async def _main(args: SimpleNamespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        results = {name: await phase(name, Path(tmp) / name, args)
                   for name in ("off", "on", "sse10")}
    off, on, sse = results["off"], results["on"], results["sse10"]
    summary({
        "bench": "status_page", "devices": args.devices, "period_s": args.period,
        "page_p99_ms": on["GET / sequential"]["p99_ms"],
        "api_status_p99_ms": on["GET /api/status sequential"]["p99_ms"],
        "api_status_p99_ms_10_concurrent": on["GET /api/status x10 concurrent"]["p99_ms"],
        "api_status_p99_ms_with_10_sse": sse["GET /api/status sequential"]["p99_ms"],
        "api_status_bytes": on["GET /api/status sequential"]["bytes"],
        "rss_added_mib": round(on["rss_mib"] - off["rss_mib"], 1),
        "rss_added_mib_with_10_sse": round(sse["rss_mib"] - off["rss_mib"], 1),
        "readings_per_s": {k: v["readings_per_s"] for k, v in results.items()},
        "poll_late_p99_ms": {k: v["poll_late_p99_ms"] for k, v in results.items()},
        "targets": {"p99_ms": 50, "rss_added_mib": 15},
    })


if __name__ == "__main__":
    main()
