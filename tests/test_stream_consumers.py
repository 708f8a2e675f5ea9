"""The stream API with real consumers, end to end, on both stores: a consumer made with
`edge-collector consumers add`, its token read by a real `edge-collector serve` (with the
fleet view and the webhooks' loop, as deployed), its scope enforced on every route, its
reads audited, its token revoked from the CLI; the token never in the server's log."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from collector.store import Origin, open_store
from collector.validate import check_payload
from edge_agent.contract.envelope import Hierarchy, new_event
from edge_agent.contract.topics import GatewayTopics
from edge_agent.contract.wire import encode_batch
from tests.openapi_check import check_sse
from tests.stream_http import SseMessage, serve_process, sse_messages
from tests.test_collector_support import new_epoch

DISTRICT, STREET = "371312", "371312001"
HERE, THERE = "371312001001", "371312001002"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", *args], capture_output=True,
                          text=True, timeout=60)


def _ingest(url: str, community: str, gateway: str) -> None:
    """Smoke readings, a smoke alarm and a gate event of one gateway, validated for real."""
    hier = Hierarchy(district=DISTRICT, street=STREET, community=community, gateway=gateway)
    epoch = new_epoch()
    events = [
        new_event(hier, "sd-1", "smoke.reading",
                  {"density_db_m": 0.01, "temperature_c": 21.0, "battery_pct": 90}),
        new_event(hier, "sd-1", "smoke.alarm", {"state": "raised", "alarm_id": "a1"}),
        new_event(hier, "gate-1", "gate.access",
                  {"result": "granted", "method": "card", "direction": "in"}),
    ]
    topics = GatewayTopics(DISTRICT, community, gateway)
    payload = encode_batch(e.stamped(epoch, i + 1).to_json() for i, e in enumerate(events))
    verdict = check_payload(payload, topics)
    assert not verdict.rejected, verdict.rejected
    store = open_store(url)
    try:
        store.ingest(Origin(topics.events, gateway), verdict.accepted, [])
    finally:
        store.close()


async def _get(base: str, token: str, **params: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(
            f"{base}/v1/events", params=params,
            headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json()


async def _sse_types(base: str, token: str) -> list[str]:
    """The types of the events the SSE route sends before its first heartbeat."""
    types: list[str] = []
    async with aiohttp.ClientSession() as s, s.get(
            f"{base}/v1/events/stream", headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=20)) as resp:
        assert resp.status == 200
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data:"):
                types.append(json.loads(line[5:])["type"])
            elif line.startswith(":"):  # a heartbeat: everything there was has been sent
                break
    return types


@pytest.fixture
def served(store_url: str, tmp_path: Path) -> Any:
    open_store(store_url).close()  # `serve` reads a store, it never creates one
    api = serve_process(tmp_path, store_url, api={"heartbeat_s": 1},
                        fleet={"enabled": True, "heartbeat_s": 60})
    yield api.base, api.log
    api.stop()


async def test_a_real_consumer_reads_its_scope_only_and_is_audited_and_revoked(
        store_url: str, served: Any) -> None:
    base, log = served
    _ingest(store_url, HERE, "gw-here")
    _ingest(store_url, THERE, "gw-there")
    made = _cli("consumers", "add", "消防-河东", "--store", store_url, "--area", HERE,
                "--type", "smoke.*")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("cdt_")

    status, body = await _get(base, token)
    assert status == 200, body
    seen = {(e["community"], e["type"]) for e in body["events"]}
    assert seen == {(HERE, "smoke.reading"), (HERE, "smoke.alarm")}
    # filters only narrow: another community, another family, both give nothing
    for params in ({"community": THERE}, {"type": "gate.*"}, {"gateway": "gw-there"},
                   {"street": STREET, "type": "*"}):
        status, body = await _get(base, token, **params)
        assert status == 200 and all(
            e["community"] == HERE and e["type"].startswith("smoke.") for e in body["events"])
    assert sorted(await _sse_types(base, token)) == ["smoke.alarm", "smoke.reading"]
    # the fleet view served by the same process, through the same scope
    async with aiohttp.ClientSession() as s, s.get(
            f"{base}/v1/fleet", headers={"Authorization": f"Bearer {token}"}) as resp:
        fleet_text = await resp.text()
        assert resp.status in (200, 503), fleet_text  # 503 while it rebuilds
    deadline = time.monotonic() + 20
    while '"gw-here"' not in fleet_text:
        assert time.monotonic() < deadline, fleet_text
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as s, s.get(
                f"{base}/v1/fleet", headers={"Authorization": f"Bearer {token}"}) as resp:
            fleet_text = await resp.text()
    assert "gw-there" not in fleet_text and THERE not in fleet_text

    status, body = await _get(base, token + "x")
    assert status == 401
    audit = _cli("consumers", "audit", "--store", store_url, "--consumer", "消防-河东")
    assert audit.returncode == 0, audit.stderr
    assert "/v1/events" in audit.stdout

    revoked = _cli("consumers", "revoke", "消防-河东", "--store", store_url)
    assert revoked.returncode == 0, revoked.stderr
    deadline = time.monotonic() + 10  # the server's answers are cached for 2 s at most
    while (await _get(base, token))[0] != 401:
        assert time.monotonic() < deadline, "a revoked token still reads"
        await asyncio.sleep(0.2)
    assert token not in log.read_text(), "the token is in the server's log"


def test_every_route_the_deployed_api_serves_is_in_the_openapi_file(tmp_path: Path) -> None:
    """The app as `edge-collector serve` builds it (stream, webhooks, fleet): its `/v1/`
    routes and the published OpenAPI paths are the same set."""
    from collector.cli import _extensions
    from collector.config import CollectorConfig
    from collector.stream.api import build_app
    from collector.stream.cursor import CursorCodec
    from collector.stream.reader import open_reader
    from tests.openapi_check import SPEC
    from tests.stream_support import MemoryConsumers

    url = f"sqlite:///{tmp_path / 'district.db'}"
    open_store(url).close()
    key = tmp_path / "cursor.key"
    key.write_text(os.urandom(32).hex())
    cfg = CollectorConfig.model_validate({
        "collector": {"id": "c1"}, "store": url, "broker": {"url": "mqtt://127.0.0.1:1"},
        "api": {"cursor_key": {"file": str(key)}}, "fleet": {"enabled": True}})
    assert cfg.api is not None
    reader = open_reader(url)
    try:
        app = build_app(reader, CursorCodec(os.urandom(32)), MemoryConsumers())
        for extend in _extensions(cfg.api, cfg):
            extend(app, reader)
        served = {r.canonical for r in app.router.resources() if r.canonical.startswith("/v1/")}
    finally:
        reader.close()
    assert served == set(SPEC["paths"])


async def _ended_stream(base: str, token: str, after_open: Any) -> tuple[list[SseMessage], float]:
    """Reads an SSE stream until the server ends it: its messages and when the first
    message that is no event came. `after_open()` runs after the stream's first heartbeat
    (everything stored then has been sent); it returns when it has done what it does."""
    messages: list[SseMessage] = []
    ended_at = 0.0
    async with aiohttp.ClientSession() as s, s.get(
            f"{base}/v1/events/stream", headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=30)) as resp:
        assert resp.status == 200
        task: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(20):
                async for msg in sse_messages(resp):
                    if msg == ": heartbeat" and task is None:
                        task = asyncio.create_task(after_open())
                    elif isinstance(msg, SseMessage):
                        messages.append(msg)
                        if msg.event != "message" and not ended_at:
                            ended_at = time.monotonic()
        except TimeoutError:
            pytest.fail(f"the stream did not end; it sent {messages}")
        assert task is not None
        await task
    return messages, ended_at


async def test_an_open_stream_ends_when_its_token_is_revoked(
        store_url: str, served: Any) -> None:
    """docs/consumers.md: a revocation is refused everywhere within 2 s. An open stream
    (checked once, when it opened) went on delivering: an event stored 3 s after the
    revocation still arrived. Now it ends with `event: revoked` and its cursor, the event
    is not delivered, and the audit row of the stream says why it ended."""
    base, _ = served
    _ingest(store_url, HERE, "gw-here")
    made = _cli("consumers", "add", "消防-河东", "--store", store_url, "--area", HERE,
                "--type", "smoke.*")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    revoked_at = 0.0

    async def revoke_then_ingest() -> None:
        nonlocal revoked_at
        got = await asyncio.to_thread(_cli, "consumers", "revoke", "消防-河东", "--store",
                                      store_url)
        assert got.returncode == 0, got.stderr
        revoked_at = time.monotonic()
        await asyncio.sleep(3)  # past the 2 s every cached answer may still be used
        await asyncio.to_thread(_ingest, store_url, HERE, "gw-late")

    messages, ended_at = await _ended_stream(base, token, revoke_then_ingest)
    events = [m for m in messages if m.event == "message"]
    assert sorted(json.loads(m.data)["type"] for m in events) == ["smoke.alarm",
                                                                  "smoke.reading"]
    assert all(json.loads(m.data)["gateway"] == "gw-here" for m in events)
    last = messages[-1]
    assert last.event == "revoked", messages
    check_sse("revoked", last.data)
    note = json.loads(last.data)
    assert note["reason"] == "revoked" and "another token" in note["error"]
    assert ended_at - revoked_at < 10  # (ended while it was idle: no event needed)
    # resuming from the cursor with another token reads the late event, nothing before it
    other = _cli("consumers", "token", "消防-河东", "--store", store_url)
    assert other.returncode == 0, other.stderr
    status, body = await _get(base, other.stdout.strip(), after=note["cursor"])
    assert status == 200, body
    assert {e["gateway"] for e in body["events"]} == {"gw-late"}
    deadline = time.monotonic() + 10  # audit rows are written within a second
    while True:
        audit = _cli("consumers", "audit", "--store", store_url, "--consumer", "消防-河东")
        assert audit.returncode == 0, audit.stderr
        if "/v1/events/stream (ended: revoked)" in audit.stdout:
            break
        assert time.monotonic() < deadline, audit.stdout
        await asyncio.sleep(0.3)


async def test_an_open_stream_ends_when_its_token_expires(
        store_url: str, served: Any) -> None:
    """A token that expires while its stream is open: the stream ends with
    `event: expired`; an event stored after the expiry is not delivered."""
    base, _ = served
    made = _cli("consumers", "add", "消防-河东", "--store", store_url, "--area", HERE,
                "--type", "smoke.*")
    assert made.returncode == 0, made.stderr
    expires = datetime.now(UTC) + timedelta(seconds=6)
    short = _cli("consumers", "token", "消防-河东", "--store", store_url, "--expires",
                 expires.isoformat())
    assert short.returncode == 0, short.stderr
    expiry_in = (expires - datetime.now(UTC)).total_seconds()

    async def ingest_after_expiry() -> None:
        await asyncio.sleep(max(0.0, expiry_in) + 0.5)
        await asyncio.to_thread(_ingest, store_url, HERE, "gw-late")

    messages, _ = await _ended_stream(base, short.stdout.strip(), ingest_after_expiry)
    assert [m.event for m in messages] == ["expired"], messages
    check_sse("expired", messages[-1].data)
    assert json.loads(messages[-1].data)["reason"] == "expired"
