"""Batch wire v2 (`edge_agent.contract.batch_v2`, docs/wire.md): old and new agents into
the same store rows; hostile v2 payloads quarantined with a reason, never a traceback.

Real Mosquitto, real collector process (SQLite store), real pipelines and uplinks in this
process: one with `wire: v1`, one with `wire: v2` (MQTT v5) and one with `wire: v2` over
MQTT 3.1.1, all for the same gateway (each its own outbox, so its own epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import zstandard
from aiomqtt import ProtocolVersion
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.validate import Limits, check_payload
from edge_agent.config.models import GatewayConfig
from edge_agent.contract import batch_v2
from edge_agent.contract.envelope import new_event
from edge_agent.contract.topics import GatewayTopics
from edge_agent.outbox.thread import OutboxThread
from edge_agent.pipeline.core import Pipeline
from edge_agent.sdk.testing import TEST_HIERARCHY as H
from edge_agent.uplink.session import Uplink
from tests.aio import cancel_and_wait
from tests.harness import collector, collector_yaml, gateway_yaml, query, wait_until, write_yaml
from tests.peers import Mosquitto

TOPICS = GatewayTopics(H.district, H.community, H.gateway)
READING = {"density_db_m": 0.01, "temperature_c": 21.5, "battery_pct": 90}
#: Columns compared between the wire formats (all but id, epoch, time, received_at).
COLUMNS = "seq, type, source, district, street, community, gateway, device, severity, data"


def bodies(n: int = 12) -> list[str]:
    out = []
    for i in range(n):
        ev = new_event(H, f"smoke-{i % 3}", "smoke.reading", {**READING, "battery_pct": i})
        out.append(ev.stamped("0123456789abcdef", 100 + i).to_json())
    return out


# ---------------------------------------------------------------- the codec, pure


@pytest.mark.parametrize("encoding", ["zstd", "zlib", "none"])
def test_v2_round_trips_every_event_and_the_collector_accepts_it(encoding: Any) -> None:
    sent = bodies()
    payload = batch_v2.encode(sent, encoding=encoding)
    assert batch_v2.is_v2(payload) and len(payload) < len("".join(sent)) // 2
    _, events = batch_v2.decode(payload, max_bytes=10**6, max_events=100)
    assert events == [json.loads(b) for b in sent]
    v2 = check_payload(payload, TOPICS)
    v1 = check_payload(("[" + ",".join(sent) + "]").encode(), TOPICS)
    assert not v2.rejected and v2.accepted == v1.accepted


_VALUES = st.sampled_from([1, True, 1.0, 0, False, None, "x", "1", [1], {"a": 1}, {"a": True}])
_EVENT = st.fixed_dictionaries(
    {"district": st.just("d"), "community": st.just("c"), "gateway": st.just("g"),
     "seq": st.integers(1, 4), "source": st.sampled_from(["/d/s/c/g/a", "/x"])},
    optional={"street": st.sampled_from(["s", "t"]), "subject": st.sampled_from(["a", "b"]),
              "id": _VALUES, "data": _VALUES, "type": _VALUES, "time": _VALUES})


@settings(max_examples=500, deadline=None)
@given(st.lists(_EVENT, min_size=1, max_size=6), st.booleans())
def test_any_batch_of_objects_round_trips_exactly(events: list[dict[str, Any]],
                                                  compact: bool) -> None:
    """Invariant 1 of batch_v2, on objects that need not be valid events (values that
    Python finds equal but JSON does not, seqs with gaps or repeats, sources not
    derivable...); every one has an integer seq and a source, as every outbox row does."""
    # compact: as the outbox writes them (the encoder's fast path cuts them at `data`)
    sent = [json.dumps(e, separators=(",", ":") if compact else None) for e in events]
    _, back = batch_v2.decode(batch_v2.encode(sent), max_bytes=10**6, max_events=100)
    assert [json.dumps(e, sort_keys=True) for e in back] == [
        json.dumps(e, sort_keys=True) for e in events]


def test_a_row_that_is_not_an_object_cannot_be_sent_as_v2() -> None:
    """The uplink then sends that batch as v1 (`wire_v2_fallback`)."""
    with pytest.raises(ValueError):
        batch_v2.encode([bodies(1)[0], "[1]"])


def hostile() -> dict[str, bytes]:
    good = batch_v2.encode(bodies())
    raw = zstandard.ZstdDecompressor().decompress(good[5:])
    other = json.loads(raw)
    other["common"]["gateway"] = "someone-else"
    clash = json.loads(raw)
    clash["events"][0]["district"] = clash["common"]["district"]
    return {
        "bomb": batch_v2.MAGIC + b"z" + zstandard.ZstdCompressor(level=19).compress(
            b" " * 3_000_000),
        "truncated": good[:-7],
        "wrong encoding announced": batch_v2.MAGIC + b"d" + good[5:],
        "unknown encoding": batch_v2.MAGIC + b"x" + good[5:],
        "zlib bomb": batch_v2.MAGIC + b"d" + zlib.compress(b"[" * 3_000_000, 9),
        "count lies": batch_v2.MAGIC + b"n" + raw.replace(b'"n":12', b'"n":13'),
        "common repeated in an event": batch_v2.MAGIC + b"n" + json.dumps(clash).encode(),
        "gateway conflicts with topic": batch_v2.MAGIC + b"n" + json.dumps(other).encode(),
    }


EXPECTED = {
    "bomb": "decompresses to more than", "truncated": "truncated",
    "wrong encoding announced": "announced zlib but is not zlib data",
    "unknown encoding": "unknown encoding", "zlib bomb": "decompresses to more than",
    "count lies": "n=13 but holds 12", "common repeated in an event": "repeats common field",
    "gateway conflicts with topic": "batch gateway 'someone-else' differs from the topic's",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_hostile_v2_payload_is_refused_with_a_reason_naming_topic_and_gateway(
        name: str) -> None:
    verdict = check_payload(hostile()[name], TOPICS, Limits(max_payload_bytes=1024 * 1024))
    assert not verdict.accepted and verdict.rejected
    reason = verdict.rejected[0].reason
    assert EXPECTED[name] in reason and TOPICS.events in reason and H.gateway in reason
    if name == "gateway conflicts with topic":  # named by (epoch, seq): the edge is told
        assert [r.seq for r in verdict.rejected] == list(range(100, 112))


# ---------------------------------------------------------------- end to end


@contextlib.asynccontextmanager
async def forwarder(tmp: Path, broker: Mosquitto, name: str, uplink: dict[str, Any]
                    ) -> AsyncIterator[tuple[Pipeline, Uplink, OutboxThread]]:
    cfg = GatewayConfig.model_validate(gateway_yaml(H.gateway, broker.url, tmp / f"{name}.db",
                                                    uplink=uplink))
    outbox = await OutboxThread.open(tmp / f"{name}.db", max_bytes=10**8, hierarchy=H,
                                     loss_report_interval_s=0)
    up = Uplink(cfg.uplink, cfg.uplink.endpoint(), TOPICS, outbox, client_id=f"{name}-gw")
    pipeline = Pipeline(H, outbox, commit_linger_s=0.01, on_rows=up.offer)
    tasks = [asyncio.create_task(pipeline.run()), asyncio.create_task(up.run())]
    try:
        yield pipeline, up, outbox
    finally:
        await cancel_and_wait(*tasks)
        await outbox.close()


def rows(store: Path, epoch: str) -> list[tuple[Any, ...]]:
    if not store.exists():
        return []
    return query(store, f"SELECT {COLUMNS} FROM events WHERE epoch=? AND type LIKE 'smoke.%' "
                        "ORDER BY seq", epoch)


async def test_v1_and_v2_agents_fill_the_same_store_rows(tmp_path: Path,
                                                         mosquitto: Mosquitto) -> None:
    store = tmp_path / "district.db"
    col = collector(write_yaml(tmp_path / "c.yaml", collector_yaml(mosquitto.url, store)),
                    tmp_path / "c.log").start()
    kinds = {"v1": {"wire": "v1", "protocol": "5"}, "v2": {"wire": "v2", "protocol": "5"},
             "v2-311": {"wire": "v2", "protocol": "3.1.1"}}
    try:
        async with contextlib.AsyncExitStack() as stack:
            agents = {k: await stack.enter_async_context(forwarder(tmp_path, mosquitto, k, u))
                      for k, u in kinds.items()}
            await wait_until(lambda: all(a[1].status.connected for a in agents.values()), 20,
                             "three uplinks connected")
            assert agents["v2-311"][1].status.protocol == "3.1.1"
            for i in range(45):
                for pipeline, _, _ in agents.values():
                    pipeline.emit(f"smoke-{i % 4}", "smoke.reading", {**READING, "battery_pct": i})
                    if i % 15 == 14:
                        pipeline.emit("smoke-0", "smoke.alarm",
                                      {"state": "raised", "alarm_id": str(i)})
                await asyncio.sleep(0.005)
            epochs = {k: a[2].epoch for k, a in agents.items()}
            await wait_until(lambda: all(len(rows(store, e)) == 48 for e in epochs.values()),
                             30, "every event of the three agents stored")
            await wait_until(lambda: all(a[2].stats().events == 0 for a in agents.values()),
                             20, "every outbox acknowledged to empty")
            v2_bytes = agents["v2"][1].status.bytes_sent
            v1_bytes = agents["v1"][1].status.bytes_sent
    finally:
        col.stop()
    reference = rows(store, epochs["v1"])
    assert [r[0] for r in reference] == list(range(reference[0][0], reference[0][0] + 48))
    for kind in ("v2", "v2-311"):
        assert rows(store, epochs[kind]) == reference, f"{kind} rows differ from v1's"
    assert query(store, "SELECT COUNT(*) FROM quarantine") == [(0,)]
    assert 0 < v2_bytes < v1_bytes


async def test_hostile_v2_payloads_are_quarantined_and_good_ones_still_stored(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    store = tmp_path / "district.db"
    col = collector(write_yaml(tmp_path / "c.yaml", collector_yaml(mosquitto.url, store)),
                    tmp_path / "c.log").start()
    good = bodies()
    try:
        await wait_until(lambda: b"broker_connected" in (tmp_path / "c.log").read_bytes(), 30,
                         "the collector")
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="hostile",
                                  protocol=ProtocolVersion.V311) as client:
            for payload in hostile().values():
                await client.publish(TOPICS.events, payload, qos=1)
            await client.publish(TOPICS.events, batch_v2.encode(good), qos=1)
        await wait_until(lambda: store.exists() and len(query(
            store, "SELECT id FROM events")) == 12, 20, "the good batch stored")
        await wait_until(lambda: query(store, "SELECT COUNT(DISTINCT raw) FROM quarantine")
                         >= [(len(EXPECTED) - 1 + 12,)], 20, "every hostile payload quarantined")
    finally:
        col.stop()
    reasons = [r[0] for r in query(store, "SELECT reason FROM quarantine")]
    for name, expected in EXPECTED.items():
        assert any(expected in r and TOPICS.events in r for r in reasons), name
    assert b"Traceback" not in (tmp_path / "c.log").read_bytes()


# ---------------------------------------------------------------- both stores


def test_v1_and_v2_payloads_make_the_same_rows_in_either_store(store_url: str) -> None:
    """The collector's handler, one group: a v1 batch, the same events as a v2 batch (other
    epoch, other ids), and a hostile v2 payload between them (quarantined, nothing else
    lost)."""
    from collector.ingest import PayloadHandler
    from collector.store import open_store
    from tests.test_collector_store import query as store_query

    def events(epoch: str) -> list[str]:
        return [new_event(H, f"smoke-{i % 3}", "smoke.reading", {**READING, "battery_pct": i})
                .stamped(epoch, 1 + i).to_json() for i in range(30)]

    v1 = ("[" + ",".join(events("00000000000000a1")) + "]").encode()
    v2 = batch_v2.encode(events("00000000000000b2"))
    handler = PayloadHandler(open_store(store_url), Limits())
    try:
        outcomes = handler([(TOPICS.events, v1), (TOPICS.events, hostile()["truncated"]),
                            (TOPICS.events, v2)])
    finally:
        handler.store.close()
    assert [o.result.inserted for o in outcomes] == [30, 0, 30]
    assert outcomes[1].result.quarantined == 1

    def stored(epoch: str) -> list[tuple[Any, ...]]:
        return store_query(store_url, f"SELECT {COLUMNS} FROM events WHERE epoch = '{epoch}' "
                                      "ORDER BY seq")

    assert stored("00000000000000a1") == stored("00000000000000b2") and len(
        stored("00000000000000a1")) == 30
