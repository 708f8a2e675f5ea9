"""The status app in-process on a real Agent (real outbox, real pipeline), through HTTP:
schema, Prometheus parsing, Host check, login, snapshots, SSE and health."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.agent import Agent
from edge_agent.config.models import GatewayConfig
from edge_agent.sdk.api import DeviceState
from edge_agent.status.app import StatusApp
from tests.peers import free_port

SNAP = "01KB2ZQ5E8Y3V0N7W1T6G4H9C2"
PASSWORD = "status-pw-7f3a"


def status_schema() -> dict[str, Any]:
    schemas = resources.files("edge_agent.contract.schemas")
    text = schemas.joinpath("status-v1.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def config(tmp_path: Path, *, credential: bool = True) -> GatewayConfig:
    (tmp_path / "cred").write_text(PASSWORD + "\n")
    # the app is served by aiohttp's TestServer; `listen` only has to be valid (port 0 is not)
    page: dict[str, Any] = {"listen": f"127.0.0.1:{free_port()}",
                            "allowed_hosts": ["status.example"]}
    if credential:
        page["credential"] = {"file": str(tmp_path / "cred")}
    return GatewayConfig.model_validate({
        "gateway": {"id": "gw-app", "district": "371312", "street": "371312001",
                    "community": "371312001001", "name": "测试网关"},
        "uplink": {"broker": "mqtt://127.0.0.1:1"},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "status_page": page,
        "snapshots": {"dir": str(tmp_path / "snapshots")},
        "devices": [{"id": "smoke-1", "driver": "simulated", "kind": "smoke", "name": "1号楼烟感"},
                    {"id": "cam-1", "driver": "simulated", "kind": "gate"}],
    })


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    a = await Agent.open(config(tmp_path))
    try:
        yield a
    finally:
        await a.outbox.close()


@pytest.fixture
async def client(agent: Agent, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    status = StatusApp(agent, hostname="gw-app")
    assert status.snapshots == tmp_path / "snapshots"  # the gateway's `snapshots.dir`
    async with TestClient(TestServer(status.build(), host="127.0.0.1")) as c:
        yield c


def activity(agent: Agent) -> None:
    p = agent.pipeline
    p.device_state("smoke-1", DeviceState.ONLINE, "answers")
    p.emit("smoke-1", "smoke.reading", {"density_db_m": 0.02, "battery_pct": 80})
    p.device_state("cam-1", DeviceState.OFFLINE, "no answer within 1.0 s (3 failed polls)")
    p.emit("smoke-1", "smoke.alarm", {"state": "raised", "alarm_id": "a1"})
    p.emit("cam-1", "camera.tamper", {"state": "raised", "alarm_id": "t1",
                                      "snapshot": {"id": SNAP, "bytes": 4, "sha256": "x"}})
    p.emit("cam-1", "gate.access", {"result": "denied", "credential_hash": "sha256:" + "a" * 64})


async def test_api_status_validates_and_puts_alarms_and_broken_devices_first(
        agent: Agent, client: TestClient[Any, Any]) -> None:
    activity(agent)
    r = await client.get("/api/status")
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    doc = await r.json()
    jsonschema.Draft202012Validator(status_schema()).validate(doc)
    assert [(a["device"], a["severity"]) for a in doc["alarms"]] == [("smoke-1", "critical"),
                                                                      ("cam-1", "warning")]
    assert doc["alarms"][1]["snapshot"] is None  # not for an anonymous viewer
    assert "snapshots" not in doc and doc["viewer"] == {"authenticated": False,
                                                        "login_available": True}
    first = doc["devices"][0]
    assert (first["id"], first["state"], first["reason_code"]) == ("cam-1", "offline", "timeout")
    assert doc["devices"][1]["name"] == "1号楼烟感"
    assert doc["summary"] == {"devices": 2, "error": 0, "offline": 1, "unknown": 0, "online": 1,
                              "open_alarms": 2}
    assert doc["alarms_not_listed"] == 0
    assert "credential_hash" not in json.dumps(doc)
    # a driver text quoting a URL with credentials is scrubbed on the page
    agent.pipeline.emit("cam-1", "camera.video_loss", {
        "state": "raised", "alarm_id": "v1",
        "reason": "cannot open stream rtsp://admin:hunter2@127.0.0.1:554/s"})
    shown = json.dumps(await (await client.get("/api/status")).json())
    assert "hunter2" not in shown and "rtsp://***@127.0.0.1:554/s" in shown
    schema = await client.get("/api/status.schema.json")
    assert (await schema.json())["title"].startswith("Edge agent status document v1")


async def test_metrics_parse_with_the_prometheus_parser(
        agent: Agent, client: TestClient[Any, Any]) -> None:
    activity(agent)
    r = await client.get("/metrics")
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    for name in ("edge_agent_events_created", "edge_agent_events_sent", "edge_agent_events_acked",
                 "edge_agent_events_evicted", "edge_agent_outbox_events",
                 "edge_agent_outbox_oldest_age_seconds", "edge_agent_device_poll_errors",
                 "edge_agent_device_up", "edge_agent_uplink_connected",
                 "edge_agent_uplink_last_ack_timestamp_seconds", "edge_agent_build_info"):
        assert name in families, name
    created = families["edge_agent_events_created"]
    assert created.type == "counter" and created.samples[0].value == 5  # incl. device.offline
    up = {s.labels["device"]: (s.labels["state"], s.value)
          for s in families["edge_agent_device_up"].samples}
    assert up == {"cam-1": ("offline", 0.0), "smoke-1": ("online", 1.0)}
    assert families["edge_agent_uplink_connected"].samples[0].value == 0.0


async def test_host_header_is_checked(client: TestClient[Any, Any]) -> None:
    for host, status in (("evil.example:8080", 421), ("10.9.9.9:8080", 421),
                         ("status.example", 200), ("gw-app.local:8080", 200)):
        r = await client.get("/api/status", headers={"Host": host})
        assert r.status == status, host
    r = await client.get("/", headers={"Host": "evil.example"})
    assert "status_page.allowed_hosts" in await r.text()


async def test_snapshots_need_the_credential(agent: Agent, client: TestClient[Any, Any],
                                             tmp_path: Path) -> None:
    activity(agent)
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / f"{SNAP}.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    r = await client.get(f"/snapshots/{SNAP}.jpg")
    assert r.status == 401 and "WWW-Authenticate" in r.headers
    r = await client.get(f"/snapshots/{SNAP}.jpg", headers={"Authorization": "Bearer nope"})
    assert r.status == 401
    bad = await client.post("/login", data={"password": "nope"})
    assert bad.status == 401 and (await bad.json())["error"] == "wrong_password"
    good = await client.post("/login", data={"password": PASSWORD})
    assert good.status == 200
    cookie = good.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    r = await client.get(f"/snapshots/{SNAP}.jpg")
    assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert await r.read() == b"\xff\xd8\xff\xd9"
    for name in ("..%2F..%2Fetc%2Fpasswd", f"{SNAP.lower()}.jpg", f"{SNAP}.png",
                 "01KB2ZQ5E8Y3V0N7W1T6G4H9CU.jpg"):  # U is not Crockford
        assert (await client.get(f"/snapshots/{name}")).status == 404, name
    doc = await (await client.get("/api/status")).json()
    jsonschema.Draft202012Validator(status_schema()).validate(doc)
    assert doc["viewer"]["authenticated"] and doc["snapshots"][0]["snapshot"] == SNAP
    assert doc["alarms"][1]["snapshot"] == SNAP
    await client.post("/logout")
    assert (await client.get(f"/snapshots/{SNAP}.jpg")).status == 401


async def test_credential_guesses_are_answered_one_at_a_time(
        client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Parallel wrong guesses (login form or Authorization header) do not go faster than
    one per LOGIN_FAIL_DELAY_S; the right credential still works."""
    import time

    from edge_agent.status import app as status_app

    monkeypatch.setattr(status_app, "LOGIN_FAIL_DELAY_S", 0.2)
    started = time.monotonic()
    answers = await asyncio.gather(
        *(client.post("/login", data={"password": f"guess-{i}"}) for i in range(3)),
        *(client.get("/api/status", headers={"Authorization": f"Bearer guess-{i}"})
          for i in range(3)))
    assert time.monotonic() - started >= 6 * 0.2 * 0.9  # a lower bound: serialized pauses
    assert [r.status for r in answers] == [401] * 3 + [200] * 3
    for r in answers[3:]:
        assert (await r.json())["viewer"]["authenticated"] is False
    ok = await client.get("/api/status", headers={"Authorization": f"Bearer {PASSWORD}"})
    assert (await ok.json())["viewer"]["authenticated"] is True
    cross = await client.post("/login", data={"password": PASSWORD},
                              headers={"Origin": "http://evil.example"})
    assert cross.status == 403


async def test_without_a_credential_snapshots_are_not_served(tmp_path: Path) -> None:
    a = await Agent.open(config(tmp_path, credential=False))
    try:
        status = StatusApp(a, hostname="gw-app")
        async with TestClient(TestServer(status.build(), host="127.0.0.1")) as c:
            r = await c.get(f"/snapshots/{SNAP}.jpg", headers={"Authorization": "Bearer "})
            assert r.status == 401 and "not configured" in await r.text()
            assert (await c.post("/login", data={"password": ""})).status == 403
            doc = await (await c.get("/api/status")).json()
            assert doc["viewer"] == {"authenticated": False, "login_available": False}
    finally:
        await a.outbox.close()


async def test_stream_pushes_changes_and_page_assets_are_local(
        agent: Agent, client: TestClient[Any, Any]) -> None:
    r = await client.get("/api/stream")
    assert r.headers["Content-Type"] == "text/event-stream"

    async def next_doc() -> dict[str, Any]:
        while True:
            line = (await r.content.readline()).decode()
            if line.startswith("data: "):
                loaded: dict[str, Any] = json.loads(line[6:])
                return loaded

    first = await asyncio.wait_for(next_doc(), 5)
    assert first["alarms"] == []
    agent.pipeline.emit("smoke-1", "smoke.alarm", {"state": "raised", "alarm_id": "s1"})
    later = await asyncio.wait_for(next_doc(), 5)
    assert [a["alarm_id"] for a in later["alarms"]] == ["s1"]
    r.close()
    page = await (await client.get("/")).text()
    assert '<html lang="zh-CN">' in page and "http" not in page.split("<footer>")[0]
    for path in ("/static/app.js", "/static/app.css", "/i18n/zh-CN.json", "/i18n/en.json"):
        asset = await client.get(path)
        assert asset.status == 200, path
        again = await client.get(path, headers={"If-None-Match": asset.headers["ETag"]})
        assert again.status == 304
    assert "https://" not in await (await client.get("/static/app.js")).text()


async def test_healthz_reports_a_stuck_pipeline(agent: Agent,
                                                client: TestClient[Any, Any]) -> None:
    r = await client.get("/healthz")
    assert r.status == 200 and (await r.json())["status"] == "ok"
    agent.pipeline.emit("smoke-1", "smoke.reading", {"density_db_m": 0.0})  # never committed
    status = StatusApp(agent)
    status.health.stall_s = 0.0
    status.health.check()
    await asyncio.sleep(0.01)
    ok, body = status.health.check()
    assert not ok and body["problems"][0].startswith("pipeline stuck: 1 events waiting")


async def test_logging_out_ends_a_stream_opened_with_the_session(
        client: TestClient[Any, Any]) -> None:
    assert (await client.post("/login", data={"password": PASSWORD})).status == 200
    r = await client.get("/api/stream")

    async def next_doc() -> dict[str, Any] | None:
        while line := (await r.content.readline()).decode():
            if line.startswith("data: "):
                loaded: dict[str, Any] = json.loads(line[6:])
                return loaded
        return None  # the server ended the stream

    first = await asyncio.wait_for(next_doc(), 5)
    assert first is not None and first["viewer"]["authenticated"]
    await client.post("/logout")
    # the next document is not sent to a logged-out session: the stream ends instead
    assert await asyncio.wait_for(next_doc(), 5) is None
