"""The status page in headless Chromium against a real agent process.

Peers: Mosquitto (the uplink), a pymodbus server (a water sensor the agent polls) and
the `simulated` driver (a smoke detector that raises an alarm at once and keeps it).
The page must render in zh-CN and en, show an alarm first, show a device going offline
and the uplink going down without a reload. Screenshots of each state go to
test-artifacts/status/ (or $ARTIFACTS_DIR/status/). A marker placed in every secret of
the config must appear nowhere: page, JSON, metrics, SSE stream, logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from playwright.async_api import Page

from edge_agent.sdk.registry import available
from tests import harness
from tests.browser import chromium, page, screenshot
from tests.modbus_servers import WATER, ModbusServer, Unit
from tests.peers import Mosquitto, free_port

MARKER = "S3CRET-MARKER-5b1f0e"
SECRET_ENV = {"STATUS_TEST_UPLINK_PASSWORD": MARKER, "STATUS_TEST_SALT": MARKER,
              "STATUS_TEST_CREDENTIAL": MARKER, "STATUS_TEST_CAMERA_PASSWORD": MARKER}


def agent_config(tmp_path: Path, broker: str, modbus_port: int, port: int) -> Path:
    cfg = harness.gateway_yaml("gw-page", broker, tmp_path / "outbox.db", devices=[
        {"id": "smoke-b1-01", "driver": "simulated", "kind": "smoke", "name": "1号楼烟感",
         "period_s": 1, "alarm_every_s": 0.2, "alarm_duration_s": 3600},
        {"id": "gate-north", "driver": "simulated", "kind": "gate", "name": "北门门禁",
         "period_s": 2, "alarm_every_s": 86400},
        {"id": "water-pump-01", "driver": "modbus", "profile": "water-sensor", "name": "泵房水浸",
         "tcp": {"host": "127.0.0.1", "port": modbus_port}, "unit_id": 1, "period_s": 0.3,
         "timeout_s": 0.3, "offline_after": 2, "max_backoff_s": 0.6},
    ], uplink={"username": "gw-page", "password": {"env": "STATUS_TEST_UPLINK_PASSWORD"}})
    cfg["gateway"]["name"] = "前河湾社区 1号网关"
    cfg["gateway"]["credential_salt"] = {"env": "STATUS_TEST_SALT"}
    cfg["status_page"] = {"enabled": True, "listen": f"127.0.0.1:{port}",
                          "credential": {"env": "STATUS_TEST_CREDENTIAL"}}
    if "onvif" in available():  # a camera nobody answers for: its password must not leak
        cfg["devices"].append({"id": "cam-gate", "driver": "onvif", "name": "北门摄像头",
                               "host": "127.0.0.1", "port": free_port(),
                               "username": "edge-agent",
                               "password": {"env": "STATUS_TEST_CAMERA_PASSWORD"},
                               "video": {"enabled": False}})
    return harness.write_yaml(tmp_path / "gateway.yaml", cfg)


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await check():
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def fetch(url: str, headers: dict[str, str] | None = None, limit: int = -1) -> str:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as r:
        body: bytes = r.read(limit)
        return body.decode()


async def text(p: Page, selector: str) -> str:
    return await p.locator(selector).first.inner_text()


async def test_status_page_in_chromium(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with ModbusServer([Unit.of(1, "water-sensor", WATER)]) as modbus:
        config = agent_config(tmp_path, mosquitto.url, modbus.port, port)
        agent = harness.agent(config, tmp_path / "agent.log")
        agent.env.update(SECRET_ENV)
        agent.start()
        try:
            await until(lambda: asyncio.to_thread(fetch, f"{base}/healthz"), 20, "the page")
            async with chromium() as browser, page(browser) as p:
                await check_page(p, base, modbus, mosquitto, agent.log_path)
            await check_secrets(base, agent)
        finally:
            agent.stop()
    assert MARKER not in (tmp_path / "agent.log").read_text()


def modbus_log(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if "water-pump" in line or "modbus" in line)[-3000:]


async def check_page(p: Page, base: str, modbus: ModbusServer, mosquitto: Mosquitto,
                     log: Path) -> None:
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    await p.goto(f"{base}/")
    await p.wait_for_selector("[data-testid=alarm][data-device=smoke-b1-01]")
    water = "[data-testid=device-row][data-device=water-pump-01]"
    try:
        await p.wait_for_selector(f"{water}[data-state=online]", timeout=20_000)
    except Exception:  # say what the page showed instead, for the log reader
        raise AssertionError(f"water-pump-01 never online; row: {await text(p, water)!r}; "
                             f"agent log: {modbus_log(log)}") from None
    await until(lambda: _contains(p, "[data-testid=uplink-state]", "已连接"), 15, "uplink up")
    # zh-CN by default; the critical alarm is listed first (before a camera's warning, if
    # the onvif driver is there) and its device heads the table
    assert await text(p, "h1") == "网关运行状态"
    assert await p.evaluate("document.documentElement.lang") == "zh-CN"
    first_alarm = p.locator("[data-testid=alarm]").first
    assert await first_alarm.get_attribute("data-device") == "smoke-b1-01"
    assert "烟雾报警" in await first_alarm.inner_text()
    sections = await p.eval_on_selector_all("main > section, main > div", "els => els.map("
                                            "e => e.dataset.testid || e.className)")
    assert sections[0] == "alarms"
    first_row = p.locator("[data-testid=device-row]").first
    assert await first_row.get_attribute("data-device") == "smoke-b1-01"
    assert "报警中" in await first_row.inner_text()
    await screenshot(p, "status", "zh-CN-alarm-first")
    # English on the toggle, from the same page
    await p.click("[data-testid=lang-toggle]")
    await until(lambda: _contains(p, "h1", "Gateway status"), 5, "English")
    assert "Smoke alarm" in await text(p, "[data-testid=alarm]")
    assert "Online" in await text(p, "[data-device=gate-north] [data-testid=device-state]")
    await screenshot(p, "status", "en")
    await p.click("[data-testid=lang-toggle]")
    await until(lambda: _contains(p, "h1", "网关运行状态"), 5, "back to Chinese")
    # a device going offline appears without a reload
    await p.evaluate("window.__noReload = true")
    modbus.units[1].delay_s = 2.0
    await p.wait_for_selector("[data-device=water-pump-01][data-state=offline]", timeout=15_000)
    row = await text(p, "[data-device=water-pump-01]")
    assert "离线" in row and "设备没有应答" in row
    assert await p.evaluate("window.__noReload === true")
    await screenshot(p, "status", "device-offline")
    # the uplink going down shows "offline since"
    mosquitto.stop()
    await until(lambda: _contains(p, "[data-testid=uplink-state]", "离线自"), 15, "uplink down")
    assert "与上级平台断开" in await text(p, "[data-testid=banner]")
    assert await p.evaluate("window.__noReload === true")
    await screenshot(p, "status", "uplink-offline")
    assert not errors, errors


async def _contains(p: Page, selector: str, needle: str) -> bool:
    return needle in await text(p, selector)


async def check_secrets(base: str, agent: harness.Proc) -> None:
    bearer = {"Authorization": f"Bearer {MARKER}"}
    seen: dict[str, Any] = {}
    for path in ("/", "/static/app.js", "/api/status", "/metrics", "/healthz"):
        seen[path] = await asyncio.to_thread(fetch, base + path)
    seen["/api/status as staff"] = await asyncio.to_thread(fetch, f"{base}/api/status", bearer)
    assert '"authenticated":true' in seen["/api/status as staff"]  # the credential works
    seen["/api/stream"] = await asyncio.to_thread(fetch, f"{base}/api/stream", bearer, 8192)
    assert "event: status" in seen["/api/stream"]
    for where, body in seen.items():
        assert MARKER not in body, where
    assert MARKER not in agent.log_path.read_text()
