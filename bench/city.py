"""City load: thousands of simulated gateways through Mosquitto into `edge-collector run`.

    .venv/bin/python bench/city.py [--gateways 3000] [--rate 1500] [--seconds 120]
        [--burst-gateways 100] [--burst-backlog 5000] [--collectors 2]
        [--store sqlite|postgresql|URL] [--procs 2]

Every gateway is a `bench._city_gateway.SimGateway`: its own MQTT v5 connection, the real
wire format, an in-memory outbox that keeps each event until a collector's ack names it,
batches of up to 200 events (alarms first), 8 batches in flight, a resend after the ack
timeout; when to resend and how many batches may be in flight is the uplink's own policy
(`edge_agent.uplink.resend`: the timeout backing off to `--ack-timeout-max`, the congestion
window). Their traffic (`bench._city_traffic`): a heartbeat a minute each, on-change
telemetry and alarms raised and cleared, `--rate` events/s in total. The gateways are
spread over `--procs` processes (shards, each with its share of the rate and the burst),
so that the generator is not what limits the run: with aiomqtt (paho) one asyncio process
at 3,000 connections and 1,500 events/s spent a full core and its own lag showed as
latency; the gateways now speak MQTT through `bench._mqtt_lean` (about a quarter of a core
for the same load, docs/benchmarks.md). The
bench starts its own Mosquitto (anonymous, 127.0.0.1, a random port) and `--collectors`
`edge-collector run` processes on one shared subscription writing to `--store`: `sqlite`
(a file in a temp dir, the default), `postgresql` (a durable server of the bench's own) or
a `postgresql://…` URL (a fresh, migrated database on that server).

Phases: connect every gateway; `--warmup` s of load (not measured); `--seconds` s of
steady load (offered and committed events/s, event time → ack at the gateway p50/p99,
`generator_cpu_pct`: the gateways' processes' CPU, % of one core);
then, with the steady load still on, the street comes back: `--burst-gateways` gateways,
each with `--burst-backlog` events from the last 24 hours, connect at once (drain time:
their connect → the last of their events acked). Then the load stops, everything drains,
the collectors stop, and the store is read back: every stream's rows, distinct seqs and
highest seq against what each gateway minted (lost, duplicated) and `received_at − time`
of the steady events. Collector RSS is sampled every `--sample-s` s.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import resource
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._city_gateway import Counters, SimGateway, Window  # noqa: E402
from bench._city_store import store_latencies, stream_seqs  # noqa: E402
from bench._city_traffic import Traffic, fill_backlog  # noqa: E402
from bench._common import emit, rate, summary  # noqa: E402
from bench._mqtt_lean import LeanClient  # noqa: E402
from bench._stores import STORE_HELP, stores  # noqa: E402
from edge_agent.contract.envelope import Hierarchy  # noqa: E402
from edge_agent.contract.logs import configure  # noqa: E402
from edge_agent.contract.mqtt import Endpoint  # noqa: E402
from edge_agent.contract.topics import COLLECTOR_PRESENCE_FILTER, PRESENCE_ONLINE  # noqa: E402
from tests.harness import Proc, collector, write_yaml  # noqa: E402
from tests.peers import Mosquitto  # noqa: E402

DISTRICT, STREET = "371312", "371312001"
#: Gateways connecting at once in the steady fleet's start (the burst connects all at once).
CONNECTS_AT_ONCE = 200


def raise_fd_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE to the hard limit (children such as Mosquitto inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise click.ClickException(
            f"{needed} MQTT connections need about {needed} file descriptors, but the hard "
            f"limit (ulimit -Hn) is {target}; raise it (limits.conf, LimitNOFILE=) or use "
            "fewer --gateways")
    return target


def hierarchy(name: str, i: int) -> Hierarchy:
    return Hierarchy(district=DISTRICT, street=STREET, community=f"{STREET}{i // 30:03d}",
                     gateway=name)


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    v = sorted(values)

    def at(p: float) -> float:
        return round(v[min(len(v) - 1, int(p * len(v)))] * 1000, 1)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(v[-1] * 1000, 1)}


def start_collectors(n: int, store: str, broker: Mosquitto, tmp: Path) -> list[Proc]:
    procs = []
    for i in range(1, n + 1):
        cfg = {"collector": {"id": f"c{i}"}, "store": store,
               "broker": {"url": broker.url, "client_id": f"collector-c{i}",
                          "share_group": "city"},
               "log_level": "warning"}
        procs.append(collector(write_yaml(tmp / f"collector-c{i}.yaml", cfg),
                               tmp / f"collector-c{i}.log"))
    return procs


async def wait_online(port: int, procs: list[Proc], within_s: float = 60) -> None:
    """Start the collectors one after the other, each once the previous one is online
    (its retained presence), so two never create a new store at the same moment."""
    online: set[str] = set()
    arrived = asyncio.Event()

    def seen(topic: str, payload: bytes) -> None:
        if payload == PRESENCE_ONLINE:
            online.add(topic)
            arrived.set()

    mon = LeanClient("127.0.0.1", port, "city-monitor", on_message=seen)
    await mon.connect()
    try:
        await mon.subscribe(COLLECTOR_PRESENCE_FILTER, qos=1)
        async with asyncio.timeout(within_s):
            for i, proc in enumerate(procs, 1):
                proc.start()
                while len(online) < i:
                    arrived.clear()
                    await arrived.wait()
    finally:
        mon.disconnect()


def cpu_seconds(p: psutil.Process) -> float:
    """User + system CPU seconds of this generator process (its threads included)."""
    times = p.cpu_times()
    return float(times.user + times.system)


class Run:
    """One bench run: the fleet, its counters and the samplers."""

    def __init__(self, args: SimpleNamespace, port: int, broker_pid: int,
                 collector_pids: list[int], shard: int = 0, shards: int = 1,
                 barrier: Any = None) -> None:
        """Shard `shard` of `shards` drives the gateways whose index is `shard` modulo
        `shards` at `rate / shards`; the shards meet at `barrier` once connected, so their
        steady phases start together."""
        self.args = args
        self.shard, self.shards, self.barrier = shard, shards, barrier
        self.endpoint = Endpoint("127.0.0.1", port, protocol="5", keepalive_s=60)
        self.window = Window(inflight=args.inflight, ack_timeout_s=args.ack_timeout,
                             ack_timeout_max_s=max(args.ack_timeout, args.ack_timeout_max),
                             aimd=not args.no_aimd)
        self.counters, self.burst_counters = Counters(), Counters()
        self.rng = random.Random(args.seed + shard)
        self.fleet = [SimGateway(hierarchy(f"gw-{i:05d}", i), self.endpoint, self.window,
                                 self.counters) for i in range(shard, args.gateways, shards)]
        self.street = [SimGateway(hierarchy(f"st-{i:04d}", i), self.endpoint, self.window,
                                  self.burst_counters)
                       for i in range(shard, args.burst_gateways, shards)]
        # the first shard samples the collectors and the broker
        self.collectors = [psutil.Process(pid) for pid in collector_pids] if shard == 0 else []
        self.me = psutil.Process()
        self.broker = psutil.Process(broker_pid) if shard == 0 else None
        for p in (self.me, *([self.broker] if self.broker else []), *self.collectors):
            p.cpu_percent()  # starts the measurement
        self.rss: list[list[float]] = [[] for _ in self.collectors]
        self.traffic = Traffic(self.fleet, args.rate / shards, args.heartbeat_s, self.rng)
        self.generating = False
        self.t0 = time.monotonic()

    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            if self.generating:
                self.traffic.tick()
            now = time.monotonic()
            for g in (*self.fleet, *self.street):
                if g.inflight:
                    g.resend_due(now)

    async def sampler(self) -> None:
        while True:
            row: dict[str, Any] = {"round": "sample", "shard": self.shard,
                                   "t_s": round(time.monotonic() - self.t0, 1),
                                   "offered": self.counters.offered,
                                   "acked": self.counters.acked,
                                   "waiting": sum(g.waiting for g in self.fleet),
                                   "street_waiting": sum(g.waiting for g in self.street),
                                   "resends": self.counters.resends + self.burst_counters.resends,
                                   "mean_window": round(sum(g.pacing.limit for g in self.fleet)
                                                        / len(self.fleet), 2)}
            if self.street and self.counters.phase != "warmup":
                row["street"] = street_sample(self.street, self.burst_counters)
            with contextlib.suppress(psutil.Error):
                row["cpu_pct"] = {"bench": self.me.cpu_percent()}
                if self.broker is not None:
                    row["cpu_pct"]["mosquitto"] = self.broker.cpu_percent()
            for i, p in enumerate(self.collectors):
                with contextlib.suppress(psutil.Error):
                    mib = p.memory_info().rss / 2**20
                    self.rss[i].append(mib)
                    row[f"c{i + 1}_rss_mib"] = round(mib, 1)
                    row["cpu_pct"][f"c{i + 1}"] = p.cpu_percent()
            emit(row)
            await asyncio.sleep(self.args.sample_s)

    async def drive(self) -> dict[str, Any]:
        # SIGTERM (`timeout`): unwind like Ctrl-C, so the caller stops the children
        main_task = asyncio.current_task()
        assert main_task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
        args, out = self.args, {}
        for g in self.street:
            fill_backlog(g, args.burst_backlog, 86400.0, self.rng)
        async with asyncio.TaskGroup() as tg:
            connects = asyncio.Semaphore(CONNECTS_AT_ONCE)
            tasks = [tg.create_task(g.run(connects)) for g in self.fleet]
            helpers = [tg.create_task(self.ticker()), tg.create_task(self.sampler())]
            t = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*(g.connected.wait() for g in self.fleet)),
                                   max(60, args.gateways / 20))
            out["connect_s"] = round(time.monotonic() - t, 2)
            emit({"round": "connected", "shard": self.shard, "gateways": len(self.fleet),
                  "seconds": out["connect_s"]})
            if self.barrier is not None:  # every shard connected: the load starts together
                await asyncio.get_running_loop().run_in_executor(None, self.barrier.wait, 120)
            self.traffic.start()
            self.generating = True
            await asyncio.sleep(args.warmup)
            self.counters.phase = "steady"
            offered0, acked0, t = self.counters.offered, self.counters.acked, time.monotonic()
            steady_since, cpu0 = time.time(), cpu_seconds(self.me)
            await asyncio.sleep(args.seconds)
            seconds = time.monotonic() - t
            out["generator_cpu_pct"] = round((cpu_seconds(self.me) - cpu0) / seconds * 100, 1)
            out |= {"steady_s": round(seconds, 1), "steady_since": steady_since,
                    "steady_until": time.time(),
                    "offered_per_s": rate(self.counters.offered - offered0, seconds),
                    "committed_per_s": rate(self.counters.acked - acked0, seconds)}
            emit({"round": "steady", "shard": self.shard, **out})
            if self.street:
                self.counters.phase = "burst"
                t = time.monotonic()
                tasks += [tg.create_task(g.run()) for g in self.street]
                try:
                    await asyncio.wait_for(asyncio.gather(*(g.drained.wait()
                                                            for g in self.street)),
                                           args.drain_timeout)
                    out["burst_drain_s"] = round(time.monotonic() - t, 2)
                except TimeoutError:
                    out["burst_drain_s"] = None
                out["burst_events"] = len(self.street) * args.burst_backlog
                out["burst_left"] = sum(g.waiting for g in self.street)
                emit({"round": "burst", "shard": self.shard, "drain_s": out["burst_drain_s"],
                      "events": out["burst_events"], "left": out["burst_left"]})
            self.generating = False
            self.counters.phase = "tail"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(g.drained.wait() for g in self.fleet)),
                                       args.drain_timeout)
            for task in (*tasks, *helpers):
                task.cancel()
        return out


def street_sample(street: list[SimGateway], c: Counters) -> dict[str, Any]:
    """The street gateways' state now (per sample, to see the burst's shape second by
    second): running totals of acked events, resent batches and the events they carried
    (each a duplicate at the store unless its first copy was shed), and, over the street's
    connected gateways, the telemetry window (min / mean / max), the events in flight, the
    first ack timeout a batch sent now gets (mean / max) and the batches in flight that
    are backing off (had a timeout) with the longest wait among them."""
    live = [g for g in street if g.connected.is_set()]
    inflight = [b for g in live for b in g.inflight.values()]
    windows = [g.pacing.limit for g in live]
    firsts = [g.pacing.first_wait_s() for g in live]
    backing = [b for b in inflight if b.timeouts]
    return {"acked": c.acked, "resends": c.resends, "resent_events": c.resent_events,
            "reconnects": c.reconnects, "connected": len(live),
            "waiting": sum(g.waiting for g in street),
            "inflight_events": sum(len(b.seqs) for b in inflight),
            "window": [min(windows, default=0),
                       round(sum(windows) / len(windows), 2) if windows else 0,
                       max(windows, default=0)],
            "first_timeout_s": [round(sum(firsts) / len(firsts), 2) if firsts else 0,
                                round(max(firsts, default=0), 2)],
            "backing_off": len(backing),
            "max_wait_s": round(max((b.wait_s for b in backing), default=0), 1)}


@dataclass(frozen=True)
class Stream:
    """What one simulated gateway minted and still holds, for the read-back."""

    gateway: str
    epoch: str
    last_seq: int
    unacked: frozenset[int]

    @classmethod
    def of(cls, g: SimGateway) -> Stream:
        return cls(g.hierarchy.gateway, g.epoch, g.last_seq, frozenset(g.outbox))


@dataclass
class ShardResult:
    """One shard's figures, sent back to the parent process."""

    out: dict[str, Any]
    latencies: dict[str, list[float]]
    streams: list[Stream]
    fleet: list[str]
    resends: int
    reconnects: int
    rss: list[list[float]] = field(default_factory=list)
    resent_events: int = 0


def check_store(url: str, streams: list[Stream]) -> dict[str, int]:
    """Each gateway's stream in the store against what it minted (seqs 1..last_seq):
    `lost` = acked (gone from its outbox) but not stored, the one thing that must never
    happen; `missing` = not stored yet, still in its outbox (the run ended first);
    `duplicated` = a seq stored more than once."""
    stored = stream_seqs(url)
    rows = sum(len(v) for v in stored.values())
    lost = missing = duplicated = 0
    for g in streams:
        seqs = stored.pop((g.gateway, g.epoch), [])
        have = set(seqs)
        duplicated += len(seqs) - len(have)
        for seq in range(1, g.last_seq + 1):
            if seq not in have:
                if seq in g.unacked:
                    missing += 1
                else:
                    lost += 1
    return {"store_rows": rows, "store_lost": lost, "store_missing_still_in_outbox": missing,
            "store_duplicated": duplicated, "store_foreign_streams": len(stored)}


def run_shard(options: dict[str, Any], port: int, broker_pid: int, collector_pids: list[int],
              shard: int = 0, shards: int = 1, barrier: Any = None) -> ShardResult:
    """Drive one shard of the fleet to the end of the run (in this process)."""
    configure("warning")
    run = Run(SimpleNamespace(**options), port, broker_pid, collector_pids, shard, shards,
              barrier)
    out = asyncio.run(run.drive())
    everyone = [*run.fleet, *run.street]
    return ShardResult(out, {k: list(v) for k, v in run.counters.latencies.items()},
                       [Stream.of(g) for g in everyone],
                       [g.hierarchy.gateway for g in run.fleet],
                       run.counters.resends + run.burst_counters.resends,
                       run.counters.reconnects + run.burst_counters.reconnects, run.rss,
                       run.counters.resent_events + run.burst_counters.resent_events)


def run_shards(args: SimpleNamespace, port: int, broker_pid: int,
               collector_pids: list[int]) -> list[ShardResult]:
    """`--procs` shards, each in a process of its own (with aiomqtt one asyncio loop drove
    ~1,500 connections at most ~1,000 events/s on this machine's core; the lean client
    costs a third of that); one shard: in this one."""
    if args.procs == 1:
        return [run_shard(vars(args), port, broker_pid, collector_pids)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(args.procs, mp_context=ctx) as pool:
        barrier = manager.Barrier(args.procs)
        futures = [pool.submit(run_shard, vars(args), port, broker_pid, collector_pids, k,
                               args.procs, barrier) for k in range(args.procs)]
        return [f.result() for f in futures]


def merged(results: list[ShardResult]) -> dict[str, Any]:
    """The shards' figures as one run's: rates summed, the slowest drain, latencies pooled."""
    outs = [r.out for r in results]
    out: dict[str, Any] = {
        "connect_s": max(o["connect_s"] for o in outs),
        "steady_s": max(o["steady_s"] for o in outs),
        "steady_since": min(o["steady_since"] for o in outs),
        "steady_until": max(o["steady_until"] for o in outs),
        "offered_per_s": round(sum(o["offered_per_s"] for o in outs), 1),
        "committed_per_s": round(sum(o["committed_per_s"] for o in outs), 1),
        # the load generator's own cost over the steady phase, % of one core (all shards)
        "generator_cpu_pct": round(sum(o["generator_cpu_pct"] for o in outs), 1),
    }
    if any("burst_events" in o for o in outs):
        drains = [o.get("burst_drain_s") for o in outs if "burst_events" in o]
        out["burst_drain_s"] = None if None in drains else max(d for d in drains if d)
        out["burst_events"] = sum(o.get("burst_events", 0) for o in outs)
        out["burst_left"] = sum(o.get("burst_left", 0) for o in outs)
    return out


def rss_summary(series: list[list[float]]) -> list[dict[str, float]]:
    """Per collector: RSS (MiB) at the first quarter of the run, at the end, and the peak."""
    out = []
    for s in series:
        if s:
            out.append({"rss_mib_q1": round(s[len(s) // 4], 1), "rss_mib_end": round(s[-1], 1),
                        "rss_mib_max": round(max(s), 1)})
    return out


@click.command(help=__doc__.splitlines()[0])
@click.option("--gateways", type=click.IntRange(1), default=3000, show_default=True)
@click.option("--rate", type=click.FloatRange(0), default=1500, show_default=True,
              help="events/s offered in total (heartbeats included)")
@click.option("--seconds", type=click.FloatRange(1), default=120, show_default=True)
@click.option("--warmup", type=click.FloatRange(0), default=10, show_default=True)
@click.option("--burst-gateways", type=click.IntRange(0), default=100, show_default=True)
@click.option("--burst-backlog", type=click.IntRange(1), default=5000, show_default=True)
@click.option("--collectors", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option("--store", default="sqlite", show_default=True, help=STORE_HELP)
@click.option("--inflight", type=click.IntRange(1), default=8, show_default=True)
@click.option("--ack-timeout", type=click.FloatRange(0.1), default=5.0, show_default=True)
@click.option("--ack-timeout-max", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="the resend back-off's cap (the uplink's ack_timeout_max_s); "
                   "--ack-timeout's value or less: a fixed timeout")
@click.option("--no-aimd", is_flag=True,
              help="keep every gateway's window at --inflight (the back-off alone)")
@click.option("--heartbeat-s", type=click.FloatRange(0), default=60, show_default=True)
@click.option("--sample-s", type=click.FloatRange(0.5), default=5, show_default=True)
@click.option("--drain-timeout", type=click.FloatRange(1), default=300, show_default=True)
@click.option("--procs", type=click.IntRange(1, 8), default=2, show_default=True,
              help="processes the simulated gateways are spread over (the generator must "
                   "not be what limits the run)")
@click.option("--seed", type=int, default=1)
def main(**options: Any) -> None:
    args = SimpleNamespace(**options)
    configure("warning")
    fd_limit = raise_fd_limit(args.gateways + args.burst_gateways + 200)
    with tempfile.TemporaryDirectory(prefix="bench-city-") as d, \
            stores(args.store, Path(d)) as fresh:
        tmp = Path(d)
        store = fresh("district")
        broker = Mosquitto(tmp / "mosquitto")
        broker.start()
        procs = start_collectors(args.collectors, store, broker, tmp)
        try:
            asyncio.run(wait_online(broker.port, procs))
            assert broker.proc is not None
            results = run_shards(args, broker.port, broker.proc.pid,
                                 [p.proc.pid for p in procs if p.proc])
        finally:
            for p in procs:
                try:
                    p.stop(30)
                except AssertionError:  # ignored SIGTERM for 30 s: killed by stop()
                    emit({"round": "collector_stop", "error": "ignored SIGTERM for 30 s"})
            broker.stop()
        out = merged(results)
        streams = [s for r in results for s in r.streams]
        lat = quantiles([x for r in results for x in r.latencies.get("steady", [])])
        lat_burst = quantiles([x for r in results for x in r.latencies.get("burst", [])])
        stored = quantiles(store_latencies(store, (n for r in results for n in r.fleet),
                                           out.pop("steady_since"), out.pop("steady_until")))
        window = Window(inflight=args.inflight, ack_timeout_s=args.ack_timeout,
                        ack_timeout_max_s=max(args.ack_timeout, args.ack_timeout_max),
                        aimd=not args.no_aimd)
        figures = {
            "bench": "city", "store": store.split(":", 1)[0], "gateways": args.gateways,
            "rate": args.rate, "collectors": args.collectors, "procs": args.procs,
            "fd_limit": fd_limit, "ack_timeout_s": window.ack_timeout_s,
            "ack_timeout_max_s": window.ack_timeout_max_s, "aimd": window.aimd,
            **out,
            "ack_latency_steady": lat, "ack_latency_during_burst": lat_burst,
            "store_latency_steady": stored,
            "generated": sum(s.last_seq for s in streams),
            "unacked_at_end": sum(len(s.unacked) for s in streams),
            "resends": sum(r.resends for r in results),
            "resent_events": sum(r.resent_events for r in results),
            "reconnects": sum(r.reconnects for r in results),
            **check_store(store, streams),
            "collector_rss": rss_summary(results[0].rss),
        }
    summary(figures)


if __name__ == "__main__":
    main()
