"""Headless Chromium for page tests: Playwright driving the system's /usr/bin/chromium.

`.ci/run` installs Debian's chromium; without it the tests skip (and fail under CI=true,
like every missing peer). Screenshots go to `$ARTIFACTS_DIR/status/` or
`test-artifacts/status/` (gitignored).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright

from tests.peers import require_binary

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent


def artifacts_dir(topic: str) -> Path:
    base = Path(os.environ.get("ARTIFACTS_DIR") or ROOT / "test-artifacts")
    folder = base / topic
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    binary = require_binary("chromium")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def page(browser: Browser, *, width: int = 1280, height: int = 900,
               locale: str = "zh-CN") -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": width, "height": height},
                                        locale=locale, timezone_id="Asia/Shanghai")
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def screenshot(p: Page, topic: str, name: str) -> Path:
    path = artifacts_dir(topic) / f"{name}.png"
    await p.screenshot(path=str(path), full_page=True)
    return path
