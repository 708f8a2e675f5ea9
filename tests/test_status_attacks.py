"""The status app attacked as hostile LAN clients would, over real HTTP on loopback.

A real Agent (real outbox and pipeline) serves the app on 127.0.0.1; each client binds
its own source address in 127.0.0.0/8 (Linux routes the whole block to `lo`), so the
app sees several hosts: 127.0.0.2 and .3 are hostile, 127.0.0.9 is the staff member.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge_agent.agent import Agent
from edge_agent.status import app as status_app
from edge_agent.status.app import StatusApp
from tests.browser import chromium, page
from tests.test_status_app import PASSWORD, config, status_schema

STAFF = "127.0.0.9"
HOSTILE = ("127.0.0.2", "127.0.0.3")
DELAY_S = 0.5  # the failure pause, shortened for the test


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    a = await Agent.open(config(tmp_path))
    try:
        yield a
    finally:
        await a.outbox.close()


@pytest.fixture
async def served(agent: Agent, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[tuple[StatusApp, str]]:
    monkeypatch.setattr(status_app, "LOGIN_FAIL_DELAY_S", DELAY_S)
    status = StatusApp(agent, hostname="gw-app")
    server = TestServer(status.build(), host="127.0.0.1")
    await server.start_server()
    try:
        yield status, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def client_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose connections leave from `address`, keeping its cookies."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0)
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP-address host
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as session:
        yield session


async def until(cond: Any, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- epoch


async def test_the_outbox_epoch_is_shown_only_after_login(
        agent: Agent, served: tuple[StatusApp, str]) -> None:
    _, base = served
    epoch = agent.outbox.stats().epoch
    validator = jsonschema.Draft202012Validator(status_schema())
    async with client_from(HOSTILE[0]) as hostile:
        for path in ("/api/status", "/metrics", "/healthz", "/"):
            async with hostile.get(base + path) as r:
                assert epoch not in await r.text(), path
        async with hostile.get(base + "/api/status") as r:
            doc = await r.json()
        assert "epoch" not in doc["outbox"]
        validator.validate(doc)
        async with hostile.get(base + "/api/stream") as r:
            line = await asyncio.wait_for(_data_line(r), 5)
        assert epoch not in line and not json.loads(line)["viewer"]["authenticated"]
        doc["outbox"]["epoch"] = epoch  # the schema does not let an anonymous doc carry it
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(doc)
    async with client_from(STAFF) as staff:
        async with staff.post(base + "/login", data={"password": PASSWORD}) as r:
            assert r.status == 200
        async with staff.get(base + "/api/status") as r:
            doc = await r.json()
        assert doc["viewer"]["authenticated"] and doc["outbox"]["epoch"] == epoch
        validator.validate(doc)
        async with staff.get(base + "/api/stream") as r:
            assert json.loads(await asyncio.wait_for(_data_line(r), 5))["outbox"]["epoch"] \
                == epoch


async def _data_line(r: aiohttp.ClientResponse) -> str:
    while line := (await r.content.readline()).decode():
        if line.startswith("data: "):
            return line[6:]
    raise AssertionError("stream ended without a document")


# --------------------------------------------------------------------------- guessing


async def test_guessing_from_two_addresses_does_not_delay_staff_on_a_third(
        served: tuple[StatusApp, str]) -> None:
    """Hostile hosts fire wrong logins and Authorization headers in parallel (one of them
    forging X-Forwarded-For); each is still answered one guess per pause per address,
    while the staff member's login from another address goes through at once."""
    status, base = served
    answered: list[tuple[str, int]] = []  # (who, status) in the order answered

    async def guess(session: aiohttp.ClientSession, who: str, i: int) -> None:
        if i % 3 == 2:  # an Authorization header guess on /api/status
            async with session.get(base + "/api/status",
                                   headers={"Authorization": f"Bearer guess-{i}"}) as r:
                doc = await r.json()
                answered.append((who, 401 if not doc["viewer"]["authenticated"] else 200))
            return
        forged = {"X-Forwarded-For": f"10.0.0.{i}", "Forwarded": f"for=10.0.0.{i}"}
        async with session.post(base + "/login", data={"password": f"guess-{i}"},
                                headers=forged if who == HOSTILE[1] else None) as r:
            answered.append((who, r.status))

    per_host = 6
    async with client_from(HOSTILE[0]) as a, client_from(HOSTILE[1]) as b, \
            client_from(STAFF) as staff:
        hostile = [asyncio.create_task(guess(s, who, i))
                   for s, who in ((a, HOSTILE[0]), (b, HOSTILE[1])) for i in range(per_host)]
        # all sent at once; when each host has its first answer, the rest are queued
        await until(lambda: {who for who, _ in answered} >= set(HOSTILE))
        async with staff.post(base + "/login", data={"password": PASSWORD}) as r:
            answered.append(("staff", r.status))
        async with staff.get(base + "/api/status") as r:
            assert (await r.json())["viewer"]["authenticated"]
        await asyncio.gather(*hostile)
    assert ("staff", 200) in answered
    # staff was answered before either hostile host had half of its guesses answered
    before_staff = answered[:answered.index(("staff", 200))]
    for host in HOSTILE:
        assert sum(1 for who, _ in before_staff if who == host) < per_host // 2, answered
    assert {code for who, code in answered if who != "staff"} == {401}
    assert len(status.guesses) == 0  # nobody waiting: no entry kept


async def test_guesses_from_one_address_are_one_per_pause(
        served: tuple[StatusApp, str]) -> None:
    status, base = served
    loop = asyncio.get_running_loop()
    async with client_from(HOSTILE[0]) as hostile:
        started = loop.time()
        answers = await asyncio.gather(*(hostile.post(base + "/login",
                                                      data={"password": f"g{i}"})
                                         for i in range(5)))
        took = loop.time() - started
    assert [r.status for r in answers] == [401] * 5
    assert took >= 5 * DELAY_S * 0.9  # a lower bound: the pauses of one address add up
    assert len(status.guesses) == 0


async def test_a_flood_of_parallel_guesses_is_refused_not_queued(
        served: tuple[StatusApp, str]) -> None:
    """More parallel checks than one address may have waiting are refused at once (429)
    instead of queueing without end; the queue that is kept is answered as usual."""
    status, base = served
    order: list[int] = []

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        async with session.post(base + "/login", data={"password": f"g{i}"}) as r:
            order.append(r.status)
            if r.status == 429:
                assert (await r.json())["error"] == "too_many_attempts"
                assert r.headers["Retry-After"] == "1"

    status.guesses.waiting_max = 3
    count = status.guesses.waiting_max + 6
    async with client_from(HOSTILE[0]) as hostile:
        await asyncio.gather(*(one(hostile, i) for i in range(count)))
    assert order.count(401) == status.guesses.waiting_max + 1
    assert order.count(429) == 5
    assert order.index(401) > order.index(429)  # refused at once, before the queue moved
    assert len(status.guesses) == 0


async def test_a_flood_of_addresses_keeps_the_table_bounded(
        served: tuple[StatusApp, str]) -> None:
    """More addresses than the table holds share one overflow line: memory stays
    bounded and so does the total guess rate; the table empties when they stop."""
    status, base = served
    status.guesses.addresses_max = 3
    addresses = [f"127.0.1.{i}" for i in range(1, 9)]
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(status.guesses))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        async with contextlib.AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(client_from(a)) for a in addresses]
            answers = await asyncio.gather(*(
                s.post(base + "/login", data={"password": "nope"}) for s in sessions))
    finally:
        watcher.cancel()
    assert [r.status for r in answers] == [401] * len(addresses)
    assert 1 < peak <= 3 + 1  # the cap, plus the shared overflow line
    assert len(status.guesses) == 0


# --------------------------------------------------------------------------- streams


async def test_junk_authorization_does_not_open_more_streams_than_the_cap(
        served: tuple[StatusApp, str], monkeypatch: pytest.MonkeyPatch) -> None:
    status, base = served
    monkeypatch.setattr(status_app, "STREAMS_MAX", 4)
    junk = ["Bearer wrong", "Basic !!!", "Basic " + "A" * 3000, "Digest x", "Basic Og==",
            "Bearer"]
    async with client_from(HOSTILE[0]) as a, client_from(HOSTILE[1]) as b:
        attempts = [asyncio.create_task(
            (a if i % 2 else b).get(base + "/api/stream",
                                    headers={"Authorization": junk[i % len(junk)]}))
            for i in range(12)]
        # while they are being checked and after, the app never holds more than the cap
        done = await asyncio.gather(*attempts)
        try:
            opened = [r for r in done if r.status == 200]
            assert len(opened) == 4 and {r.status for r in done} == {200, 503}
            assert len(status.stream.listeners) <= 4
            for r in opened:  # they are real streams (anonymous ones)
                doc = json.loads(await asyncio.wait_for(_data_line(r), 5))
                assert not doc["viewer"]["authenticated"]
            async with client_from(STAFF) as staff, staff.get(base + "/api/stream") as r:
                assert r.status == 503  # full: a fifth stream, junk or not, is refused
        finally:
            for r in done:
                r.close()
    # closed streams give their slots back
    await until(lambda: status._streams == 0)
    async with client_from(STAFF) as staff, staff.get(base + "/api/stream") as r:
        assert r.status == 200


async def test_one_host_cannot_take_every_stream(
        served: tuple[StatusApp, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, base = served
    monkeypatch.setattr(status_app, "STREAMS_PER_CLIENT", 3, raising=False)
    async with client_from(HOSTILE[0]) as hostile, client_from(STAFF) as staff:
        held = [await hostile.get(base + "/api/stream") for _ in range(3)]
        try:
            assert [r.status for r in held] == [200] * 3
            async with hostile.get(base + "/api/stream") as r:
                assert r.status == 503 and "from this computer" in await r.text()
            async with staff.get(base + "/api/stream") as r:
                assert r.status == 200
        finally:
            for r in held:
                r.close()


async def test_the_page_keeps_updating_when_every_stream_slot_is_taken(
        agent: Agent, served: tuple[StatusApp, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile hosts hold every stream slot: the page's stream is refused (503), and
    the browser never retries that by itself; the page polls instead and still shows
    a new alarm."""
    _, base = served
    monkeypatch.setattr(status_app, "STREAMS_MAX", 2)
    async with client_from(HOSTILE[0]) as a, client_from(HOSTILE[1]) as b:
        held = [await a.get(base + "/api/stream"), await b.get(base + "/api/stream")]
        try:
            assert [r.status for r in held] == [200, 200]
            async with chromium() as browser, page(browser) as p:
                refused: list[int] = []
                p.on("response", lambda r: refused.append(r.status)
                     if r.url.endswith("/api/stream") else None)
                await p.goto(base + "/")
                await p.wait_for_selector("#alarm-list .none")
                await until(lambda: 503 in refused)
                agent.pipeline.emit("smoke-1", "smoke.alarm",
                                    {"state": "raised", "alarm_id": "while-refused"})
                await p.wait_for_selector("[data-testid=alarm][data-device=smoke-1]",
                                          timeout=15_000)
        finally:
            for r in held:
                r.close()


# --------------------------------------------------------------------------- logout


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"},  # same host, another port: another origin
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
], ids=["foreign-origin", "null-origin", "other-port", "cross-site", "same-site"])
async def test_a_cross_origin_post_does_not_log_out(
        served: tuple[StatusApp, str], headers: dict[str, str]) -> None:
    _, base = served
    async with client_from(STAFF) as staff:
        async with staff.post(base + "/login", data={"password": PASSWORD}) as r:
            assert r.status == 200 and "SameSite=Strict" in r.headers["Set-Cookie"]
        async with staff.post(base + "/logout", headers=headers) as r:
            assert r.status == 403 and (await r.json())["error"] == "cross_origin"
            assert "Set-Cookie" not in r.headers
        async with staff.get(base + "/api/status") as r:
            assert (await r.json())["viewer"]["authenticated"]  # still logged in
        host = base.partition("://")[2]
        async with staff.post(base + "/logout", headers={"Origin": f"http://{host}",
                                                         "Sec-Fetch-Site": "same-origin"}) as r:
            assert r.status == 200
        async with staff.get(base + "/api/status") as r:
            assert not (await r.json())["viewer"]["authenticated"]


async def test_another_site_cannot_log_staff_out_in_chromium(
        served: tuple[StatusApp, str]) -> None:
    """The real attack: a page of another site (http://localhost:<port>) submits a form
    to the gateway's /logout in the staff member's browser. The SameSite=Strict cookie is
    not sent with it, but the answer's Set-Cookie used to delete it all the same."""
    _, base = served
    evil = web.Application()

    async def attack(_request: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            f'<form id="f" method="post" action="{base}/logout"></form>'
            '<script>document.getElementById("f").submit()</script>'))

    evil.router.add_get("/", attack)
    evil_server = TestServer(evil, host="127.0.0.1")
    await evil_server.start_server()
    authed = "fetch('/api/status').then(r => r.json()).then(d => d.viewer.authenticated)"
    try:
        async with chromium() as browser, page(browser) as p:
            await p.goto(base + "/")
            await p.click("#login-btn")
            await p.fill("#login-form [name=password]", PASSWORD)
            await p.click("#login-form [type=submit]")
            await p.wait_for_function("document.getElementById('login-form').hidden")
            assert await p.evaluate(authed)
            await p.goto(f"http://localhost:{evil_server.port}/")
            await p.wait_for_url(base + "/logout")
            assert "cross_origin" in await p.content()
            await p.goto(base + "/")
            assert await p.evaluate(authed)  # still logged in
            # the page's own logout button still works (a same-origin POST)
            await p.wait_for_selector("#login-btn:not([hidden])")
            await p.click("#login-btn")
            await p.wait_for_function(f"{authed}.then(a => !a)")
    finally:
        await evil_server.close()
