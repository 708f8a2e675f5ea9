"""The aiohttp application: routes of the status page and its machine endpoints."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from edge_agent.config.models import SecretError
from edge_agent.contract.logs import get_logger
from edge_agent.status import metrics
from edge_agent.status.access import SESSION_COOKIE, SESSION_TTL_S, Credential, HostPolicy
from edge_agent.status.activity import SNAPSHOT_ID
from edge_agent.status.health import Health
from edge_agent.status.snapshot import AgentView, DiskGauge, build_status
from edge_agent.status.stream import Broadcaster
from edge_agent.status.throttle import GuessThrottle, Verdict, client_key

log = get_logger("edge_agent.status")

LANGS = ("zh-CN", "en")
STATIC = {"app.js": "text/javascript", "favicon.svg": "image/svg+xml"}
DEFAULT_SNAPSHOT_DIR = Path("/var/lib/edge-agent/snapshots")
SNAPSHOT_NAME = re.compile(r"^([0-9A-HJKMNP-TV-Z]{26})\.jpg$")
SNAPSHOT_MAX_BYTES = 8 * 1024 * 1024
STREAMS_MAX = 50
#: open streams one client address may hold (a hostile host cannot take every slot)
STREAMS_PER_CLIENT = 8
LOGIN_FAIL_DELAY_S = 1.0
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_dumps = partial(json.dumps, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "etag", '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"')


def load_assets() -> dict[str, Asset]:
    """Page, scripts, styles and catalogs from package data (no CDN, no internet)."""
    root = resources.files("edge_agent.status")
    assets = {"/": Asset(root.joinpath("static/index.html").read_bytes(),
                         "text/html; charset=utf-8")}
    for name, ctype in STATIC.items():
        assets[f"/static/{name}"] = Asset(root.joinpath(f"static/{name}").read_bytes(),
                                          f"{ctype}; charset=utf-8")
    # the house look, shared with the district's pages (edge_agent/contract/static)
    assets["/static/app.css"] = Asset(
        resources.files("edge_agent.contract").joinpath("static/page.css").read_bytes(),
        "text/css; charset=utf-8")
    for lang in LANGS:
        assets[f"/i18n/{lang}.json"] = Asset(root.joinpath(f"i18n/{lang}.json").read_bytes(),
                                             "application/json; charset=utf-8")
    schema = resources.files("edge_agent.contract.schemas").joinpath("status-v1.schema.json")
    assets["/api/status.schema.json"] = Asset(schema.read_bytes(),
                                              "application/schema+json; charset=utf-8")
    return assets


def snapshot_dir(view: AgentView) -> Path:
    """`snapshots.dir` of the gateway config (the ONVIF driver writes there)."""
    section = getattr(view.cfg, "snapshots", None)
    folder = getattr(section, "dir", None)
    return Path(folder) if folder else DEFAULT_SNAPSHOT_DIR


def reveal_credential(view: AgentView) -> Credential:
    ref = view.cfg.status_page.credential
    if ref is None:
        return Credential(None)
    try:
        return Credential(ref.reveal().get_secret_value() or None)
    except SecretError as exc:
        log.error("status_page_credential_unreadable", error=str(exc),
                  hint="snapshots stay locked until status_page.credential can be read")
        return Credential(None)


class StatusApp:
    def __init__(self, view: AgentView, *, hostname: str | None = None) -> None:
        self.view = view
        cfg = view.cfg.status_page
        self.hosts = HostPolicy(cfg.allowed_hosts, hostname=hostname)
        self.credential = reveal_credential(view)
        self.disk = DiskGauge(view.cfg.outbox.path.parent)
        self.health = Health(view, self.disk)
        self.assets = load_assets()
        self.snapshots = snapshot_dir(view)
        self.stream = Broadcaster(self.status)
        self.guesses = GuessThrottle()  # see _guarded
        self._streams = 0  # open /api/stream responses, and ones being opened
        self._client_streams: dict[str, int] = {}  # the same per client address

    def status(self, authenticated: bool) -> dict[str, Any]:
        return build_status(self.view, self.disk, authenticated=authenticated,
                            login_available=self.credential.configured)

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._host_guard], client_max_size=4096)
        r = app.router
        for path in self.assets:
            r.add_get(path, self._asset)
        r.add_get("/api/status", self._api_status)
        r.add_get("/api/stream", self._api_stream)
        r.add_get("/metrics", self._metrics)
        r.add_get("/healthz", self._healthz)
        r.add_post("/login", self._login)
        r.add_post("/logout", self._logout)
        r.add_get("/snapshots/{name}", self._snapshot)
        app.on_response_prepare.append(self._headers)
        app.on_shutdown.append(self._shutdown)
        return app

    # ------------------------------------------------------------------ access

    @web.middleware
    async def _host_guard(self, request: web.Request,
                          handler: Any) -> web.StreamResponse:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        local = sock[0] if isinstance(sock, tuple) and sock else None
        host = request.headers.get("Host")
        if not self.hosts.allows(host, local):
            return web.Response(
                status=421, content_type="text/plain", charset="utf-8",
                text=f"421 此网关不认识地址 {host!r} / Host {host!r} is not a name of this "
                     "gateway.\nUse the gateway's IP address (http://<ip>:<port>/) or add the "
                     "name to status_page.allowed_hosts in the gateway config.\n")
        response: web.StreamResponse = await handler(request)
        return response

    async def authenticated(self, request: web.Request) -> bool:
        if self.credential.session_valid(request.cookies.get(SESSION_COOKIE)):
            return True
        header = request.headers.get("Authorization")
        if not header or not self.credential.configured:
            return False
        verdict = await self._guarded(lambda: self.credential.authorization_valid(header),
                                      request)
        return verdict is Verdict.OK

    def _still_authenticated(self, request: web.Request) -> bool:
        """For an open stream: its session still open, or its header still the credential
        (checked without the pause: it was right when the stream opened)."""
        return (self.credential.session_valid(request.cookies.get(SESSION_COOKIE))
                or self.credential.authorization_valid(request.headers.get("Authorization")))

    async def _guarded(self, check: Callable[[], bool], request: web.Request) -> Verdict:
        """Credential checks one at a time per client address, a failed one answered after
        a pause (edge_agent.status.throttle): guessing with many parallel requests (login
        or Authorization headers) from one address is no faster than one guess a second,
        and it does not delay anyone else."""
        verdict = await self.guesses.check(request.remote, check, LOGIN_FAIL_DELAY_S)
        if verdict is not Verdict.OK:
            log.warning("status_page_login_failed", remote=request.remote,
                        verdict=verdict.value)
        return verdict

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        h = response.headers
        h.setdefault("Content-Security-Policy", CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Cache-Control", "no-store")

    async def _shutdown(self, app: web.Application) -> None:
        await self.stream.close()

    # ------------------------------------------------------------------ handlers

    async def _asset(self, request: web.Request) -> web.Response:
        asset = self.assets[request.path]
        headers = {"ETag": asset.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, headers={**headers,
                                                      "Content-Type": asset.content_type})

    async def _api_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status(await self.authenticated(request)), dumps=_dumps)

    async def _api_stream(self, request: web.Request) -> web.StreamResponse:
        # The slot is taken before the first await: a stream still checking its
        # Authorization header (a wrong one pauses) counts against the cap too.
        client = client_key(request.remote)
        if self._streams >= STREAMS_MAX:
            raise web.HTTPServiceUnavailable(text="too many open status pages; use polling")
        if self._client_streams.get(client, 0) >= STREAMS_PER_CLIENT:
            raise web.HTTPServiceUnavailable(
                text="too many open status pages from this computer; close some")
        self._streams += 1
        self._client_streams[client] = self._client_streams.get(client, 0) + 1
        try:
            return await self._serve_stream(request)
        finally:
            self._streams -= 1
            self._client_streams[client] -= 1
            if not self._client_streams[client]:
                del self._client_streams[client]

    async def _serve_stream(self, request: web.Request) -> web.StreamResponse:
        authed = await self.authenticated(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        listener = self.stream.subscribe(authed)
        try:
            await response.write(b"retry: 3000\n\n")
            while (payload := await listener.queue.get()) is not None:
                if authed and not self._still_authenticated(request):
                    break  # logged out or expired: the page reconnects without the credential
                await response.write(f"event: status\ndata: {payload}\n\n".encode())
        except ConnectionError:  # the page went away
            pass
        finally:  # a cancellation (agent shutting down) goes on up, never swallowed
            self.stream.unsubscribe(listener)
        return response

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(self.view).encode(),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, body = self.health.check()
        return web.json_response(body, status=200 if ok else 503, dumps=_dumps)

    async def _login(self, request: web.Request) -> web.Response:
        if cross_origin(request):
            return web.json_response({"error": "cross_origin"}, status=403)
        if not self.credential.configured:
            return web.json_response({"error": "no_credential"}, status=403)
        form = await request.post()
        password = form.get("password")
        verdict = await self._guarded(lambda: isinstance(password, str)
                                      and self.credential.matches(password), request)
        if verdict is Verdict.BUSY:
            return web.json_response({"error": "too_many_attempts"}, status=429,
                                     headers={"Retry-After": "1"})
        if verdict is not Verdict.OK:
            return web.json_response({"error": "wrong_password"}, status=401)
        log.info("status_page_login", remote=request.remote)
        response = web.json_response({"ok": True})
        response.set_cookie(SESSION_COOKIE, self.credential.open_session(), httponly=True,
                            samesite="Strict", max_age=SESSION_TTL_S, path="/")
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        if cross_origin(request):  # another site must not end a staff member's session
            return web.json_response({"error": "cross_origin"}, status=403)
        self.credential.close_session(request.cookies.get(SESSION_COOKIE))
        response = web.json_response({"ok": True})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        if not await self.authenticated(request):
            text = ("snapshots need the gateway's status page credential; log in on the page"
                    if self.credential.configured else
                    "snapshots are not served: status_page.credential is not configured")
            return web.Response(status=401, text=text, headers={
                "WWW-Authenticate": 'Basic realm="edge-agent status", charset="UTF-8"'})
        match = SNAPSHOT_NAME.match(request.match_info["name"])
        if match is None or not SNAPSHOT_ID.match(match.group(1)):
            return web.Response(status=404,
                                text="no such snapshot (expected /snapshots/<ULID>.jpg)")
        path = self.snapshots / f"{match.group(1)}.jpg"
        try:
            body = await asyncio.to_thread(_read_small, path)
        except (OSError, ValueError):
            return web.Response(status=404, text="no such snapshot")
        return web.Response(body=body, headers={"Content-Type": "image/jpeg",
                                                "Cache-Control": "private, max-age=3600"})


def cross_origin(request: web.Request) -> bool:
    """Whether a state-changing request (login, logout) comes from another origin's page.

    Browsers say so in `Sec-Fetch-Site` and `Origin`: anything but `same-origin` (or
    `none`, typed by the user), or an Origin whose host:port is not the Host the request
    was sent to (`null` included), is refused. A client without either header is no
    browser page (curl, a monitoring script) and is served."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    scheme, sep, rest = origin.strip().partition("://")
    host = request.headers.get("Host", "")
    return not sep or scheme.lower() not in ("http", "https") or not host \
        or rest.lower() != host.strip().lower()


def _read_small(path: Path) -> bytes:
    with path.open("rb") as f:
        body = f.read(SNAPSHOT_MAX_BYTES + 1)
    if len(body) > SNAPSHOT_MAX_BYTES:
        raise ValueError("snapshot too large")
    return body
