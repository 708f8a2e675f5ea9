"""Webhooks inside a real `edge-collector serve`, managed by the CLI, on both stores: the
consumer's scope is what is delivered, the lag page needs the operator token, `webhooks
list` shows the lag without the secret, and neither secret nor token is in the log."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from collector.store import open_store
from tests.peers import free_port
from tests.stream_http import serve_process
from tests.test_stream_consumers import HERE, THERE, _ingest

OPERATOR = "operator-token-for-the-test"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", *args], capture_output=True,
                          text=True, timeout=60)


def _serve(store_url: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    op = tmp / "operator.token"
    op.write_text(OPERATOR)
    op.chmod(0o600)
    served = serve_process(tmp, store_url, api={"operator_token": {"file": str(op)}})
    return served.proc, served.port, served.log


async def test_serve_delivers_the_consumers_scope_and_shows_the_lag(
        store_url: str, tmp_path: Path) -> None:
    open_store(store_url).close()
    _ingest(store_url, HERE, "gw-here")
    _ingest(store_url, THERE, "gw-there")
    made = _cli("consumers", "add", "消防-河东", "--store", store_url, "--area", HERE,
                "--type", "smoke.*")
    assert made.returncode == 0, made.stderr
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.extend(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    recv_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", recv_port).start()
    bad = _cli("webhooks", "add", "x", "--store", store_url, "--consumer", "消防-河东",
               "--url", "http://fire.example/hook")
    assert bad.returncode == 2 and "https" in bad.stderr
    added = _cli("webhooks", "add", "fire", "--store", store_url, "--consumer", "消防-河东",
                 "--url", f"http://127.0.0.1:{recv_port}/hook")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    assert secret.startswith("whsec_")
    proc, port, log = _serve(store_url, tmp_path)
    try:
        for _ in range(200):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        assert sorted((e["community"], e["type"]) for e in got) == [
            (HERE, "smoke.alarm"), (HERE, "smoke.reading")]
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/v1/webhooks",
                             headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with s.get(f"http://127.0.0.1:{port}/v1/webhooks",
                             headers={"Authorization": f"Bearer {OPERATOR}"}) as r:
                body = await r.json()
        lag = body["webhooks"][0]
        assert lag["name"] == "fire" and lag["events_behind"] == 0 and lag["delivered"] == 2
        assert secret not in json.dumps(body)
        listed = _cli("webhooks", "list", "--store", store_url)
        assert listed.returncode == 0, listed.stderr
        assert "fire" in listed.stdout and "behind 0 events" in listed.stdout
        assert secret not in listed.stdout + listed.stderr
        assert _cli("webhooks", "remove", "fire", "--store", store_url).returncode == 0
        assert "no webhooks" in _cli("webhooks", "list", "--store", store_url).stdout
    finally:
        proc.terminate()
        proc.wait(15)
        await runner.cleanup()
    text = log.read_text()
    assert "webhook" in text or "stream_api_started" in text
    assert secret not in text and OPERATOR not in text
