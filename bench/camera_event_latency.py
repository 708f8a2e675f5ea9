"""Camera event -> outbox: how long from the camera's notification to the committed row.

    .venv/bin/python bench/camera_event_latency.py [--events 200] [--cameras 1]

In one process, as in the agent: the ONVIF simulator (aiohttp on 127.0.0.1, SOAP 1.2,
WS-UsernameToken), the `onvif` driver with the real onvif-zeep-async client pulling
events (PullMessages long-poll, 10 s), the real `Pipeline` with its production commit
settings, and a real SQLite outbox (`OutboxThread`, synchronous=FULL) in a temp dir.

For each event the simulator fires a motion notification (raise, then clear,
alternating) on one camera and the clock runs until the pipeline has committed the
resulting row (its `on_commit` callback). Events cycle motion raise, motion clear,
tamper raise, tamper clear: `camera.motion` is a record (the pipeline lingers up to
20 ms to batch it), `camera.tamper` an alarm (committed at once). Two runs:
`snapshot=false` (snapshots off: the event path only) and `snapshot=true` (every raise
fetches a Digest-auth JPEG from the camera, stores it in the ring and references it;
clears take none). One JSON line per event, then a summary with p50/p90/p99/max per run
and kind. Events are fired one at a time, 20-60 ms apart.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, summary
from drivers.onvif.driver import OnvifDriver
from drivers.onvif.options import OnvifCamera
from drivers.onvif.simulator import OnvifSimulator
from edge_agent.config.models import SnapshotsConfig
from edge_agent.contract.envelope import Hierarchy
from edge_agent.outbox import OutboxThread
from edge_agent.pipeline import Pipeline

HIERARCHY = Hierarchy(district="371312", street="371312001", community="371312001001",
                      gateway="gw-bench")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _stats(values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p90_ms": round(_pct(ms, 0.9), 2), "p99_ms": round(_pct(ms, 0.99), 2),
            "max_ms": round(max(ms), 2)}


async def run(events: int, cameras: int, snapshots: bool, tmp: Path) -> dict[str, Any]:
    sims = [OnvifSimulator() for _ in range(cameras)]
    for sim in sims:
        await sim.start()
    outbox = await OutboxThread.open(tmp / f"outbox-{snapshots}.db", max_bytes=64 << 20,
                                     hierarchy=HIERARCHY)
    committed = asyncio.Event()
    pipeline = Pipeline(HIERARCHY, outbox, on_commit=committed.set)
    secret = tmp / "pw"
    secret.write_text("sim-password\n")
    cams = [OnvifCamera.model_validate({
        "id": f"cam-{i}", "driver": "onvif", "host": "127.0.0.1", "port": sim.port,
        "username": "admin", "password": {"file": str(secret)},
        "snapshots": {"enabled": snapshots, "min_interval_s": 0},
        "video": {"enabled": False}}) for i, sim in enumerate(sims)]
    for cam in cams:
        pipeline.register_device(cam.id, "onvif")
    drv = OnvifDriver(cams, pipeline, snapshots=SnapshotsConfig(dir=tmp / "snaps",
                                                                max_files=500))
    tasks = [asyncio.create_task(pipeline.run()), asyncio.create_task(drv.run())]
    try:
        deadline = time.monotonic() + 30
        while not all(s.subscriptions.pulls for s in sims):
            if time.monotonic() > deadline:
                raise SystemExit("bench: the driver did not subscribe within 30 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        lat: dict[str, list[float]] = {}
        for n in range(events):
            sim = sims[n % cameras]
            step = (n // cameras) % 4
            active, kind = step in (0, 2), ("motion", "tamper")[step // 2]
            target = pipeline.counters.committed + 1
            committed.clear()
            t0 = time.perf_counter()
            (sim.motion if kind == "motion" else sim.tamper)(active)
            while pipeline.counters.committed < target:
                await asyncio.wait_for(committed.wait(), 10)
                committed.clear()
            dt = time.perf_counter() - t0
            kind = f"{kind}_{'raise' if active else 'clear'}"
            lat.setdefault(kind, []).append(dt)
            emit({"run": "snapshot" if snapshots else "events", "n": n, "kind": kind,
                  "latency_ms": round(dt * 1000, 3)})
            await asyncio.sleep(random.uniform(0.02, 0.06))
        return {k: _stats(v) for k, v in lat.items() if v}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await outbox.close()
        for sim in sims:
            await sim.stop()


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--events", type=int, default=200)
@click.option("--cameras", type=int, default=1)
def main(**options: Any) -> None:
    asyncio.run(_main(SimpleNamespace(**options)))


async def _main(args: SimpleNamespace) -> None:
    import logging

    logging.disable(logging.WARNING)
    from edge_agent.contract import logs
    logs.configure("error")
    with tempfile.TemporaryDirectory() as tmp:
        results = {"snapshot=false": await run(args.events, args.cameras, False, Path(tmp)),
                   "snapshot=true": await run(args.events, args.cameras, True, Path(tmp))}
    summary({"bench": "camera_event_latency", "events": args.events,
             "cameras": args.cameras, "results": results})


if __name__ == "__main__":
    main()
