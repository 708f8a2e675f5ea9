"""The lag page on the API listener, and the hook that runs the delivery loop there.

`GET /v1/webhooks` (JSON) and `GET /webhooks` (HTML, zh-CN first, `?lang=en` for
English) need the operator token (`api.operator_token`): `Authorization: Bearer <token>`,
or HTTP Basic with the token as the password (any user name), which a browser asks for
by itself. Without `api.operator_token` both answer 404. Neither ever shows a secret:
they render `Subscription.public()` only.

`extension(store_url, operator_token, settings)` returns one of `serve_api(..., extensions=)`
calls with the stream app and its reader: the routes, and the delivery loop started and
stopped with the app.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
from collections.abc import Callable
from html import escape

from aiohttp import web

from collector.stream.position import StoreKind
from collector.stream.reader import Reader
from collector.webhooks.db import open_webhook_db
from collector.webhooks.deliver import Deliverer, DeliverySettings
from collector.webhooks.lag import Lag, lag_of
from collector.webhooks.service import Webhooks
from edge_agent.contract.logs import get_logger

log = get_logger("collector.webhooks")

WEBHOOKS = web.AppKey("webhooks", Webhooks)
OPERATOR = web.AppKey("operator_token", str)
LAG_READER: web.AppKey[Reader] = web.AppKey("webhooks_reader", Reader)


def _token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def _allowed(request: web.Request) -> web.Response | None:
    """None when the operator token was given; else the answer."""
    expected = request.app.get(OPERATOR)
    if not expected:
        return web.json_response({"error": "no operator token configured "
                                  "(api.operator_token)"}, status=404)
    got = _token(request)
    if got is None or not hmac.compare_digest(got.encode(), expected.encode()):
        return web.json_response(
            {"error": "the operator token is required"}, status=401,
            headers={"WWW-Authenticate": 'Basic realm="webhooks", charset="UTF-8"'})
    return None


async def _lags(request: web.Request) -> list[Lag]:
    return await asyncio.to_thread(lag_of, request.app[WEBHOOKS], request.app[LAG_READER])


async def lag_json(request: web.Request) -> web.Response:
    refused = _allowed(request)
    if refused is not None:
        return refused
    return web.json_response({"webhooks": [lag.as_json() for lag in await _lags(request)]},
                             headers={"Cache-Control": "no-store"})


_TEXT = {
    "zh-CN": {"title": "推送订阅（Webhook）滞后", "name": "名称", "consumer": "消费方",
              "url": "目标地址", "behind": "落后事件数", "seconds": "落后秒数",
              "delivered": "已送达", "failures": "失败次数", "dead": "死信批次",
              "last_ok": "最近成功", "error": "最近错误", "paused": "已暂停",
              "none": "没有订阅", "switch": "English", "lang": "en"},
    "en": {"title": "Push subscriptions (webhooks): lag", "name": "Name",
           "consumer": "Consumer", "url": "Target", "behind": "Events behind",
           "seconds": "Seconds behind", "delivered": "Delivered", "failures": "Failures",
           "dead": "Dead letters", "last_ok": "Last success", "error": "Last error",
           "paused": "paused", "none": "No subscriptions", "switch": "中文", "lang": "zh-CN"},
}


def render(lags: list[Lag], lang: str) -> str:
    t = _TEXT.get(lang, _TEXT["zh-CN"])
    lang = lang if lang in _TEXT else "zh-CN"
    heads = "".join(f"<th>{escape(t[k])}</th>" for k in
                    ("name", "consumer", "url", "behind", "seconds", "delivered", "failures",
                     "dead", "last_ok", "error"))
    rows = []
    for lag in lags:
        s = lag.subscription
        behind = f"≥{lag.events_behind}" if lag.capped else str(lag.events_behind)
        state = f" ({t['paused']})" if lag.paused else ""
        cells = (s.name + state, s.consumer, s.url, behind, f"{lag.seconds_behind:.0f}",
                 str(s.delivered), str(s.failures), str(lag.dead_letters),
                 "" if s.last_success_at is None else s.last_success_at.isoformat(),
                 s.last_error or "")
        cls = ' class="behind"' if lag.events_behind or lag.paused else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    body = "".join(rows) or f'<tr><td colspan="10">{escape(t["none"])}</td></tr>'
    return (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta http-equiv="refresh" content="10">'
            f"<title>{escape(t['title'])}</title><style>"
            "body{font-family:system-ui,'Noto Sans CJK SC',sans-serif;margin:1.5rem;"
            "color:#1f2933}table{border-collapse:collapse;width:100%}"
            "th,td{border-bottom:1px solid #d9e2ec;padding:.4rem .6rem;text-align:left;"
            "font-size:.9rem}tr.behind td{background:#fff4e5}header{display:flex;"
            "justify-content:space-between;align-items:center}</style></head><body>"
            f"<header><h1>{escape(t['title'])}</h1>"
            f'<a href="?lang={t["lang"]}" data-testid="lang-toggle">{escape(t["switch"])}</a>'
            f"</header><table><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>"
            "</body></html>")


async def lag_html(request: web.Request) -> web.Response:
    refused = _allowed(request)
    if refused is not None:
        return refused
    lang = request.query.get("lang", "zh-CN")
    return web.Response(text=render(await _lags(request), lang), content_type="text/html",
                        headers={"Cache-Control": "no-store"})


def attach(app: web.Application, reader: Reader, webhooks: Webhooks,
           operator_token: str | None, settings: DeliverySettings | None = None) -> None:
    """The routes, and the delivery loop running while the app runs."""
    app[WEBHOOKS] = webhooks
    app[LAG_READER] = reader
    if operator_token:
        app[OPERATOR] = operator_token
    app.router.add_get("/v1/webhooks", lag_json)
    app.router.add_get("/webhooks", lag_html)
    stop = asyncio.Event()
    holder: dict[str, asyncio.Task[None]] = {}

    async def startup(app: web.Application) -> None:
        holder["task"] = asyncio.create_task(Deliverer(webhooks, reader, settings).run(stop),
                                             name="webhooks")

    async def cleanup(app: web.Application) -> None:
        stop.set()
        if "task" in holder:
            await asyncio.gather(holder["task"], return_exceptions=True)
        await asyncio.to_thread(webhooks.close)

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)


def extension(store_url: str, operator_token: str | None,
              settings: DeliverySettings | None = None) -> Callable[[web.Application, Reader],
                                                                    None]:
    """For `serve_api(extensions=…)`: opens the webhook tables and attaches the whole."""

    def extend(app: web.Application, reader: Reader) -> None:
        kind: StoreKind = reader.kind
        attach(app, reader, Webhooks(open_webhook_db(store_url), kind), operator_token,
               settings)

    return extend


