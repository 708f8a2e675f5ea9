"""The city load generator (bench/city.py) keeps working: its gateways honour acks, and a
short run through a real Mosquitto and two real collectors stores every event exactly once.

The bench's figures belong to docs/benchmarks.md; this only checks that it counts right.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from bench._city_gateway import Counters, SimGateway, Window
from bench._city_traffic import Minter, fill_backlog
from collector.validate import check_payload
from edge_agent.contract.envelope import Hierarchy
from edge_agent.contract.mqtt import Endpoint
from edge_agent.contract.wire import Ack, encode_batch
from edge_agent.uplink.resend import InFlight
from tests.peers import require_binary

ROOT = Path(__file__).resolve().parent.parent
HIER = Hierarchy(district="371312", street="371312001", community="371312001001",
                 gateway="gw-00001")


def gateway(batch_max: int = 200, inflight: int = 8) -> SimGateway:
    return SimGateway(HIER, Endpoint("127.0.0.1", 1), Window(batch_max, inflight), Counters())


def test_minted_events_pass_the_collectors_validation() -> None:
    g = gateway()
    fill_backlog(g, 500, 3600.0, random.Random(3))
    minter = Minter(HIER, random.Random(4))
    for _ in range(200):
        g.add(minter.change())
    g.add(minter.heartbeat(g.waiting))
    verdict = check_payload(encode_batch(row.body for row in g.outbox.values()), g.topics)
    assert not verdict.rejected
    assert len(verdict.accepted) == 701
    types = {row.type for row in verdict.accepted}
    assert {"gateway.heartbeat", "smoke.reading", "water.level"} <= types
    assert types & {"smoke.alarm", "water.leak"}


def test_an_event_leaves_the_outbox_only_when_an_ack_for_its_epoch_names_it() -> None:
    g = gateway(batch_max=3, inflight=2)
    minter = Minter(HIER, random.Random(1))
    for _ in range(10):
        g.add(minter.heartbeat(0))
    first, second = g._next_seqs(), g._next_seqs()
    assert (first, second) == ([1, 2, 3], [4, 5, 6])
    for bid, seqs in enumerate((first, second), 1):
        g.inflight[bid] = InFlight(set(seqs), 0.0)
        g.batch_of.update(dict.fromkeys(seqs, bid))

    g.on_ack(Ack("0" * 16, committed=[[1, 3]]).encode())  # another epoch: ignored
    g.on_ack(b"not json")
    assert g.waiting == 10 and g.counters.ack_ignored == 2
    g.on_ack(Ack(g.epoch, committed=[[1, 2], [7, 9]]).encode())  # 7..9 not in flight
    assert sorted(g.outbox) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert set(g.inflight) == {1, 2} and g.inflight[1].seqs == {3}
    g.on_ack(Ack(g.epoch, committed=[[4, 6]], rejected=[[3, 3]]).encode())
    assert sorted(g.outbox) == [7, 8, 9, 10] and not g.inflight
    assert g.counters.acked == 6 and not g.drained.is_set()
    assert g._next_seqs() == [7, 8, 9]


@pytest.mark.slow
def test_a_short_city_run_stores_every_event_exactly_once(store_url: str) -> None:
    """On each store (`store_url`: SQLite, PostgreSQL migrated), read back by the bench."""
    require_binary("mosquitto")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "city.py"), "--gateways", "20", "--rate", "60",
         "--seconds", "3", "--warmup", "1", "--heartbeat-s", "2", "--burst-gateways", "3",
         "--burst-backlog", "400", "--collectors", "2", "--sample-s", "1",
         "--drain-timeout", "60", "--store", store_url],
        capture_output=True, text=True, timeout=180, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    figures = lines[-1]["summary"]
    assert figures["store"] == store_url.split(":", 1)[0]
    assert figures["generated"] > 1200  # the burst's 1,200 and the steady load
    assert figures["unacked_at_end"] == 0  # every event acked ...
    assert figures["store_rows"] == figures["generated"]  # ... and stored ...
    assert figures["store_lost"] == 0 and figures["store_duplicated"] == 0  # ... once
    assert figures["store_missing_still_in_outbox"] == 0
    assert figures["store_foreign_streams"] == 0
    assert figures["burst_left"] == 0 and figures["burst_drain_s"] is not None
    assert figures["ack_latency_steady"]["p99_ms"] is not None
    assert len(figures["collector_rss"]) == 2
    assert any(line.get("round") == "sample" for line in lines)
