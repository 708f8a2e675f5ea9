"""`OnvifSimulator`: an ONVIF camera on 127.0.0.1 (aiohttp), scriptable from tests.

Services: device (`/onvif/device_service`), media (`/onvif/media_service`), events
(`/onvif/event_service`, PullPoint subscriptions at `/onvif/subscription/<id>`), a
Digest-protected snapshot (`/onvif/snapshot`; Basic with `switches.basic_snapshots`) and
the MJPEG stream of a `SyntheticScene` (`/video.mjpg`, Basic or Digest). Every SOAP
operation except GetSystemDateAndTime wants a WS-UsernameToken whose Created time matches
the camera's clock (real time + `clock_skew_s`); with `username=None` the camera is open
(no credentials anywhere, as many cameras ship). Unknown operations answer a SOAP Fault.

Scripting: `fire(topic, data, source)` (and `motion()`, `tamper()`), `reboot(downtime_s)`
(drops every subscription and refuses connections meanwhile), `set_password()`,
`clock_skew_s`, and the fault switches in `switches` (one per failure mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from drivers.onvif.simulator.video import SyntheticScene, add_mjpeg_routes
from drivers.onvif.xmlsafe import HostileXml
from edge_agent.contract.logs import get_logger

from . import services
from .auth import DigestChallenge, UsernameTokenChecker
from .pullpoint import Message, Subscriptions
from .soap import Fault, envelope, fault_envelope, parse_request

__all__ = ["MOTION_TOPIC", "TAMPER_TOPIC", "OnvifSimulator", "Switches"]

log = get_logger("drivers.onvif.simulator")

MOTION_TOPIC = "tns1:RuleEngine/CellMotionDetector/Motion"
TAMPER_TOPIC = "tns1:RuleEngine/TamperDetector/Tamper"
_SOAP = "application/soap+xml; charset=utf-8"
HOST = "127.0.0.1"


@dataclass
class Switches:
    """Fault injection, one switch per failure mode."""

    #: operation -> the SOAP Fault it answers
    faults: dict[str, Fault] = field(default_factory=dict)
    #: operations that answer an entity-expansion bomb with a DTD
    hostile: set[str] = field(default_factory=set)
    #: PullMessages never answers (a wedged event service)
    hang_pulls: bool = False
    #: GetSnapshotUri answers a fault (the driver falls back to a stream frame)
    no_snapshot_uri: bool = False
    #: no events service: GetServices/GetCapabilities list none, its address answers 404
    no_events: bool = False
    #: the snapshot URI challenges with HTTP Basic only (and accepts only Basic)
    basic_snapshots: bool = False
    #: the video stream answers this HTTP status instead of video (e.g. 503); 0: off
    stream_status: int = 0
    #: the video stream accepts the connection and never answers (a stalled encoder)
    stall_stream: bool = False
    #: every SOAP service answers this HTTP status with a plain-text body (e.g. 503); 0: off
    soap_status: int = 0
    #: every SOAP service answers this HTTP status with an HTML error page (as most
    #: cameras do); 0: off
    html_status: int = 0
    #: the HTML error page of `html_status` starts with `<!DOCTYPE html>`
    html_doctype: bool = False
    #: PullMessages answers at once with what it has, ignoring the request's Timeout
    eager_pulls: bool = False
    #: PullMessages answers this SOAP Body content instead of a PullMessagesResponse
    #: (e.g. `<tds:PullMessagesResponse/>`); None: off
    pull_body: str | None = None
    #: operation -> bytes of padding put into its reply (a camera answering a huge reply)
    padded: dict[str, int] = field(default_factory=dict)
    #: GetSystemDateAndTime answers without UTCDateTime (a camera that keeps its clock to
    #: itself)
    no_utc_time: bool = False
    #: the snapshot's Digest challenge names this algorithm (e.g. "FOO"); "": MD5
    digest_algorithm: str = ""
    #: GetServices lists no media service
    no_media: bool = False
    #: the snapshot's 401 sends this WWW-Authenticate header as it is (e.g. several
    #: challenges in one: `Negotiate, Basic realm="cam"`); "": the usual one
    snapshot_challenge: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class OnvifSimulator:
    def __init__(self, *, port: int = 0, username: str | None = "admin",
                 password: str = "sim-password", clock_skew_s: float = 0.0,
                 max_termination_s: float = 3600.0, scene: SyntheticScene | None = None,
                 stream_auth: bool = True, name: str = "sim-camera",
                 video_fps: float = 10, advertise: str | None = None,
                 stream_uri: str | None = None) -> None:
        self.port = port or _free_port()
        #: host:port put in every URL handed out (a camera behind NAT, or one that points
        #: elsewhere); None: the address it listens on
        self.advertise = advertise
        #: the stream URI GetStreamUri hands out (e.g. an RTSP server's); None: our MJPEG
        self.stream_uri = stream_uri
        #: who may log in; empty: an open camera that asks nobody for credentials
        self.users = {username: password} if username is not None else {}
        self.clock_skew_s = clock_skew_s
        self.max_termination_s = max_termination_s
        self.scene = scene or SyntheticScene()
        self.stream_auth = stream_auth
        self.video_fps = video_fps
        self.model, self.serial = name, f"SIM{self.port:05d}"
        self.switches = Switches()
        self.subscriptions = Subscriptions()
        self.requests: Counter[str] = Counter()
        self.snapshots_served = 0
        #: the auth scheme of each snapshot request, in order ("" when it had none)
        self.snapshot_auth_seen: list[str] = []
        self.properties: dict[tuple[str, tuple[tuple[str, str], ...]], Message] = {}
        self._tokens = UsernameTokenChecker()
        self._digest = DigestChallenge()
        self._runner: web.AppRunner | None = None
        self._reboot: asyncio.Task[None] | None = None
        self._down = asyncio.Event()

    # ------------------------------------------------------------------ addresses

    def url(self, path: str) -> str:
        return f"http://{self.advertise or f'{HOST}:{self.port}'}{path}"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def camera_now(self) -> float:
        return time.time() + self.clock_skew_s

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024, middlewares=[self._video_auth])
        for kind, path in (("device", "/onvif/device_service"), ("media", "/onvif/media_service"),
                           ("events", "/onvif/event_service")):
            app.router.add_post(path, self._soap_handler(kind))
        app.router.add_post("/onvif/subscription/{sub}", self._soap_handler("subscription"))
        app.router.add_get("/onvif/snapshot", self._snapshot)
        add_mjpeg_routes(app, self.scene, "/video.mjpg", fps=self.video_fps)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2,
                               handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, HOST, self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        self._down.clear()
        log.info("onvif_sim_started", address=self.address)

    async def stop(self) -> None:
        if self._reboot is not None:
            self._reboot.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reboot
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._down.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> OnvifSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def reboot(self, downtime_s: float = 1.0) -> None:
        """Go away for `downtime_s` (connections refused), losing every subscription."""
        log.info("onvif_sim_rebooting", address=self.address, downtime_s=downtime_s)
        self.subscriptions.drop_all()
        await self._shutdown()

        async def back() -> None:
            await asyncio.sleep(downtime_s)
            await self.start()

        self._reboot = asyncio.create_task(back())

    async def wait_up(self) -> None:
        if self._reboot is not None:
            await self._reboot

    # ------------------------------------------------------------------ scripting

    def set_password(self, password: str, username: str | None = None) -> None:
        user = username or next(iter(self.users))
        self.users = {user: password}

    def fault_on(self, operation: str, code: str = "Receiver",
                 subcode: str = "ter:Action", reason: str = "injected fault") -> None:
        self.switches.faults[operation] = Fault(code, subcode, reason)

    def fire(self, topic: str, data: dict[str, str] | None = None,
             source: dict[str, str] | None = None, operation: str = "Changed") -> None:
        src = tuple((source or {"VideoSourceConfigurationToken": "vsc0"}).items())
        msg = Message(topic, src, tuple((data or {}).items()), operation, self.camera_now())
        if operation:
            self.properties[(topic, src)] = msg
        self.subscriptions.publish(msg, self.camera_now())

    def motion(self, active: bool, rule: str = "MyMotionDetectorRule") -> None:
        self.fire(MOTION_TOPIC, {"IsMotion": str(active).lower()},
                  {"VideoSourceConfigurationToken": "vsc0",
                   "VideoAnalyticsConfigurationToken": "vac0", "Rule": rule})

    def tamper(self, active: bool) -> None:
        self.fire(TAMPER_TOPIC, {"IsTamper": str(active).lower()},
                  {"VideoSourceConfigurationToken": "vsc0",
                   "VideoAnalyticsConfigurationToken": "vac0", "Rule": "MyTamperDetectorRule"})

    def initial_messages(self) -> list[Message]:
        """What a new subscription gets first: each property's state, as Initialized."""
        now = self.camera_now()
        return [Message(m.topic, m.source, m.data, "Initialized", now)
                for m in self.properties.values()]

    async def hang(self) -> None:
        await asyncio.sleep(3600)

    async def wait_for(self, event: asyncio.Event, limit_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                await event.wait()

    # ------------------------------------------------------------------ HTTP

    def _soap_handler(self, kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        table = services.OPERATIONS[kind]

        async def handle(request: web.Request) -> web.Response:
            if kind in ("events", "subscription") and self.switches.no_events:
                raise web.HTTPNotFound(text="no such service\n")
            if self.switches.soap_status:
                return web.Response(status=self.switches.soap_status, text="busy\n")
            if self.switches.html_status:
                return self._html_error(self.switches.html_status)
            body = await request.read()
            try:
                req = parse_request(body)
            except HostileXml as exc:
                log.warning("onvif_sim_hostile_request", path=request.path, reason=str(exc))
                return self._fault(Fault("Sender", "ter:WellFormed", f"refused: {exc}"))
            except Fault as fault:
                return self._fault(fault)
            self.requests[req.operation] += 1
            try:
                handler: Any = table.get(req.operation)
                if handler is None:
                    raise Fault("Receiver", "ter:ActionNotSupported",
                                f"{req.operation} is not supported by the {kind} service")
                if req.operation not in services.AUTHLESS and self.users:
                    self._tokens.check(req.header, self.users, self.camera_now())
                injected = self.switches.faults.get(req.operation)
                if injected is not None:
                    raise injected
                if req.operation in self.switches.hostile:
                    return web.Response(body=services.HOSTILE_BODY, content_type="application/"
                                        "soap+xml")
                if kind == "subscription":
                    result = handler(self, req, request.match_info["sub"])
                else:
                    result = handler(self, req)
                if asyncio.iscoroutine(result):
                    result = await result
            except Fault as fault:
                return self._fault(fault)
            pad = self.switches.padded.get(req.operation, 0)
            if pad:  # a comment inside the Body: still valid SOAP, just huge
                result = f"<!--{'x' * pad}-->{result}"
            return web.Response(body=envelope(result), headers={"Content-Type": _SOAP})

        return handle

    def _html_error(self, status: int) -> web.Response:
        doctype = "<!DOCTYPE html>\n" if self.switches.html_doctype else ""
        return web.Response(status=status, content_type="text/html", text=(
            f"{doctype}<html><head><title>{status}</title></head><body><h1>Error {status}"
            "</h1><p>Service Unavailable<br></p></body></html>\n"))

    def _fault(self, fault: Fault) -> web.Response:
        return web.Response(status=fault.status, body=fault_envelope(fault),
                            headers={"Content-Type": _SOAP})

    def _unauthorized(self) -> web.Response:
        challenge = ('Basic realm="onvif-sim"' if self.switches.basic_snapshots
                     else self._digest.challenge())
        if self.switches.snapshot_challenge:
            challenge = self.switches.snapshot_challenge
        if self.switches.digest_algorithm:
            challenge = challenge.replace("algorithm=MD5",
                                          f"algorithm={self.switches.digest_algorithm}")
        return web.Response(status=401, text="401 Unauthorized\n", headers={
            "WWW-Authenticate": challenge})

    def _snapshot_allowed(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        self.snapshot_auth_seen.append(header.split(" ", 1)[0].lower() if header else "")
        if not self.users:
            return True
        if self.switches.basic_snapshots and not header.lower().startswith("basic "):
            return False
        return self._digest.verify(header, request.method, self.users)

    async def _snapshot(self, request: web.Request) -> web.Response:
        if not self._snapshot_allowed(request):
            return self._unauthorized()
        if self.scene.mode == "off":
            raise web.HTTPServiceUnavailable(text="camera off\n")
        jpeg = await asyncio.to_thread(self.scene.jpeg)
        self.snapshots_served += 1
        return web.Response(body=jpeg, content_type="image/jpeg")

    @web.middleware
    async def _video_auth(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                          ) -> web.StreamResponse:
        if not request.path.startswith("/video"):
            return await handler(request)
        if self.switches.stall_stream:
            await self.hang()
        if self.stream_auth and self.users and not self._digest.verify(
                request.headers.get("Authorization", ""), request.method, self.users):
            return web.Response(status=401, text="401 Unauthorized\n", headers={
                "WWW-Authenticate": 'Basic realm="onvif-sim"'})
        if self.switches.stream_status:
            return web.Response(status=self.switches.stream_status,
                                text=f"{self.switches.stream_status} camera busy\n")
        return await handler(request)
