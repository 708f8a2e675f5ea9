"""`edge-collector serve` and the `api:` section: a cursor survives a restart (the key
is read from its file), TLS, and the clear failures."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from collector.config import ApiConfig
from collector.store import open_store
from collector.stream.server import ApiSetupError, serve_api
from edge_agent.contract.settings import SecretRef
from tests.peers import free_port, self_signed
from tests.stream_support import ALL, Consumer, MemoryConsumers, event_rows, ingest


def _api(tmp_path: Path, port: int, **extra: object) -> ApiConfig:
    key = tmp_path / "cursor.key"
    if not key.exists():
        key.write_text(os.urandom(32).hex())
        key.chmod(0o600)
    return ApiConfig(listen=f"127.0.0.1:{port}", cursor_key=SecretRef(file=key),
                     **extra)  # type: ignore[arg-type]


async def _page(base: str, after: str | None = None, ctx: ssl.SSLContext | None = None,
                ) -> dict[str, object]:
    params = {"limit": "2", **({"after": after} if after else {})}
    async with aiohttp.ClientSession() as s, s.get(
            f"{base}/v1/events", params=params, headers={"Authorization": "Bearer tok"},
            ssl=ctx if ctx is not None else True) as resp:
        assert resp.status == 200
        body: dict[str, object] = await resp.json()
        return body


async def _serving(api: ApiConfig, url: str, consumers: MemoryConsumers
                   ) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve_api(api, url, stop, consumers))
    for _ in range(100):
        await asyncio.sleep(0.05)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", api.port)
            writer.close()
            return stop, task
        except OSError:
            continue
    raise AssertionError("the API did not start")


async def test_cursor_survives_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'district.db'}"
    store = open_store(url)
    ingest(store, event_rows(5))
    consumers = MemoryConsumers({"tok": Consumer("platform", ALL)})
    port = free_port()
    api = _api(tmp_path, port)
    stop, task = await _serving(api, url, consumers)
    first = await _page(f"http://127.0.0.1:{port}")
    stop.set()
    await task
    stop, task = await _serving(api, url, consumers)
    second = await _page(f"http://127.0.0.1:{port}", str(first["next"]))
    stop.set()
    await task
    store.close()
    ids = [e["id"] for e in first["events"] + second["events"]]  # type: ignore[operator]
    assert len(ids) == 4 and len(set(ids)) == 4


async def test_tls(tmp_path: Path) -> None:
    cert, key = await asyncio.to_thread(self_signed, tmp_path / "tls")
    url = f"sqlite:///{tmp_path / 'district.db'}"
    open_store(url).close()
    port = free_port()
    api = _api(tmp_path, port, tls={"cert_file": cert, "key_file": key})
    stop, task = await _serving(api, url, MemoryConsumers({"tok": Consumer("p", ALL)}))
    ctx = ssl.create_default_context(cafile=str(cert))
    body = await _page(f"https://127.0.0.1:{port}", ctx=ctx)
    assert body["events"] == []
    stop.set()
    await task


async def test_short_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cursor.key").write_text("short")
    with pytest.raises(ApiSetupError, match="at least 16"):
        await serve_api(_api(tmp_path, free_port()), f"sqlite:///{tmp_path / 'x.db'}",
                        asyncio.Event(), MemoryConsumers())


def test_serve_needs_api_section(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"collector: {{id: c1}}\nstore: sqlite:///{tmp_path / 'd.db'}\n"
                   "broker: {url: 'mqtt://127.0.0.1:1'}\n")
    out = subprocess.run([sys.executable, "-m", "collector", "serve", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no `api:` section" in out.stderr


async def test_a_cursor_of_a_replaced_store_is_refused_not_silently_past_its_events(
        tmp_path: Path) -> None:
    """The store is replaced (restored from an older copy) and served again with the same
    cursor key: a consumer's cursor from the old store is past the new store's end. It is
    refused (400 naming `after`, with a hint), not answered with no events and the same
    cursor forever while the new store's events go by."""
    consumers = MemoryConsumers({"tok": Consumer("platform", ALL)})
    port = free_port()
    api = _api(tmp_path, port)
    old_url = f"sqlite:///{tmp_path / 'old.db'}"
    store = open_store(old_url)
    ingest(store, event_rows(6))
    store.close()
    stop, task = await _serving(api, old_url, consumers)
    base = f"http://127.0.0.1:{port}"
    cursor = str((await _page(base, (await _page(base))["next"]))["next"])  # after event 4
    stop.set()
    await task
    new_url = f"sqlite:///{tmp_path / 'restored.db'}"
    store = open_store(new_url)
    ingest(store, event_rows(2))
    stop, task = await _serving(api, new_url, consumers)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/v1/events", params={"after": cursor},
                             headers={"Authorization": "Bearer tok"}) as resp:
                body = await resp.json()
                assert resp.status == 400, body
            assert body["parameter"] == "after"
            assert "beyond the end of this store" in body["error"]
            assert "without it" in body["error"]  # the hint: start again from the beginning
            ingest(store, event_rows(3))  # rowids 3-5: still behind the old cursor (4)
            async with s.get(f"{base}/v1/events", params={"after": cursor},
                             headers={"Authorization": "Bearer tok"}) as resp:
                assert resp.status == 200  # the store reached it again: a cursor like any
    finally:
        stop.set()
        await task
        store.close()
