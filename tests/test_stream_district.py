"""The stream read the way a department reads it, while a real district ingests: three
`edge-agent run` → Mosquitto → two `edge-collector run` committing concurrently into
PostgreSQL (the case where rows numbered in one order commit in another), and an
`edge-collector serve` with a real consumer. One reader pages with the cursor, one
follows the SSE stream, each disconnecting and resuming 50 times; each must end with
every stored event exactly once, in one order, with nothing skipped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from collector.consumers import open_consumers, parse_scope
from collector.store import open_store
from tests.district import District
from tests.peers import Mosquitto
from tests.stream_http import serve_process

RESUMES = 50


async def _page_reader(base: str, token: str, stop: asyncio.Event) -> list[str]:
    """Pages of ≤ 97 events, a new connection for each of the first RESUMES pages, until
    `stop` and the stream is read to its end."""
    ids: list[str] = []
    cursor: str | None = None
    resumes = 0
    while True:
        params = {"limit": "97", **({"after": cursor} if cursor else {})}
        async with aiohttp.ClientSession() as s, s.get(
                f"{base}/v1/events", params=params,
                headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        resumes += 1
        ids.extend(e["id"] for e in body["events"])
        cursor = body["next"]
        if not body["more"]:
            if stop.is_set():
                return ids
            await asyncio.sleep(0.05 if resumes < RESUMES else 0.3)


async def _sse_reader(base: str, token: str, stop: asyncio.Event) -> tuple[list[str], int]:
    """The SSE stream, dropped after a few events and resumed from `Last-Event-ID`
    RESUMES times; then followed until `stop` and a heartbeat with nothing new."""
    ids: list[str] = []
    last: str | None = None
    resumes = 0
    while True:
        headers = {"Authorization": f"Bearer {token}", **({"Last-Event-ID": last} if last else {})}
        took = 0
        async with aiohttp.ClientSession() as s, s.get(
                f"{base}/v1/events/stream", headers=headers,
                timeout=aiohttp.ClientTimeout(total=120, sock_read=10)) as resp:
            assert resp.status == 200, await resp.text()
            event_id: str | None = None
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    ids.append(json.loads(line[5:])["id"])
                    last, took = event_id, took + 1
                    if resumes < RESUMES and took >= 7:
                        break  # drop the connection mid-stream, resume from `last`
                elif line.startswith(":") and stop.is_set():
                    return ids, resumes  # idle after the end: everything was sent
        resumes += 1


@pytest.mark.timeout(300)
def test_readers_resuming_50_times_get_every_event_once_while_two_collectors_ingest(
        tmp_path: Path, mosquitto: Mosquitto, postgres: Any) -> None:
    url = postgres.new_database()
    from collector.store import migrate_store
    migrate_store(url)
    consumers = open_consumers(url)
    token = consumers.add("公安-全区", parse_scope(["all"], ["*"])).token
    district = District(tmp_path, mosquitto.url, url, ack_timeout_s=2.0)
    district.collector("c1"), district.collector("c2")
    api = serve_process(tmp_path, url, api={"heartbeat_s": 1})
    base = api.base
    try:
        district.start_collectors(together=True)

        async def read_while_ingesting() -> tuple[list[str], list[str], int]:
            stop = asyncio.Event()
            pages = asyncio.create_task(_page_reader(base, token, stop))
            sse = asyncio.create_task(_sse_reader(base, token, stop))
            await asyncio.to_thread(district.start_agents)
            await asyncio.sleep(8)
            await asyncio.to_thread(district.finish)  # agents stopped, every outbox drained
            stop.set()
            paged = await pages
            streamed, resumed = await sse
            return paged, streamed, resumed

        paged, streamed, resumed = asyncio.run(read_while_ingesting())
    finally:
        api.stop()
        district.close()
    store = open_store(url, create=False)
    try:
        stored = store.stats().events
    finally:
        store.close()
    assert stored > 500, "too few events to mean anything"
    assert resumed >= RESUMES
    for name, ids in (("paging", paged), ("SSE", streamed)):
        assert len(ids) == len(set(ids)), f"{name}: an event came twice"
        assert len(ids) == stored, f"{name}: {stored - len(ids)} events skipped"
    assert paged == streamed, "the two readers saw the events in different orders"
