"""A fire panel with more zones in alarm than the page lists, across an agent restart.

The real agent (`edge-agent run`, a process) reads a serial_line fire panel on one end of
a socat pty pair; the test writes 1,500 zone alarms into the other end at once. The
status document counts them all (`summary.open_alarms`) but lists the first
`ALARMS_LISTED` only, saying how many it leaves out. After a SIGTERM and a start, the
panel's zones are taken back from `open-alarms.json`: a zone repeating its alarm raises
nothing, the clears of zone 5 and of a zone of the first thousand name the alarm_id of
the raise before the restart, and zone 5 in alarm again after its clear is a new alarm.
The page, in headless Chromium, counts them all and says how many it does not list.
The events are read from the outbox (no broker: nothing leaves it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema

from edge_agent.contract.envelope import Hierarchy
from edge_agent.outbox.store import Outbox
from edge_agent.status.snapshot import ALARMS_LISTED
from tests import harness
from tests.browser import chromium, page, screenshot
from tests.modbus_servers import pty_pair
from tests.peers import free_port

ZONES = 1500
GATEWAY = "gw-storm"
PANEL: dict[str, Any] = {
    "id": "fire-panel", "driver": "serial_line", "baudrate": 9600, "delimiter": "\\n",
    "idle_timeout_s": 0, "reopen_backoff": {"initial_s": 0.1, "max_s": 0.5},
    "frames": [{"name": "zone", "match": r"Z(?P<zone>\d+) (?P<s>A|N)",
                "alarms": [{"type": "smoke.alarm", "per": "zone", "state": "s",
                            "raise": ["A"], "clear": ["N"]}]}],
}


def config(tmp_path: Path, tty: str, port: int, second_tty: str) -> Path:
    # a broker nobody listens on: the events stay in the outbox, where the test reads them
    cfg = harness.gateway_yaml(GATEWAY, f"mqtt://127.0.0.1:{free_port()}",
                               tmp_path / "outbox.db",
                               devices=[{**PANEL, "port": tty},
                                        {**PANEL, "id": "fire-panel-2", "port": second_tty}])
    cfg["status_page"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
    return harness.write_yaml(tmp_path / "gateway.yaml", cfg)


def smoke_alarms(outbox: Path) -> list[dict[str, Any]]:
    """The storm panel's smoke.alarm events' data in the outbox of the stopped agent, in
    seq order."""
    hierarchy = Hierarchy(district=harness.DISTRICT, street=harness.STREET,
                          community=harness.COMMUNITY, gateway=GATEWAY)
    with Outbox.open(outbox, max_bytes=1 << 30, hierarchy=hierarchy) as box:
        rows = [r for lane in (0, 1)
                for r in box.fetch(lane=lane, after_seq=0, limit=100_000, max_bytes=1 << 30)]
    events = [json.loads(r.body) for r in sorted(rows, key=lambda r: r.seq)]
    return [e["data"] for e in events
            if e["type"] == "smoke.alarm" and e["subject"] == "fire-panel"]


async def status_when(http: aiohttp.ClientSession, base: str, open_alarms: int,
                      within: float, what: str) -> dict[str, Any]:
    """The status document once it counts `open_alarms` with the panel online."""
    deadline = time.monotonic() + within
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{base}/api/status") as r:
                last = await r.json()
        except aiohttp.ClientError:
            last = None
        if last is not None and last["summary"]["open_alarms"] == open_alarms and \
                {d["state"] for d in last["devices"]} == {"online"}:
            return last
        await asyncio.sleep(0.2)
    shown = None if last is None else last["summary"]
    raise AssertionError(f"not within {within}s: {what}; last summary: {shown}")


async def page_shows_the_count(base: str) -> None:
    """The page in Chromium: the banner counts all (the storm's and the second panel's
    one), the list says how many it leaves out."""
    async with chromium() as browser, page(browser) as p:
        await p.goto(f"{base}/")
        more = p.locator("[data-testid=alarms-not-listed]")
        await more.wait_for()
        assert await more.inner_text() == f"还有 {ZONES + 1 - ALARMS_LISTED} 个报警未列出"
        assert await p.locator("[data-testid=alarm]").count() == ALARMS_LISTED
        # the second panel's one alarm is the oldest, not listed: its row is still marked
        row = p.locator("[data-testid=device-row][data-device=fire-panel-2]")
        assert "alarm" in (await row.get_attribute("class") or "").split()
        assert "报警中" in await row.inner_text() or "In alarm" in await row.inner_text()
        assert f"{ZONES + 1} 个未解除报警" in await p.locator("[data-testid=banner]").inner_text()
        await screenshot(p, "status", "alarms-not-listed")
        await p.goto(f"{base}/?lang=en")
        await p.get_by_text(f"{ZONES + 1 - ALARMS_LISTED} more open alarm(s) not listed"
                            ).wait_for()


async def test_a_panel_with_1500_zones_in_alarm_is_counted_and_kept_across_a_restart(
        tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    schema = resources.files("edge_agent.contract.schemas").joinpath("status-v1.schema.json")
    validator = jsonschema.Draft202012Validator(json.loads(schema.read_text("utf-8")))
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    async with pty_pair(tmp_path) as (panel_end, agent_end), \
            pty_pair(second_dir) as (second_end, second_agent_end), \
            aiohttp.ClientSession() as http:
        cfg = config(tmp_path, agent_end, port, second_agent_end)
        agent = harness.agent(cfg, tmp_path / "agent.log").start()
        panel = os.open(panel_end, os.O_WRONLY | os.O_NOCTTY)
        second = os.open(second_end, os.O_WRONLY | os.O_NOCTTY)
        try:
            await status_when(http, base, 0, 30, "the panels' ports open")
            os.write(second, b"Z1 A\n")
            await status_when(http, base, 1, 30, "the second panel's alarm")
            bulk = "".join(f"Z{zone} A\n" for zone in range(ZONES)).encode()
            while bulk:
                bulk = bulk[os.write(panel, bulk):]
            doc = await status_when(http, base, ZONES + 1, 60, f"{ZONES + 1} open alarms")
            validator.validate(doc)
            assert "fire-panel-2" not in {a["device"] for a in doc["alarms"]}
            assert {d["id"]: d["alarm_severity"] for d in doc["devices"]} == {
                "fire-panel": "critical", "fire-panel-2": "critical"}
            assert len(doc["alarms"]) == ALARMS_LISTED
            assert doc["alarms_not_listed"] == ZONES + 1 - ALARMS_LISTED
            # newest first: the last zones written lead the list
            assert doc["alarms"][0]["data"]["zone"] == str(ZONES - 1)
            await page_shows_the_count(base)
            assert agent.stop() == 0
            raised = smoke_alarms(tmp_path / "outbox.db")
            assert len(raised) == ZONES and {a["state"] for a in raised} == {"raised"}
            first_ids = {a["zone"]: a["alarm_id"] for a in raised}
            kept = json.loads((tmp_path / "open-alarms.json").read_text("utf-8"))["open"]
            assert len(kept) == ZONES + 1

            agent = harness.agent(cfg, tmp_path / "agent.log").start()  # restarted
            doc = await status_when(http, base, ZONES + 1, 60, "the zones taken back")
            assert doc["alarms_not_listed"] == ZONES + 1 - ALARMS_LISTED
            # zone 5 repeats its alarm (nothing), then it and zone 123 are normal again,
            # then zone 5 goes into alarm anew
            os.write(panel, b"Z5 A\nZ5 N\nZ123 N\nZ5 A\n")
            await status_when(http, base, ZONES, 30, "two clears and one raise")
            assert agent.stop() == 0
        finally:
            os.close(panel)
            os.close(second)
            agent.stop()
    after = smoke_alarms(tmp_path / "outbox.db")[ZONES:]
    assert [(a["zone"], a["state"]) for a in after] == [
        ("5", "cleared"), ("123", "cleared"), ("5", "raised")], after
    assert after[0]["alarm_id"] == first_ids["5"]
    assert after[1]["alarm_id"] == first_ids["123"]
    assert after[2]["alarm_id"] not in first_ids.values()
    kept = json.loads((tmp_path / "open-alarms.json").read_text("utf-8"))["open"]
    assert len(kept) == ZONES
    assert [a for _, _, a, _ in kept][-1] == after[2]["alarm_id"]
