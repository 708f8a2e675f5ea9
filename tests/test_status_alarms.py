"""The page's open alarms follow the real engines through raise -> clear.

One agent process, three real alarm engines, each with its real peer:
- the Modbus rules engine polling a pymodbus smoke detector (`alarm` point, 2 s debounce);
- a serial-line fire panel (per-zone alarms) reading one end of a socat pty pair the
  test writes panel lines into;
- the ONVIF driver's video monitor sampling the simulator camera's MJPEG stream, whose
  picture the test covers and uncovers.
Each engine sends its clear as the engine really does (severity `info` for all three):
`/api/status`, `/metrics` and the page in Chromium must list the three alarms while
raised and none once they are cleared. An agent restarted while alarms hold lists them
again (the engines go on with them without a second raise) until their clears.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from drivers.onvif.simulator import OnvifSimulator
from edge_agent.contract.envelope import parse_time
from tests import harness
from tests.browser import chromium, page, screenshot
from tests.modbus_servers import SMOKE, ModbusServer, Unit, pty_pair
from tests.peers import Mosquitto, free_port

CAMERA_PASSWORD_ENV = "STATUS_ALARMS_CAMERA_PASSWORD"
FIRE_PANEL: dict[str, Any] = {
    "driver": "serial_line", "baudrate": 9600, "delimiter": "\\r\\n", "idle_timeout_s": 0,
    "reopen_backoff": {"initial_s": 0.1, "max_s": 0.5},
    "frames": [{"name": "zone",
                "match": r"FIRE ZONE (?P<zone>\d{2,3}) (?P<status>ALARM|NORMAL)",
                "alarms": [{"type": "smoke.alarm", "per": "zone", "state": "status",
                            "raise": ["ALARM"], "clear": ["NORMAL"]}]}],
}
#: (device, alarm type) of the three engines' alarms
EXPECTED = {("smoke-modbus", "smoke.alarm"), ("fire-panel", "smoke.alarm"),
            ("cam-video", "camera.tamper")}


def agent_config(tmp_path: Path, broker: str, modbus_port: int, tty: str,
                 cam: OnvifSimulator, port: int) -> Path:
    user = next(iter(cam.users))
    cfg = harness.gateway_yaml("gw-alarms", broker, tmp_path / "outbox.db", devices=[
        {"id": "smoke-modbus", "driver": "modbus", "profile": "smoke-detector",
         "tcp": {"host": "127.0.0.1", "port": modbus_port}, "unit_id": 1, "period_s": 0.3,
         "timeout_s": 1},
        {"id": "fire-panel", "port": tty, **FIRE_PANEL},
        {"id": "cam-video", "driver": "onvif", "host": "127.0.0.1", "port": cam.port,
         "username": user, "password": {"env": CAMERA_PASSWORD_ENV}, "timeout_s": 3,
         "events": {"pull_timeout_s": 1}, "snapshots": {"enabled": False},
         "video": {"sample_fps": 5, "raise_after": 2, "clear_after": 2,
                   "health_interval_s": 60, "reconnect_initial_s": 0.2,
                   "reconnect_max_s": 1}},
    ])
    cfg["status_page"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
    return harness.write_yaml(tmp_path / "gateway.yaml", cfg)


async def until(check: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


async def test_alarms_of_the_real_engines_leave_the_page_when_cleared(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    modbus = ModbusServer([Unit.of(1, "smoke-detector", {**SMOKE, "alarm": False})])
    cam = OnvifSimulator(video_fps=10)
    async with modbus, cam, pty_pair(tmp_path) as (panel_end, agent_end), \
            aiohttp.ClientSession() as http:
        config = agent_config(tmp_path, mosquitto.url, modbus.port, agent_end, cam, port)
        agent = harness.agent(config, tmp_path / "agent.log")
        agent.env[CAMERA_PASSWORD_ENV] = cam.users[next(iter(cam.users))]
        agent.start()
        panel = os.open(panel_end, os.O_WRONLY | os.O_NOCTTY)
        try:
            async def status() -> dict[str, Any]:
                async with http.get(f"{base}/api/status") as r:
                    doc: dict[str, Any] = await r.json()
                    return doc

            async def open_alarms() -> set[tuple[str, str]]:
                try:
                    doc = await status()
                except aiohttp.ClientError:
                    return set()
                return {(a["device"], a["type"]) for a in doc["alarms"]}

            async def metric_open_alarms() -> float:
                async with http.get(f"{base}/metrics") as r:
                    text = await r.text()
                family = next(f for f in text_string_to_metric_families(text)
                              if f.name == "edge_agent_open_alarms")
                return float(family.samples[0].value)

            async def devices_online() -> bool:
                try:
                    doc = await status()
                except aiohttp.ClientError:
                    return False
                states = {d["id"]: d["state"] for d in doc["devices"]}
                return states.get("smoke-modbus") == "online" and \
                    states.get("cam-video") == "online"

            await until(devices_online, 40, "the Modbus detector and the camera online")
            async with chromium() as browser, page(browser) as p:
                await p.goto(f"{base}/")
                # raise: the detector's alarm point, a zone line, a covered lens
                await modbus.set(1, alarm=True)
                os.write(panel, b"FIRE ZONE 07 ALARM\r\n")
                cam.scene.mode = "covered"
                raised = await until(lambda: _have(open_alarms, EXPECTED), 30,
                                     "three open alarms")
                assert raised == EXPECTED
                assert await metric_open_alarms() == 3
                await p.wait_for_selector("[data-testid=alarm] >> nth=2")
                assert await p.locator("[data-testid=alarm]").count() == 3
                await screenshot(p, "status", "real-engines-raised")
                # clear each as the device shows it
                await modbus.set(1, alarm=False)
                os.write(panel, b"FIRE ZONE 07 NORMAL\r\n")
                cam.scene.mode = "normal"
                try:
                    await until(lambda: _none(open_alarms), 30, "the alarms cleared")
                except AssertionError:
                    doc = await status()
                    raise AssertionError(f"still listed after their clears: {doc['alarms']}; "
                                         f"recent: {doc['recent']}") from None
                assert await metric_open_alarms() == 0
                await p.wait_for_selector("[data-testid=alarm]", state="detached")
                assert await p.locator("#alarm-list .none").count() == 1
                await screenshot(p, "status", "real-engines-cleared")
            doc = await status()
            assert doc["summary"]["open_alarms"] == 0
            cleared = {(e["device"], e["type"]) for e in doc["recent"]
                       if e["data"].get("state") == "cleared"}
            assert cleared == EXPECTED  # the clears went through the pipeline
        finally:
            os.close(panel)
            agent.stop()


async def _have(read: Callable[[], Awaitable[set[tuple[str, str]]]],
                wanted: set[tuple[str, str]]) -> set[tuple[str, str]] | None:
    shown = await read()
    return shown if wanted <= shown else None


async def _none(read: Callable[[], Awaitable[set[tuple[str, str]]]]) -> bool:
    return not await read()


async def test_alarms_held_across_an_agent_restart_stay_listed_until_cleared(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The Modbus rules engine and the serial panel take their open alarms back after a
    restart (no second raise): the page lists them again, under the same ids and since
    the original raise, and drops them on their clears."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    modbus = ModbusServer([Unit.of(1, "smoke-detector", {**SMOKE, "alarm": False})])
    cam = OnvifSimulator(video_fps=2)
    wanted = {("smoke-modbus", "smoke.alarm"), ("fire-panel", "smoke.alarm")}
    async with modbus, cam, pty_pair(tmp_path) as (panel_end, agent_end), \
            aiohttp.ClientSession() as http:
        config = agent_config(tmp_path, mosquitto.url, modbus.port, agent_end, cam, port)
        agent = harness.agent(config, tmp_path / "agent.log")
        agent.env[CAMERA_PASSWORD_ENV] = cam.users[next(iter(cam.users))]
        panel = os.open(panel_end, os.O_WRONLY | os.O_NOCTTY)

        async def alarms() -> dict[tuple[str, str], dict[str, Any]]:
            try:
                async with http.get(f"{base}/api/status") as r:
                    doc = await r.json()
            except aiohttp.ClientError:
                return {}
            return {(a["device"], a["type"]): a for a in doc["alarms"]}

        async def listed() -> dict[tuple[str, str], dict[str, Any]] | None:
            shown = await alarms()
            return shown if set(shown) >= wanted else None

        async def online() -> bool:
            try:
                async with http.get(f"{base}/api/status") as r:
                    doc = await r.json()
            except aiohttp.ClientError:
                return False
            states = {d["id"]: d["state"] for d in doc["devices"]}
            return states.get("smoke-modbus") == states.get("fire-panel") == "online"

        try:
            agent.start()
            await until(online, 40, "the detector answering and the panel's port open")
            await modbus.set(1, alarm=True)
            os.write(panel, b"FIRE ZONE 03 ALARM\r\n")
            before = await until(listed, 40, "both alarms listed")
            assert agent.stop() == 0
            agent.start()  # same outbox folder: open-alarms.json is beside it
            after = await until(listed, 40, "both alarms listed after the restart")
            for key in wanted:
                assert after[key]["alarm_id"] == before[key]["alarm_id"], key
                assert abs((parse_time(after[key]["raised_at"])
                            - parse_time(before[key]["raised_at"])).total_seconds()) < 0.01
            await modbus.set(1, alarm=False)
            os.write(panel, b"FIRE ZONE 03 NORMAL\r\n")

            async def gone() -> bool:
                return not (set(await alarms()) & wanted)

            await until(gone, 30, "the alarms cleared after the restart")
        finally:
            os.close(panel)
            agent.stop()
