"""Outbox append throughput: batched commits, single-event commits, and constant eviction.

    .venv/bin/python bench/outbox_append.py [--events 200000] [--batch 500] ...

Prints one JSON line per round and a final `{"summary": ...}` line. Events are
realistic (~300-400-byte bodies, most of it the envelope; mostly smoke.reading and
water.level, some gate.access records, ~2 % alarms). They are minted before the clock
starts, from a pool that is reused, since minting is the pipeline's cost, not the
outbox's. The outbox is a real file in a temp dir (or --dir) with the production
settings (WAL, synchronous=FULL, exclusive lock).

The `outage` round is the long-outage case: one event per append() into a full outbox,
the outbox's clock advancing 0.1 s per append (10 events/s), so the rate at which
`gateway.data_loss` events are emitted (one per `loss_report_interval_s`, not one per
append) and the overshoot of the cap are visible.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from edge_agent.contract.envelope import Event, Hierarchy, new_event
from edge_agent.contract.logs import configure
from edge_agent.outbox import LANE_ALARM, LOSS_REPORT_INTERVAL_S, ROW_OVERHEAD, Outbox
from edge_agent.outbox._body import stamped_body

try:
    from bench._common import Timer, emit, rate, summary
except ImportError:  # run as a script: bench/ is on sys.path
    from _common import Timer, emit, rate, summary  # type: ignore[no-redef]

HIERARCHY = Hierarchy(district="371312", street="s03", community="c012", gateway="gw7")


def make_event(rng: random.Random, i: int, t0: float) -> Event:
    """One event of the realistic mix; bodies are ~300 bytes once stamped."""
    ts = t0 + i * 0.01
    r = rng.random()
    if r < 0.60:
        return new_event(HIERARCHY, f"sd{rng.randint(1, 720)}", "smoke.reading",
                         {"density_db_m": round(rng.uniform(0, 0.05), 4),
                          "temperature_c": round(rng.uniform(15, 32), 1),
                          "battery_pct": rng.randint(20, 100)}, observed_at=ts)
    if r < 0.93:
        return new_event(HIERARCHY, f"wl{rng.randint(1, 8)}", "water.level",
                         {"level_m": round(rng.uniform(0.5, 4.5), 3),
                          "battery_pct": rng.randint(20, 100)}, observed_at=ts)
    if r < 0.98:
        return new_event(HIERARCHY, f"gt{rng.randint(1, 12)}", "gate.access",
                         {"result": "granted", "method": "card", "direction": "in",
                          "credential_hash": f"sha256:{rng.getrandbits(256):064x}"},
                         observed_at=ts)
    kind = rng.choice(["smoke.alarm", "water.leak"])
    return new_event(HIERARCHY, f"dv{rng.randint(1, 500)}", kind,
                     {"state": rng.choice(["raised", "cleared"]),
                      "alarm_id": f"al-{rng.getrandbits(40):010x}"}, observed_at=ts)


def event_pool(size: int, seed: int = 7) -> list[Event]:
    rng = random.Random(seed)
    t0 = time.time() - 3600
    return [make_event(rng, i, t0) for i in range(size)]


def run_appends(box: Outbox, pool: list[Event], total: int, batch: int, mode: str,
                round_events: int) -> dict[str, Any]:
    done = 0
    rounds: list[float] = []
    round_start, round_done = time.perf_counter(), 0
    with Timer() as whole:
        while done < total:
            n = min(batch, total - done)
            start = done % len(pool)
            chunk = pool[start:start + n]
            if len(chunk) < n:
                chunk += pool[:n - len(chunk)]
            box.append(chunk)
            done += n
            round_done += n
            if round_done >= round_events or done == total:
                now = time.perf_counter()
                secs = now - round_start
                rounds.append(round_done / secs)
                st = box.stats()
                emit({"bench": "outbox_append", "mode": mode, "round": len(rounds),
                      "events": round_done, "seconds": round(secs, 4),
                      "events_per_s": rate(round_done, secs), "outbox_events": st.events,
                      "outbox_bytes": st.bytes, "evicted_total": st.evicted_total})
                round_start, round_done = now, 0
    rounds.sort()
    return {"events": total, "batch": batch, "seconds": round(whole.seconds, 3),
            "events_per_s": rate(total, whole.seconds),
            "round_median_events_per_s": round(rounds[len(rounds) // 2], 1)}


def data_loss_events(box: Outbox) -> int:
    rows = box.fetch(lane=LANE_ALARM, after_seq=0, limit=1 << 30, max_bytes=1 << 40)
    return sum(1 for r in rows if r.type == "gateway.data_loss")


class StepClock:
    """The outbox's clock in the outage round: `step` seconds later at each call of tick()."""

    def __init__(self, step: float) -> None:
        self.now, self.step = time.time(), step

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.step


def run_outage(path: Path, pool: list[Event], appends: int, cap: int) -> dict[str, Any]:
    """One event per append into a full outbox, 0.1 s of (fake) time apart."""
    clock = StepClock(0.1)
    box = Outbox.open(path, max_bytes=cap, hierarchy=HIERARCHY, clock=clock)
    telemetry = [e for e in pool if e.type in ("smoke.reading", "water.level")]
    i = 0
    while box.stats().evicted_total == 0:  # fill it
        box.append(telemetry[i % len(telemetry):][:100])
        i += 100
    with Timer() as t:
        for n in range(appends):
            clock.tick()
            box.append([telemetry[(i + n) % len(telemetry)]])
    st = box.stats()
    out = {"appends": appends, "simulated_s": round(appends * clock.step, 1),
           "seconds": round(t.seconds, 3), "appends_per_s": rate(appends, t.seconds),
           "data_loss_events": data_loss_events(box), "loss_pending": st.loss_pending,
           "evicted_total": st.evicted_total, "cap": cap, "outbox_bytes": st.bytes,
           "loss_report_interval_s": LOSS_REPORT_INTERVAL_S}
    box.close()
    return out


def serialization_cost(pool: list[Event], n: int = 20_000) -> dict[str, float]:
    epoch = "0123456789abcdef"
    sample = [pool[i % len(pool)] for i in range(n)]
    with Timer() as slow:
        for i, e in enumerate(sample):
            e.stamped(epoch, i + 1).to_json()
    with Timer() as fast:
        for i, e in enumerate(sample):
            stamped_body(e, epoch, i + 1)
    return {"to_json_us": round(slow.seconds / n * 1e6, 2),
            "stamped_body_us": round(fast.seconds / n * 1e6, 2)}


@click.command(help=__doc__.split("\n")[0])
@click.option("--events", type=int, default=200_000, help="batched events")
@click.option("--batch", type=int, default=500, help="events per append()")
@click.option("--single-events", type=int, default=2_000, help="one append() each")
@click.option("--evict-events", type=int, default=100_000, help="events under a small cap")
@click.option("--evict-cap", type=int, default=2 << 20, help="cap (bytes) of that run")
@click.option("--outage-appends", type=int, default=2_000,
              help="single-event appends into a full outbox, 0.1 s (fake) apart")
@click.option("--round-events", type=int, default=20_000, help="events per JSON line")
@click.option("--pool", type=int, default=10_000, help="distinct events minted")
@click.option("--dir", type=click.Path(path_type=Path), default=None,
              help="where the outbox files go")
@click.option("--log-level", default="error", help="outbox logs go to stderr")
def main(**options: Any) -> None:
    args = SimpleNamespace(**options)
    configure(args.log_level)  # JSON logs on stderr; stdout carries only the bench lines

    pool = event_pool(args.pool)
    body_sizes = [len(stamped_body(e, "0123456789abcdef", 123456).encode()) for e in pool]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        big = Path(tmp) / "batched.db"
        box = Outbox.open(big, max_bytes=1 << 40, hierarchy=HIERARCHY)
        batched = run_appends(box, pool, args.events, args.batch, "batched",
                              args.round_events)
        stored = box.stats()
        box.close()
        file_bytes = os.path.getsize(big)
        with Timer() as reopen:
            box = Outbox.open(big, max_bytes=1 << 40, hierarchy=HIERARCHY)
        box.close()

        box = Outbox.open(Path(tmp) / "single.db", max_bytes=1 << 40, hierarchy=HIERARCHY)
        single = run_appends(box, pool, args.single_events, 1, "single",
                             max(1, args.single_events // 4))
        box.close()

        box = Outbox.open(Path(tmp) / "evict.db", max_bytes=args.evict_cap,
                          hierarchy=HIERARCHY)
        evict = run_appends(box, pool, args.evict_events, args.batch, "evicting",
                            args.round_events)
        st = box.stats()
        evict.update(cap=args.evict_cap, evicted_total=st.evicted_total,
                     outbox_bytes=st.bytes, outbox_events=st.events,
                     data_loss_events=data_loss_events(box), loss_pending=st.loss_pending)
        box.close()

        outage = run_outage(Path(tmp) / "outage.db", pool, args.outage_appends, args.evict_cap)
        emit({"bench": "outbox_append", "mode": "outage", **outage})

    target = 50_000
    summary({
        "bench": "outbox_append",
        "batched": batched,
        "single": single,
        "evicting": evict,
        "outage": outage,
        "target_batched_events_per_s": target,
        "target_met": batched["events_per_s"] >= target,
        "body_bytes_avg": round(sum(body_sizes) / len(body_sizes), 1),
        "row_overhead": ROW_OVERHEAD,
        "file_bytes_per_row": round(file_bytes / max(1, stored.events), 1),
        "accounted_bytes_per_row": round(stored.bytes / max(1, stored.events), 1),
        "reopen_s": round(reopen.seconds, 3),
        "reopen_rows": stored.events,
        "serialization": serialization_cost(pool),
        "pool": args.pool,
    })


if __name__ == "__main__":
    main()
