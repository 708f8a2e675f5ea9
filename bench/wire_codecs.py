"""Batch wire codecs offline: bytes and encoder CPU per event, v1 against v2 variants.

    .venv/bin/python bench/wire_codecs.py [--devices 100] [--seconds 20] [--event sensor|smoke]

The events are the peer workload's (bench/uplink_bytes.py): `--devices` devices polled at
1 Hz, one event per poll carrying 20 values that drift like real registers do, stamped
with epoch and seq as the outbox does: `sensor` (default) a `sensor.reading` of the
`peer-holding-20` profile (20 uint16 quantities, unit `count`); `smoke` the older
`smoke.reading` carrying the 20 mixed-type points of the planner's reference map.
They are cut into batches of 2, 10, 50 and 200 events (what the uplink sends depends on
how many rows wait when it picks), and each batch is encoded by every codec:

- `v1`: the JSON array of full CloudEvents (today's wire);
- `v1+zstd-3`: the same array zstd-compressed (compression alone, no shared fields);
- `v2-none`: shared fields once per batch, uncompressed;
- `v2-zstd-L` (L = 1, 3, 6, 9, 19) and `v2-zlib-L` (L = 1, 6, 9);
- `v2-zstd-3-dict`: with a 4 KiB dictionary trained on other batches of the same fleet.

One JSON line per (codec, batch size): bytes per event, encode µs per event (the agent's
CPU: `batch_v2.encode` from the outbox's JSON bodies, in this process), decode µs per
event (the collector's expansion, `batch_v2.decode`).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import zstandard

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import emit, summary  # noqa: E402
from edge_agent.contract import batch_v2  # noqa: E402
from edge_agent.contract.envelope import Hierarchy, new_event  # noqa: E402

HIER = Hierarchy(district="371312", street="371312001", community="371312001001",
                 gateway="gw-bench")
POINTS = ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3", "c0", "c1", "c2", "c3", "d0", "d1",
          "d2", "d3", "e0", "e1", "e2", "e3"]


def reading(rng: random.Random, state: dict[str, float]) -> dict[str, Any]:
    """20 values as the modbus driver decodes them: ints, scaled ints, floats, strings."""
    for k in state:
        state[k] += rng.choice((-1, 0, 0, 1)) * rng.random()
    s = state
    return {"a0": int(s["a0"]), "temperature_c": round(s["a1"] / 10, 1), "a2": int(s["a2"]),
            "a3": s["a3"], "b0": int(s["b0"]), "density_db_m": round(s["b1"] / 1000, 3),
            "b2": "AB12", "b3": int(s["b3"]), "c0": int(s["c0"]) % 2 == 0, "c1": int(s["c1"]),
            "c2": round(s["c2"], 5), "c3": round(s["c3"] / 1000, 3), "d0": round(s["d0"], 5),
            "d1": int(s["d1"]), "battery_pct": max(0, min(100, int(s["d2"]))), "d3": "XYZ",
            "e0": int(s["e0"]), "e1": int(s["e1"]), "e2": round(s["e2"], 5), "e3": int(s["e3"])}


def sensor(rng: random.Random, state: dict[str, float]) -> dict[str, Any]:
    """peer-holding-20's sensor.reading: 20 uint16 counts drifting a few steps a second."""
    for k in state:
        state[k] = (state[k] + rng.choice((-3, -2, -1, 1, 2, 3))) % 65536
    return {"kind": "bench", "quantities": {
        k: {"value": int(v), "unit": "count"} for k, v in state.items()}}


def workload(devices: int, seconds: int, seed: int = 1, event: str = "sensor") -> list[str]:
    rng = random.Random(seed)
    if event == "sensor":
        states = [{p: float(rng.randrange(100, 60000)) for p in POINTS} for _ in range(devices)]
    else:
        states = [{p: rng.uniform(10, 1000) for p in POINTS} for _ in range(devices)]
    type_, make = ("sensor.reading", sensor) if event == "sensor" else ("smoke.reading",
                                                                         reading)
    bodies = []
    seq = 0
    for _ in range(seconds):
        for d in range(devices):
            seq += 1
            ev = new_event(HIER, f"dev-{d:03d}", type_, make(rng, states[d]))
            bodies.append(ev.stamped("0123456789abcdef", seq).to_json())
    return bodies


def v1(bodies: list[str]) -> bytes:
    return ("[" + ",".join(bodies) + "]").encode()


def codecs(dictionary: zstandard.ZstdCompressionDict) -> dict[str, Callable[[list[str]], bytes]]:
    with_dict = zstandard.ZstdCompressor(level=3, dict_data=dictionary)
    plain3 = zstandard.ZstdCompressor(level=3)
    out: dict[str, Callable[[list[str]], bytes]] = {
        "v1": v1,
        "v1+zstd-3": lambda b: plain3.compress(v1(b)),
        "v2-none": lambda b: batch_v2.encode(b, encoding="none"),
        "v2-zstd-3-dict": lambda b: with_dict.compress(
            batch_v2.encode(b, encoding="none")[5:]),
    }
    for level in (1, 3, 6, 9, 19):
        out[f"v2-zstd-{level}"] = (lambda lv: lambda b: batch_v2.encode(
            b, encoding="zstd", level=lv))(level)
    for level in (1, 6, 9):
        out[f"v2-zlib-{level}"] = (lambda lv: lambda b: batch_v2.encode(
            b, encoding="zlib", level=lv))(level)
    return out


@click.command()
@click.option("--devices", type=int, default=100, show_default=True)
@click.option("--seconds", type=int, default=20, show_default=True)
@click.option("--event", type=click.Choice(["sensor", "smoke"]), default="sensor",
              show_default=True)
def main(devices: int, seconds: int, event: str) -> None:
    bodies = workload(devices, seconds, event=event)
    train = workload(devices, 10, seed=2, event=event)
    samples = [batch_v2.encode(train[i:i + 10], encoding="none")[5:]
               for i in range(0, len(train), 10)]
    dictionary = zstandard.train_dictionary(4096, samples)
    table: dict[str, dict[int, float]] = {}
    for size in (2, 10, 50, 200):
        batches = [bodies[i:i + size] for i in range(0, len(bodies), size)]
        for name, encode in codecs(dictionary).items():
            started = time.process_time()
            sizes = [len(encode(b)) for b in batches]
            cpu = time.process_time() - started
            decode_us = None
            if name.startswith("v2") and not name.endswith("dict"):
                payloads = [encode(b) for b in batches]
                started = time.process_time()
                for p in payloads:
                    batch_v2.decode(p, max_bytes=1 << 24, max_events=5000)
                decode_us = round((time.process_time() - started) / len(bodies) * 1e6, 1)
            row = {"bench": "wire_codecs", "event": event, "codec": name, "batch_events": size,
                   "bytes_per_event": round(sum(sizes) / len(bodies), 1),
                   "bytes_per_datapoint": round(sum(sizes) / len(bodies) / 20, 2),
                   "encode_us_per_event": round(cpu / len(bodies) * 1e6, 1),
                   "decode_us_per_event": decode_us}
            emit(row)
            table.setdefault(name, {})[size] = row["bytes_per_datapoint"]
    summary({"bench": "wire_codecs", "event": event, "devices": devices, "events": len(bodies),
             "bytes_per_datapoint_by_batch_size": table,
             "event_json_bytes": round(sum(len(b) for b in bodies) / len(bodies), 1)})


if __name__ == "__main__":
    main()

