"""The stream API over real HTTP on both stores: tokens and scopes, every response
validated against collector/stream/openapi.yaml, malformed and hostile parameters,
exactly-once across 50 reconnects (cursor paging and SSE) while events are ingested."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiohttp
import pytest

from collector.store import Store
from collector.stream.api import StreamSettings
from collector.stream.filter import Filter
from collector.stream.position import Position
from collector.stream.reader import Reader
from tests.openapi_check import check, check_sse
from tests.stream_http import SseMessage, running_api, sse_messages
from tests.stream_support import ALL, Consumer, MemoryConsumers, Scope, event_rows, ingest
from tests.test_collector_support import COMMUNITY


@pytest.fixture
def consumers() -> MemoryConsumers:
    return MemoryConsumers({
        "t-all": Consumer("platform", ALL),
        "t-fire": Consumer("消防-河东", Scope((COMMUNITY,), ("smoke.*",))),
        "t-other": Consumer("elsewhere", Scope(("999999",), ("*",))),
        "t-water": Consumer("water", Scope(("",), ("water.*",))),
        "t-none": Consumer("none", Scope((), ("*",))),
    })


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get(session: aiohttp.ClientSession, url: str, path: str, token: str | None,
              **params: str) -> tuple[int, Any]:
    headers = auth(token) if token else {}
    async with session.get(url + path, params=params, headers=headers) as resp:
        body = await resp.json()
        check(path, resp.status, body)
        return resp.status, body


async def test_tokens(reader: Reader, consumers: MemoryConsumers, store: Store) -> None:
    ingest(store, event_rows(3))
    async with running_api(reader, consumers) as api, aiohttp.ClientSession() as s:
        for path in ("/v1/events", "/v1/events/stream"):
            status, body = await get(s, api.base, path, None)
            assert status == 401 and "bearer token" in body["error"]
            status, body = await get(s, api.base, path, "nope")
            assert status == 401 and "unknown, revoked or expired" in body["error"]
            status, body = await get(s, api.base, path, "t-none")
            assert status == 403
        status, body = await get(s, api.base, "/v1/events", "t-all")
        assert status == 200 and len(body["events"]) == 3 and body["more"] is False
        status, body = await get(s, api.base, "/v1/events", "t-fire")
        assert len(body["events"]) == 3
        for token in ("t-other", "t-water"):
            status, body = await get(s, api.base, "/v1/events", token)
            assert status == 200 and body["events"] == []
    assert ("platform", "/v1/events", ALL, 3) in consumers.audits


async def test_scope_never_widens(reader: Reader, consumers: MemoryConsumers,
                                  store: Store) -> None:
    ingest(store, event_rows(4))
    combos = [{}, {"type": "*"}, {"type": "water.*,smoke.*"}, {"district": "999999"},
              {"community": "999999001001"}, {"gateway": "gw-a"}, {"street": "371312001"}]
    async with running_api(reader, consumers) as api, aiohttp.ClientSession() as s:
        _, full = await get(s, api.base, "/v1/events", "t-all")
        cursor = full["next"]
        for params in combos:
            for token in ("t-other", "t-water"):
                _, body = await get(s, api.base, "/v1/events", token, **params)
                assert body["events"] == []
                _, body = await get(s, api.base, "/v1/events", token, after=cursor, **params)
                assert body["events"] == []
            _, body = await get(s, api.base, "/v1/events", "t-fire", **params)
            assert all(e["type"].startswith("smoke.") and e["community"] == COMMUNITY
                       for e in body["events"])
        # SSE resume with a cursor from another consumer's read: still its own scope
        async with s.get(api.base + "/v1/events/stream", headers={
                **auth("t-other"), "Last-Event-ID": api.codec.encode(Position.start(
                    reader.kind))}) as resp:
            assert resp.status == 200
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.8):
                    async for msg in sse_messages(resp):
                        assert not isinstance(msg, SseMessage)


BAD = [({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "x"}, "limit"),
       ({"since": "yesterday"}, "since"), ({"since": "2026-13-40T00:00:00Z"}, "since"),
       ({"type": "smoke alarm"}, "type"), ({"gateway": "a/b"}, "gateway"),
       ({"after": "garbage"}, "after"), ({"after": "A" * 65}, "after"),
       ({"bogus": "1"}, "bogus"), ({"community": ",".join(["c"] * 21)}, "community")]


@pytest.mark.parametrize(("params", "name"), BAD)
async def test_bad_parameters(reader: Reader, consumers: MemoryConsumers,
                              params: dict[str, str], name: str) -> None:
    async with running_api(reader, consumers) as api, aiohttp.ClientSession() as s:
        for path in ("/v1/events", "/v1/events/stream"):
            status, body = await get(s, api.base, path, "t-all", **params)
            assert status == 400 and body["parameter"] == name, body
    assert [(a[1], a[3]) for a in consumers.audits] == [("/v1/events", 0),
                                                        ("/v1/events/stream", 0)]


async def test_cursor_tampered_or_foreign(reader: Reader, consumers: MemoryConsumers,
                                          store: Store) -> None:
    ingest(store, event_rows(2))
    async with running_api(reader, consumers) as api, aiohttp.ClientSession() as s:
        _, body = await get(s, api.base, "/v1/events", "t-all", limit="1")
        cursor = body["next"]
        flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
        other_kind = "postgresql" if reader.kind == "sqlite" else "sqlite"
        for bad in (flipped, api.codec.encode(Position(other_kind, 1))):
            status, body = await get(s, api.base, "/v1/events", "t-all", after=bad)
            assert status == 400 and body["error"] == "cursor is not one this server issued"
        async with s.get(api.base + "/v1/events/stream",
                         headers={**auth("t-all"), "Last-Event-ID": flipped}) as resp:
            assert resp.status == 400 and (await resp.json())["parameter"] == "Last-Event-ID"
        status, body = await get(s, api.base, "/v1/events", "t-all", after=cursor)
        assert status == 200 and len(body["events"]) == 1


async def test_a_signed_cursor_beyond_the_store_is_refused(
        reader: Reader, consumers: MemoryConsumers, store: Store) -> None:
    """A cursor with the server's key but a position the store never reached (10^12,
    2^63-1: the store was replaced or restored) is a 400 naming the parameter, on both
    routes; a cursor just issued for the newest row is valid, even before the head task
    has seen that row (its poll is one minute here: the store's end is read instead)."""
    ingest(store, event_rows(3))
    settings = StreamSettings(heartbeat_s=0.2, poll_s=60)
    async with running_api(reader, consumers, settings) as api, aiohttp.ClientSession() as s:
        far = [api.codec.encode(Position(reader.kind, a, b))
               for a in (10**12, 2**63 - 1) for b in (0, 2**128 - 1)]
        for cursor in far:
            status, body = await get(s, api.base, "/v1/events", "t-all", after=cursor)
            assert status == 400 and body["parameter"] == "after", body
            assert body["error"].startswith("cursor is beyond the end of this store"), body
            for headers, name in (({"Last-Event-ID": cursor}, "Last-Event-ID"), ({}, "after")):
                async with s.get(api.base + "/v1/events/stream", headers={
                        **auth("t-all"), **headers},
                        params={} if headers else {"after": cursor}) as resp:
                    err = await resp.json()
                    check("/v1/events/stream", resp.status, err)
                    assert resp.status == 400 and err["parameter"] == name, err
        # issued a moment ago for the newest rows, which the head has not seen
        await asyncio.to_thread(ingest, store, event_rows(2))
        _, body = await get(s, api.base, "/v1/events", "t-all")
        assert len(body["events"]) == 5 and body["more"] is False
        status, again = await get(s, api.base, "/v1/events", "t-all", after=body["next"])
        assert status == 200 and again["events"] == [] and again["next"] == body["next"]
        async with s.get(api.base + "/v1/events/stream",
                         headers={**auth("t-all"), "Last-Event-ID": body["next"]}) as resp:
            assert resp.status == 200
            async with asyncio.timeout(10):
                async for msg in sse_messages(resp):
                    assert msg == ": heartbeat", msg  # nothing after the newest row
                    break
    audited = [a for a in consumers.audits if a[3] == 0 and a[1] == "/v1/events"]
    assert len(audited) >= len(far)  # the refusals are audited, as every bad parameter


async def test_oversized_query(reader: Reader, consumers: MemoryConsumers) -> None:
    async with running_api(reader, consumers) as api, aiohttp.ClientSession() as s:
        status, _ = await get(s, api.base, "/v1/events", "t-all", type="a" * 5000)
        assert status == 414
        async with s.get(api.base + "/v1/events?type=" + "a" * 9000,
                         headers=auth("t-all")) as resp:
            assert resp.status in (400, 414)


INJECTIONS = ["' OR 1=1 --", "x'); DROP TABLE events; --", "%", "_", "\\", "*' OR '1'='1",
              "1; SELECT pg_sleep(5)", "\x00", "智能' --"]


@pytest.mark.parametrize("evil", INJECTIONS)
async def test_injection_everywhere(reader: Reader, consumers: MemoryConsumers, store: Store,
                                    evil: str) -> None:
    ingest(store, event_rows(3))
    async with running_api(reader, consumers) as api, aiohttp.ClientSession() as s:
        for name in ("after", "type", "alarm_type", "district", "street", "community",
                     "gateway", "since", "limit"):
            status, body = await get(s, api.base, "/v1/events", "t-all", **{name: evil})
            # refused naming the parameter, or (a value that could be a code) matches nothing
            assert (status == 400 and body["parameter"] == name) or \
                (status == 200 and body["events"] == [] and evil in ("%", "_")), (name, body)
        status, body = await get(s, api.base, "/v1/events", "t-all")
        assert status == 200 and len(body["events"]) == 3


# ------------------------------------------------------------- exactly once across reconnects


def _ingest_in_thread(store: Store, batches: int, size: int) -> tuple[threading.Thread,
                                                                      list[str]]:
    ids: list[str] = []

    def run() -> None:
        for _ in range(batches):
            rows = event_rows(size)
            ingest(store, rows)
            ids.extend(r.id for r in rows)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, ids


def _store_order(reader: Reader) -> list[str]:
    out: list[str] = []
    after = Position.start(reader.kind)
    while True:
        page = reader.read(after, Filter())
        out += [json.loads(b)["id"] for _, b in page.events]
        after = page.next
        if not page.more:
            return out


async def test_paging_exactly_once_across_50_reconnects(reader: Reader,
                                                        consumers: MemoryConsumers,
                                                        store: Store) -> None:
    thread, _ = _ingest_in_thread(store, 100, 20)
    got: list[str] = []
    cursor: str | None = None
    async with running_api(reader, consumers) as api:
        for _ in range(50):  # a new connection (session) each time
            async with aiohttp.ClientSession() as s:
                params = {"limit": "37", **({"after": cursor} if cursor else {})}
                _, body = await get(s, api.base, "/v1/events", "t-all", **params)
                got += [e["id"] for e in body["events"]]
                cursor = body["next"]
            await asyncio.sleep(0.01)
        thread.join()
        async with aiohttp.ClientSession() as s:
            while True:
                _, body = await get(s, api.base, "/v1/events", "t-all", after=cursor or "")
                got += [e["id"] for e in body["events"]]
                cursor = body["next"]
                if not body["more"]:
                    break
    assert got == _store_order(reader) and len(got) == 2000


async def test_sse_exactly_once_across_50_reconnects(reader: Reader,
                                                     consumers: MemoryConsumers,
                                                     store: Store) -> None:
    thread, _ = _ingest_in_thread(store, 100, 20)
    got: list[str] = []
    last: str | None = None
    settings = StreamSettings(heartbeat_s=0.5, poll_s=0.05)
    async with running_api(reader, consumers, settings) as api:
        for i in range(51):
            if i == 50:
                await asyncio.to_thread(thread.join)
                if len(got) == 2000:
                    break
            async with aiohttp.ClientSession() as s:
                headers = {**auth("t-all"), **({"Last-Event-ID": last} if last else {})}
                async with s.get(api.base + "/v1/events/stream", headers=headers) as resp:
                    assert resp.status == 200
                    taken = 0
                    want = 40 if i < 50 else 2000 - len(got)
                    async with asyncio.timeout(30):
                        async for msg in sse_messages(resp):
                            if isinstance(msg, SseMessage):
                                assert msg.event == "message"
                                check_sse("message", msg.data)
                                got.append(json.loads(msg.data)["id"])
                                last = msg.id
                                taken += 1
                                if taken >= want:
                                    break
        thread.join()
    assert got == _store_order(reader) and len(got) == 2000
    streams = [a for a in consumers.audits if a[1] == "/v1/events/stream"]
    assert len(streams) >= 50 and sum(a[3] for a in streams) >= 2000


async def test_sse_heartbeat_and_live_events(reader: Reader, consumers: MemoryConsumers,
                                             store: Store) -> None:
    settings = StreamSettings(heartbeat_s=0.2, poll_s=0.05)
    async with running_api(reader, consumers, settings) as api, \
            aiohttp.ClientSession() as s, \
            s.get(api.base + "/v1/events/stream", headers=auth("t-fire")) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        beats, events = 0, 0
        async with asyncio.timeout(10):
            async for msg in sse_messages(resp):
                if msg == ": heartbeat":
                    beats += 1
                    if beats == 2:
                        await asyncio.to_thread(ingest, store, event_rows(5))
                elif isinstance(msg, SseMessage):
                    events += 1
                    if events == 5:
                        break
        assert beats >= 2


async def test_sse_behind(reader: Reader, consumers: MemoryConsumers, store: Store) -> None:
    """A client that stops reading is told it is behind, with the cursor to resume from."""
    for _ in range(20):
        ingest(store, event_rows(500))
    settings = StreamSettings(heartbeat_s=5, poll_s=0.05, behind_after_s=0.5)
    async with running_api(reader, consumers, settings) as api:
        conn = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=conn, read_bufsize=2**12) as s, \
                s.get(api.base + "/v1/events/stream", headers=auth("t-all")) as resp:
            await asyncio.sleep(3)  # not reading: the server's writes stop draining
            messages = []
            async with asyncio.timeout(30):
                async for msg in sse_messages(resp):
                    if isinstance(msg, SseMessage):
                        messages.append(msg)
            behind = messages[-1]
            assert behind.event == "behind"
            check_sse("behind", behind.data)
            events = [m for m in messages if m.event == "message"]
            assert 0 < len(events) < 10_000
            assert json.loads(behind.data)["cursor"] == events[-1].id


@pytest.mark.parametrize("change", ["revoked", "expired", "scope_changed"])
async def test_an_open_stream_ends_when_its_token_no_longer_reads_as_it_did(
        reader: Reader, consumers: MemoryConsumers, store: Store, change: str) -> None:
    """The token is checked again while the stream is open (every `recheck_s`, and
    before each delivery): a revoked or expired token, or a scope that changed, ends the
    stream with that event and the cursor to resume from; no later event is delivered,
    and the stream's audit row says why it ended."""
    ingest(store, event_rows(2))
    settings = StreamSettings(heartbeat_s=0.2, poll_s=0.05, recheck_s=0.1)
    async with running_api(reader, consumers, settings) as api, aiohttp.ClientSession() as s:
        messages: list[SseMessage] = []
        async with s.get(api.base + "/v1/events/stream", headers=auth("t-fire")) as resp, \
                asyncio.timeout(10):
            async for msg in sse_messages(resp):
                if msg == ": heartbeat" and len(messages) == 2:
                    if change == "scope_changed":
                        consumers.tokens["t-fire"] = Consumer("消防-河东", ALL)
                    else:
                        consumers.refused["t-fire"] = change
                    await asyncio.to_thread(ingest, store, event_rows(3, start=3))
                if isinstance(msg, SseMessage):
                    messages.append(msg)
        assert [m.event for m in messages] == ["message", "message", change], messages
        check_sse(change, messages[-1].data)
        note = json.loads(messages[-1].data)
        assert note["reason"] == change
        # the cursor resumes after what was delivered: the 3 later events, none lost
        _, body = await get(s, api.base, "/v1/events", "t-all", after=note["cursor"])
        assert [e["seq"] for e in body["events"]] == [3, 4, 5]
    assert ("消防-河东", f"/v1/events/stream (ended: {change})", Scope((COMMUNITY,), ("smoke.*",)),
            2) in consumers.audits
