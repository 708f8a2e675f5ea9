"""The collector's one-line summary: the pure bookkeeping, and `edge-collector run` logging it."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import aiomqtt

from collector.summary import Counters, Summary, percentile
from tests.harness import collector, collector_yaml, wait_until, write_yaml
from tests.peers import Mosquitto
from tests.test_collector_support import batch, new_epoch, reading, topics


def test_summary_counts_an_interval_then_starts_afresh() -> None:
    totals = Counters(messages=7, inserted=1000, duplicates=1, quarantined=4)
    s = Summary(started=100.0, base=replace(totals))
    for gateway, lag, inserted, dup, quar, drop in [("gw-a", 0.5, 200, 0, 0, 0),
                                                   ("gw-b", 3.0, 100, 5, 2, 1),
                                                   ("gw-a", None, 0, 0, 1, 0)]:
        totals.messages += 1
        totals.inserted += inserted
        totals.duplicates += dup
        totals.quarantined += quar
        totals.dropped += drop
        s.add(gateway=gateway, lag_s=lag)
    totals.store_failures += 1
    totals.transactions += 2  # the three payloads were committed in two groups
    totals.shed += 4
    line = s.take(now=110.0, totals=totals)
    assert line == {"interval_s": 10.0, "messages": 3, "events": 300, "events_per_s": 30.0,
                    "duplicates": 5, "lag_max_s": 3.0, "lag_p99_s": 3.0, "quarantined": 3,
                    "dropped": 1, "gateways_seen": 2, "store_failures": 1,
                    "transactions": 2, "payloads_per_transaction": 1.5, "shed": 4}
    after = s.take(now=120.0, totals=totals)
    assert (after["messages"], after["events_per_s"], after["lag_max_s"],
            after["gateways_seen"]) == (0, 0.0, None, 0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    assert percentile([], 0.99) is None


async def test_collector_run_logs_a_summary_every_interval(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = collector_yaml(mosquitto.url, tmp_path / "district.db")
    cfg["ingest"] = {"summary_interval_s": 1}
    col = collector(write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "c.log").start()
    epoch = new_epoch()
    try:
        await wait_until(lambda: any(e.get("event") == "broker_connected"
                                     for e in col.log_events()), 30, "collector subscribed")
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="gw-a-fake") as gw:
            events = [reading("gw-a", epoch, s) for s in range(1, 51)]
            sent = time.time()
            await gw.publish(topics("gw-a").events, batch(events), qos=1)

        def with_events() -> list[dict[str, object]]:
            return [e for e in col.log_events()
                    if e.get("event") == "collector_summary" and e.get("events")]

        await wait_until(with_events, 15, "a summary line counting the batch")
        await wait_until(lambda: sum(e.get("event") == "collector_summary"
                                     for e in col.log_events()) >= 2, 15, "the next line")
    finally:
        col.stop()
    line = with_events()[0]
    assert line["events"] == 50 and line["messages"] == 1 and line["gateways_seen"] == 1
    assert line["quarantined"] == 0 and line["store_failures"] == 0
    lag = line["lag_max_s"]
    assert isinstance(lag, float) and 0 <= lag <= time.time() - sent + 5
    assert line["lag_p99_s"] == lag
    summaries = [e for e in col.log_events() if e.get("event") == "collector_summary"]
    assert len(summaries) >= 2  # one per interval, also when idle
