"""Modbus read planner: requests per poll (planner vs one request per point), planning time.

    .venv/bin/python bench/modbus_planner.py [--rounds 2000]

One JSON line per device map and a final `{"summary": ...}` line. Maps: the reference
map (tests/data/modbus/scattered-20.yaml: 20 points in five runs over holding registers
0-54; target 1 request), the peer workload (tests/data/modbus/peer-20.yaml: 20
registers in five runs over 0-54 with a 14-register hole; target 1 request over TCP),
every shipped profile in drivers/modbus/profiles, and a synthetic 500-point map for the
planner's own cost. Each map is planned for three links, since the gap fill follows
what a request costs on the link (drivers/modbus/planner.py): `tcp`, `rtu_9600`
(8E1) and `rtu_115200` (8N1).

`rtu_9600_ms` estimates the bus time of one poll on RS-485 at 9,600 baud, 8E1
(11 bits a character): per request an 8-byte request frame, a 5 + data-byte response
and a 3.5-character silence after each frame; device turnaround is not counted. The
same model gives ~40 single-register reads/s and ~400 registers/s at 125 per request.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench._common import emit, summary  # noqa: E402
from drivers.modbus.planner import Limits, LinkCost, ReadRequest, gap_fill, plan  # noqa: E402
from drivers.modbus.points import Point, PointType, Table  # noqa: E402
from drivers.modbus.profile import (  # noqa: E402
    available_profiles,
    clear_profile_cache,
    load_profile,
)

SCATTERED = ROOT / "tests" / "data" / "modbus" / "scattered-20.yaml"
PEER = ROOT / "tests" / "data" / "modbus" / "peer-20.yaml"
BAUD = 9600
LINKS = {"tcp": LinkCost.tcp(), "rtu_9600": LinkCost.rtu(9600),
         "rtu_115200": LinkCost.rtu(115200, bits_per_char=10)}
BITS_PER_CHAR = 11  # start + 8 data + parity + stop (8E1), or 8N2


def rtu_ms(requests: list[ReadRequest], baud: int = BAUD) -> float:
    """Estimated bus time of the requests on RS-485 RTU (no device turnaround)."""
    chars = 0.0
    for r in requests:
        data = (r.count + 7) // 8 if r.table.is_bits else 2 * r.count
        chars += 8 + (5 + data) + 2 * 3.5
    return round(chars * BITS_PER_CHAR / baud * 1000, 1)


def one_per_point(points: list[Point]) -> list[ReadRequest]:
    """The naive poller: one read per point, whatever it shares with others."""
    return [ReadRequest(p.table, p.address, p.registers, (p,)) for p in points]


def plan_time_us(points: list[Point], limits: Limits, rounds: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            plan(points, limits)
        best = min(best, (time.perf_counter() - start) / rounds)
    return round(best * 1e6, 1)


def synthetic(count: int, seed: int = 1) -> list[Point]:
    """`count` register points in runs of 1-8 with holes of 0-30 registers."""
    rng = random.Random(seed)
    types = [PointType.UINT16, PointType.INT16, PointType.FLOAT32, PointType.UINT32]
    points: list[Point] = []
    address = 0
    while len(points) < count:
        for _ in range(rng.randint(1, 8)):
            if len(points) == count:
                break
            p = Point(name=f"p{len(points)}", table=Table.HOLDING_REGISTER, address=address,
                      type=rng.choice(types))
            points.append(p)
            address += p.registers
        address += rng.randint(0, 30)
    return points


def measure(name: str, points: list[Point], limits: Limits, rounds: int) -> dict[str, Any]:
    planned = plan(points, limits, LINKS["rtu_9600"])
    by_link = {link: len(plan(points, limits, cost)) for link, cost in LINKS.items()}
    naive = one_per_point(points)
    hatch = plan(points, limits.model_copy(update={"single_point_requests": True}))
    no_fill = plan(points, limits.model_copy(update={"gap_fill_registers": 0,
                                                      "gap_fill_bits": 0}))
    row = {
        "map": name,
        "points": len(points),
        "requests": {"planner": len(planned), "one_per_point": len(naive),
                     "escape_hatch": len(hatch), "gap_fill_off": len(no_fill)},
        "requests_by_link": by_link,
        "registers_read": {"planner": sum(r.count for r in planned),
                           "one_per_point": sum(r.count for r in naive)},
        "rtu_9600_ms": {"planner": rtu_ms(planned), "one_per_point": rtu_ms(naive)},
        "plan_us": plan_time_us(points, limits, rounds),
        "limits": limits.model_dump(),
    }
    emit(row)
    return row


@click.command(help=__doc__.splitlines()[0])
@click.option("--rounds", type=int, default=2000, help="plans per timing round")
def main(**options: Any) -> None:
    args = SimpleNamespace(**options)

    rows = []
    scattered = load_profile(SCATTERED)
    rows.append(measure("scattered-20", list(scattered.points), scattered.limits, args.rounds))
    peer = load_profile(PEER)
    rows.append(measure("peer-20", list(peer.points), peer.limits, args.rounds))
    load_us = {}
    for name in available_profiles():
        clear_profile_cache()
        start = time.perf_counter()
        profile = load_profile(name)
        load_us[name] = round((time.perf_counter() - start) * 1e6, 1)
        rows.append(measure(name, list(profile.points), profile.limits, args.rounds))
    big = synthetic(500)
    rows.append(measure("synthetic-500", big, Limits(), max(1, args.rounds // 50)))

    ref = rows[0]
    summary({
        "bench": "modbus_planner",
        "figure": "requests per poll, 20-point map in five runs over 0-54",
        "scattered_20": {"planner": ref["requests"]["planner"],
                         "one_per_point": ref["requests"]["one_per_point"],
                         "target": 1, "met": ref["requests"]["planner"] <= 1,
                         "rtu_9600_ms": ref["rtu_9600_ms"]},
        "peer_20": {"requests_by_link": rows[1]["requests_by_link"],
                    "target_tcp": 1, "met": rows[1]["requests_by_link"]["tcp"] <= 1},
        "gap_fill_by_link": {link: dict(zip(("registers", "bits"), gap_fill(cost),
                                            strict=True))
                             for link, cost in LINKS.items()},
        "requests_per_poll": {r["map"]: r["requests_by_link"] for r in rows},
        "plan_us": {r["map"]: r["plan_us"] for r in rows},
        "profile_load_cold_us": load_us,
    })


if __name__ == "__main__":
    main()
