"""The fleet page in headless Chromium against the real API app on a real SQLite store.

Three gateways send heartbeats every `heartbeat_s` (1 s here); one has an open smoke
alarm. The page must ask for the token once (kept in sessionStorage across a reload),
render in zh-CN, toggle to English, and show a gateway whose heartbeats stop as red
within two heartbeats of its last one (not before). Screenshots go to
test-artifacts/fleet/; with UPDATE_DOCS_IMG=1 the red one also to docs/img/fleet.png.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

from collector.consumers import open_consumers, parse_scope
from collector.fleet.projector import FleetSettings
from collector.store import Store, open_store
from tests.aio import cancel_and_wait
from tests.browser import ROOT, chromium, page, screenshot
from tests.fleet_support import EAST, WEST, Gw, running_fleet

HEARTBEAT_S = 1.0


async def beat(store: Store, gws: list[Gw], last: dict[str, float], silent: set[str]) -> None:
    """Heartbeats every HEARTBEAT_S; a gateway in `silent` stops; `last` = when each beat."""
    while True:
        for gw in gws:
            if gw.gateway not in silent:
                await asyncio.to_thread(gw.ingest, store,
                                        gw.heartbeat(outbox_events=0, oldest_waiting_s=0,
                                                     version="1.4.0"))
                last[gw.gateway] = time.monotonic()
        await asyncio.sleep(HEARTBEAT_S)


async def test_fleet_page_in_chromium(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'district.db'}"
    store = open_store(url)
    gws = [Gw("gw-east-1", EAST), Gw("gw-east-2", EAST), Gw("gw-west-1", WEST)]
    gws[0].ingest(store, ("smoke-b1-01", "smoke.alarm",
                          {"state": "raised", "alarm_id": "smoke-b1-01-1"}))
    gws[2].ingest(store, ("pump-01", "device.offline", {"reason": "timeout"}))
    consumers = open_consumers(url)
    token = consumers.add("区平台", parse_scope(["all"], ["*"])).token
    last: dict[str, float] = {}
    silent: set[str] = set()
    beats = asyncio.create_task(beat(store, gws, last, silent))
    settings = FleetSettings(heartbeat_s=HEARTBEAT_S, poll_s=0.1, gaps_s=1)
    errors: list[str] = []
    try:
        async with running_fleet(url, consumers, settings) as base, chromium() as browser, \
                page(browser) as p:
            p.on("pageerror", lambda e: errors.append(str(e)))
            await p.goto(f"{base}/fleet")
            await p.fill("[data-testid=token-input]", token)
            await p.click("[data-testid=token-submit]")
            await p.wait_for_selector("tr[data-gateway=gw-east-2][data-status=green]")
            await p.reload()  # the token is kept for the session: no form again
            await p.wait_for_selector("tr[data-gateway=gw-east-2][data-status=green]")
            assert await p.locator("#token-form").is_hidden()
            assert await p.locator("h1").inner_text() == "街区网关总览"
            assert "烟雾报警" in await p.locator("#alarm-list li").first.inner_text()
            await p.wait_for_selector("tr[data-gateway=gw-west-1][data-status=amber]")

            silent.add("gw-east-2")
            await asyncio.sleep(0.05)
            stopped = last["gw-east-2"]
            red = "tr[data-gateway=gw-east-2][data-status=red]"
            await p.wait_for_selector(red, timeout=int(2 * HEARTBEAT_S * 1000 + 3000))
            after = time.monotonic() - stopped
            # red within two heartbeats of the last one (plus the page's poll), not before
            assert 2 * HEARTBEAT_S - 0.3 <= after <= 2 * HEARTBEAT_S + 1.0, after
            assert "失联" in await p.locator(red).inner_text()
            await p.wait_for_selector("#banner.bad")
            shot = await screenshot(p, "fleet", "zh-CN-red")
            if os.environ.get("UPDATE_DOCS_IMG") == "1":
                shutil.copyfile(shot, ROOT / "docs" / "img" / "fleet.png")

            await p.click("[data-testid=lang-toggle]")
            await p.wait_for_function("document.querySelector('h1').textContent"
                                      " === 'District gateway fleet'")
            assert "Silent" in await p.locator(red).inner_text()
            assert "Smoke alarm" in await p.locator("#alarm-list li").first.inner_text()
            assert await p.evaluate("document.documentElement.lang") == "en"
            await screenshot(p, "fleet", "en")
        assert errors == []
    finally:
        await cancel_and_wait(beats)
        consumers.close()
        store.close()
