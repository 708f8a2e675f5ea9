"""`GET /v1/fleet` on a real store (both backends) with real consumers: the tree, the
alarm list, gaps from the store, scope filtering, auth and audit; `GET /fleet` serves
the page."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from collector.consumers import open_consumers, parse_scope
from collector.fleet.projector import FleetSettings
from collector.store import Origin, open_store
from tests.fleet_support import EAST, WEST, Gw, running_fleet
from tests.openapi_check import check

SETTINGS = FleetSettings(heartbeat_s=60, poll_s=0.1, gaps_s=0.2)


async def fleet_json(http: aiohttp.ClientSession, base: str, token: str,
                     until: Any = None) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        async with http.get(f"{base}/v1/fleet",
                            headers={"Authorization": f"Bearer {token}"}) as r:
            if r.status == 200:
                body: dict[str, Any] = await r.json()
                check("/v1/fleet", 200, body)
                if until is None or until(body):
                    return body
            else:
                assert r.status == 503, await r.text()
        assert time.monotonic() < deadline, "the fleet view never showed what was expected"
        await asyncio.sleep(0.1)


def gateway_ids(body: dict[str, Any]) -> list[str]:
    return [g["id"] for d in body["districts"] for s in d["streets"]
            for c in s["communities"] for g in c["gateways"]]


async def test_fleet_json_on_a_real_store_scoped_per_consumer(store_url: str) -> None:
    store = open_store(store_url)
    a, b = Gw("gw-a", EAST), Gw("gw-b", WEST)
    a.ingest(store, a.heartbeat(outbox_events=2, oldest_waiting_s=1.0, version="1.4.0"),
             ("smoke-01", "smoke.alarm", {"state": "raised", "alarm_id": "s-1"}),
             ("gate-01", "gate.forced_open", {"state": "raised", "alarm_id": "g-1"}))
    b.ingest(store, b.heartbeat(),
             ("pump-01", "device.offline", {"reason": "timeout"}))
    b.seq += 5  # seqs 3..7 never arrive: a gap the store reports
    b.ingest(store, ("smoke-09", "smoke.alarm", {"state": "raised", "alarm_id": "s-9"}))
    consumers = open_consumers(store_url)
    everyone = consumers.add("平台", parse_scope(["all"], ["*"])).token
    east_smoke = consumers.add("消防-东", parse_scope([EAST], ["smoke.*"])).token
    try:
        async with running_fleet(store_url, consumers, SETTINGS) as base, \
                aiohttp.ClientSession() as http:
            body = await fleet_json(http, base, everyone,
                                    lambda b: gateway_ids(b) == ["gw-a", "gw-b"])
            gws = {g["id"]: g for d in body["districts"] for s in d["streets"]
                   for c in s["communities"] for g in c["gateways"]}
            assert gws["gw-a"]["status"] == "green"
            assert gws["gw-a"]["heartbeat"]["version"] == "1.4.0"
            assert sorted(a["alarm_id"] for a in body["alarms"]) == ["g-1", "s-1", "s-9"]
            body = await fleet_json(http, base, everyone, lambda b: b["counts"]["amber"] == 1)
            gw_b = next(g for d in body["districts"] for s in d["streets"]
                    for c in s["communities"] for g in c["gateways"] if g["id"] == "gw-b")
            assert gw_b["reasons"] == ["gaps", "devices_offline"]
            assert gw_b["gaps"]["unexplained"] == 5

            scoped = await fleet_json(http, base, east_smoke)
            assert gateway_ids(scoped) == ["gw-a"]
            assert [a["alarm_id"] for a in scoped["alarms"]] == ["s-1"]
            assert {d["id"]: d["last_type"] for d in scoped["districts"][0]["streets"][0]
                    ["communities"][0]["gateways"][0]["devices"]} == {
                "gate-01": None, "smoke-01": "smoke.alarm"}

            # live: the clear arrives after the rebuild
            a.ingest(store, ("smoke-01", "smoke.alarm", {"state": "cleared", "alarm_id": "s-1"}))
            await fleet_json(http, base, east_smoke, lambda b: b["alarms"] == [])

            async with http.get(f"{base}/v1/fleet") as r:
                assert r.status == 401
                check("/v1/fleet", 401, await r.json())
            async with http.get(f"{base}/v1/fleet",
                                headers={"Authorization": "Bearer cdt_nope"}) as r:
                assert r.status == 401
            async with http.get(f"{base}/fleet") as r:
                assert r.status == 200 and "街区网关总览" in await r.text()
            for name in ("app.js", "app.css", "zh-CN.json", "en.json"):
                async with http.get(f"{base}/fleet/static/{name}") as r:
                    assert r.status == 200, name
            async with http.get(f"{base}/fleet/static/..%2Fmodel.py") as r:
                assert r.status == 404
    finally:
        consumers.close()
        store.close()


async def test_rebuild_is_bounded_by_the_window(tmp_path: Path) -> None:
    """An event older than `rebuild_s` is not read on start."""
    url = f"sqlite:///{tmp_path / 'district.db'}"
    store = open_store(url)
    old, new = Gw("gw-old"), Gw("gw-new")
    rows = [replace(r, time="2020-01-01T00:00:00.000Z") for r in old.rows(old.heartbeat())]
    store.ingest(Origin(f"cd/v1/371312/{old.community}/gw-old/events", "gw-old"), rows, [])
    new.ingest(store, new.heartbeat())
    consumers = open_consumers(url)
    token = consumers.add("平台", parse_scope(["all"], ["*"])).token
    try:
        async with running_fleet(url, consumers, FleetSettings(60, 3600, 0.1, 0.2)) as base, \
                aiohttp.ClientSession() as http:
            assert gateway_ids(await fleet_json(http, base, token)) == ["gw-new"]
    finally:
        consumers.close()
        store.close()

