"""Overload at the edges: a flood past the in-memory queue, and a hostile ack.

    .venv/bin/python bench/overload.py [--flood 50000] [--alarms 1000]

`flood`: the real pipeline and outbox (a temp dir); `--flood` readings and `--alarms`
alarms are emitted without yielding (faster than any commit), so everything past
`pipeline.MAX_PENDING` telemetry is dropped. Reports what was kept and dropped, the
data_loss it produced, the time to commit the rest and the process's peak RSS.
`ack`: the uplink's ack handling with a full in-flight window (8 batches of 200) and an
ack of 8 ranges of a million seqs each: seconds per ack, and the RSS it added.
"""

from __future__ import annotations

import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from edge_agent.config.models import UplinkConfig
from edge_agent.contract.envelope import Hierarchy
from edge_agent.contract.logs import configure
from edge_agent.contract.topics import GatewayTopics
from edge_agent.contract.wire import Ack
from edge_agent.outbox import OutboxThread
from edge_agent.pipeline import MAX_PENDING, Pipeline
from edge_agent.uplink import Batch, Uplink

try:
    from bench._common import Timer, emit, summary
except ImportError:  # run as a script: bench/ is on sys.path
    from _common import Timer, emit, summary  # type: ignore[no-redef]

H = Hierarchy(district="371312", street="s03", community="c012", gateway="gw7")
READING = {"density_db_m": 0.01, "temperature_c": 21.5, "battery_pct": 90}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def flood(tmp: Path, readings: int, alarms: int) -> dict[str, object]:
    outbox = await OutboxThread.open(tmp / "flood.db", max_bytes=1 << 30, hierarchy=H)
    pipe = Pipeline(H, outbox)
    task = asyncio.create_task(pipe.run())
    await asyncio.sleep(0)  # the commit task is running, as in the agent
    every = max(1, readings // max(1, alarms))
    with Timer() as t:
        for i in range(readings):
            pipe.emit("smoke-1", "smoke.reading", READING)
            if i % every == 0:
                pipe.emit("smoke-2", "smoke.alarm", {"state": "raised", "alarm_id": str(i)})
        queued = pipe.pending
        task.cancel()  # the pipeline commits what is queued on its way out
        await asyncio.gather(task, return_exceptions=True)
    rows = await outbox.fetch(lane=1, after_seq=0, limit=100_000, max_bytes=1 << 30)
    stats = outbox.stats()
    await outbox.close()
    losses = [json.loads(r.body)["data"] for r in rows if r.type == "gateway.data_loss"]
    return {"round": "flood", "emitted": readings + (readings + every - 1) // every,
            "queued_at_peak": queued, "max_pending": MAX_PENDING,
            "alarms_kept": sum(r.type == "smoke.alarm" for r in rows),
            "dropped": pipe.counters.dropped, "committed": stats.next_seq - 1,
            "data_loss_reported": sum(d["evicted"] for d in losses),
            "seconds_to_commit": round(t.seconds, 2), "peak_rss_mib": round(peak_rss_mib(), 1)}


async def hostile_ack(tmp: Path) -> dict[str, object]:
    cfg = UplinkConfig(broker="mqtt://127.0.0.1:1")
    outbox = await OutboxThread.open(tmp / "ack.db", max_bytes=1 << 30, hierarchy=H)
    uplink = Uplink(cfg, cfg.endpoint(), GatewayTopics(H.district, H.community,
                                                                  H.gateway),
                    outbox, client_id=H.gateway)
    for b in range(cfg.max_inflight_batches):  # a full window of unacked batches
        seqs = set(range(10_000_000 + b * cfg.batch_max_events,
                         10_000_000 + (b + 1) * cfg.batch_max_events))
        uplink._inflight[b] = Batch(b, seqs, time.monotonic())
        uplink._batch_of.update(dict.fromkeys(seqs, b))
    ack = Ack(outbox.epoch, [[1 + i * 1_000_000, (i + 1) * 1_000_000 - 1] for i in range(8)])
    before = peak_rss_mib()
    with Timer() as t:
        for _ in range(100):
            await uplink.handle_ack(ack)
    await outbox.close()
    return {"round": "ack", "ack_bytes": len(ack.encode()), "seqs_named": ack.named(),
            "inflight": len(uplink._batch_of), "ms_per_ack": round(t.seconds * 10, 3),
            "peak_rss_added_mib": round(peak_rss_mib() - before, 1)}


@click.command(help=__doc__.split("\n")[0])
@click.option("--flood", type=int, default=50_000, help="readings emitted at once")
@click.option("--alarms", type=int, default=1_000, help="alarms among them")
def main(**options: Any) -> None:
    asyncio.run(_main(SimpleNamespace(**options)))


async def _main(args: SimpleNamespace) -> None:
    configure("critical")
    with tempfile.TemporaryDirectory() as d:
        ack = await hostile_ack(Path(d))
        emit(ack)
        fl = await flood(Path(d), args.flood, args.alarms)
        emit(fl)
    summary({"bench": "overload", "ack": ack, "flood": fl})


if __name__ == "__main__":
    main()
