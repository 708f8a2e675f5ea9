"""A thin wrapper on onvif-zeep-async: one camera, precise errors, bounded time.

`CameraClient.connect()` reads the camera's clock (GetSystemDateAndTime, no
credentials) so that every later WS-UsernameToken is dated in the camera's time
(`adjust_time`, the library's `dt_diff`), then finds the services (GetServices, falling
back to GetCapabilities). Each operation runs under a deadline and every failure comes
out as one `errors.OnvifError` subclass naming the camera and the operation. Replies
are read at most 1 MiB (`reply_guard`) and parsed with DTDs, entities and external
references forbidden (`xmlsafe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from edge_agent.contract.logs import get_logger

from .errors import AuthError, BadReply, NotSupported, OddReply, OnvifError, SoapFault, Unreachable
from .reply_guard import MAX_REPLY_BYTES, HttpErrorPage, ReplyTooLarge, guard_replies
from .wsdl_once import share_wsdl_loads
from .xmlsafe import harden_zeep

__all__ = ["CameraClient", "DeviceInfo", "MediaProfile", "PullPoint", "redact_url",
           "with_credentials"]

T = TypeVar("T")
_PULLPOINT_NS = "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription"
_EVENTS_NS = "http://www.onvif.org/ver10/events/wsdl"
log = get_logger("drivers.onvif.client")
for _name in ("onvif", "zeep", "httpx"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@dataclass(frozen=True)
class DeviceInfo:
    manufacturer: str
    model: str
    firmware: str
    serial: str


@dataclass(frozen=True)
class MediaProfile:
    token: str
    name: str
    encoding: str
    width: int
    height: int


@dataclass(frozen=True)
class PullPoint:
    """A live subscription: its address (no credentials) and lifetime on the camera."""

    address: str
    lifetime_s: float


def redact_url(url: str) -> str:
    """The URL without user info, for logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def with_credentials(url: str, user: str | None, password: str | None) -> str:
    """`url` with user:password inserted: for OpenCV only, kept in memory, never logged."""
    if not user:
        return url
    parts = urlsplit(redact_url(url))
    cred = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit(parts._replace(netloc=f"{cred}@{parts.netloc}"))


def _lifetime(current: Any, termination: Any, asked: float) -> float:
    if isinstance(current, dt.datetime) and isinstance(termination, dt.datetime):
        return max((termination - current).total_seconds(), 1.0)
    return asked


def _subcode(fault: Any) -> str:
    codes = getattr(fault, "subcodes", None) or []
    names = []
    for code in codes:
        text = getattr(code, "localname", None) or str(code)
        names.append(text.rsplit("}", 1)[-1].rsplit(":", 1)[-1])
    return "/".join(names)


def _says_not_authorized(text: str) -> bool:
    """A fault text that names an authentication failure: "Sender not Authorized",
    "ter:NotAuthorized", "not_authorized" (cameras that put the subcode in the text)."""
    squashed = "".join(ch for ch in text.lower() if ch.isalnum())
    return "notauthorized" in squashed or "unauthorized" in squashed


def _challenges(reply: aiohttp.ClientResponse) -> set[str]:
    """The auth schemes a 401 offers, lower case: one header may hold several challenges
    (`Negotiate, Basic realm="cam"`, RFC 7235); a part whose first word holds `=` is a
    parameter of the challenge before it, not a scheme."""
    schemes: set[str] = set()
    for header in reply.headers.getall("WWW-Authenticate", []):
        for part in header.split(","):
            words = part.split()
            if words and "=" not in words[0] and '"' not in words[0]:
                schemes.add(words[0].lower())
    return schemes


@functools.cache
def _anonymous_camera() -> type[Any]:
    """ONVIFCamera whose services send no WS-Security header: for a camera configured
    without `username` (the library would put `None` into a UsernameToken)."""
    from onvif import ONVIFCamera

    class AnonymousCamera(ONVIFCamera):  # type: ignore[misc]
        async def create_onvif_service(self, *args: Any, **kwargs: Any) -> Any:
            service = await super().create_onvif_service(*args, **kwargs)
            if service.zeep_client is not None:
                service.zeep_client.wsse = None
            return service

    return AnonymousCamera


class CameraClient:
    """One camera session. Not shared between tasks that call it concurrently."""

    def __init__(self, device: str, host: str, port: int, username: str | None,
                 password: str | None, *, adjust_time: bool = True,
                 timeout_s: float = 10.0, pin_to_host: bool = True) -> None:
        self.device, self.host, self.port = device, host, port
        self.username, self._password = username, password
        self.adjust_time, self.timeout_s = adjust_time, timeout_s
        #: every advertised address is rewritten to `host` (the library's nat_override for
        #: services, subscriptions and snapshots; `_pinned` for the stream URI)
        self.pin_to_host = pin_to_host
        self._cam: Any = None
        self._pullpoint: Any = None
        self._subscription: Any = None
        self._basic_warned = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def clock_skew_s(self) -> float:
        """Camera clock minus ours, seconds (0 until connected or with adjust_time off)."""
        diff = getattr(self._cam, "dt_diff", None)
        return diff.total_seconds() if isinstance(diff, dt.timedelta) else 0.0

    # ------------------------------------------------------------------ plumbing

    async def _call(self, operation: str, awaitable: Awaitable[T],
                    limit_s: float | None = None) -> T:
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            async with asyncio.timeout(limit_s or self.timeout_s):
                return await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self.translate(exc, operation) from None

    def translate(self, exc: BaseException, operation: str) -> OnvifError:
        """The precise OnvifError for whatever the library or network raised."""
        import zeep.exceptions as zx
        from onvif.exceptions import ONVIFAuthError, ONVIFTimeoutError

        d = self.device
        seen = exc
        while True:  # safe_func wraps the real cause in ONVIFError
            cause = seen.__cause__ or seen.__context__
            if type(seen).__name__ == "ONVIFError" and cause is not None:
                seen = cause
                continue
            break
        if isinstance(seen, OnvifError):
            return seen
        if isinstance(seen, ReplyTooLarge):
            return BadReply(d, operation, f"reply refused: more than {MAX_REPLY_BYTES} bytes "
                            f"(at least {seen.size})", "a real camera never sends SOAP "
                            "replies this large; is something else answering?")
        if isinstance(seen, HttpErrorPage):
            return self._http_status(operation, seen.status)
        if isinstance(seen, zx.Fault):
            sub, text = _subcode(seen), str(seen.message or "")[:200]
            if "NotAuthorized" in sub or _says_not_authorized(text):
                return AuthError(d, operation, f"the camera refused the credentials ({text})",
                                 "check username and password; with adjust_time: false a "
                                 "camera clock far from ours also fails")
            hint = ("the camera does not implement this operation"
                    if "ActionNotSupported" in sub else "see the camera's log")
            return SoapFault(d, operation, str(seen.code or "?"), sub, text, hint)
        if isinstance(seen, (zx.DTDForbidden, zx.EntitiesForbidden)):
            return BadReply(d, operation, "reply refused: it declares a DTD or entities",
                            "a real camera never sends these; is something else answering?")
        if isinstance(seen, zx.TransportError):
            return self._http_status(operation, getattr(seen, "status_code", 0))
        if isinstance(seen, (zx.XMLSyntaxError, zx.XMLParseError)):
            return BadReply(d, operation, "the reply is not well-formed SOAP",
                            f"is {self.address} an ONVIF port?")
        if isinstance(seen, ONVIFAuthError):
            return AuthError(d, operation, "HTTP 401 Unauthorized", "check username and password")
        if isinstance(seen, (TimeoutError, ONVIFTimeoutError)):
            return Unreachable(d, operation, self.address, "no answer in time",
                               "check the camera's power and network, or raise timeout_s")
        if isinstance(seen, aiohttp.ClientConnectorError):
            os_error = seen.os_error
            why = ("connection refused" if isinstance(os_error, ConnectionRefusedError)
                   else os_error.strerror or str(os_error))
            return Unreachable(d, operation, self.address, why.lower(),
                               "check host/port and any firewall between gateway and camera")
        if isinstance(seen, aiohttp.ClientError) and str(seen).startswith("Digest auth error"):
            return BadReply(d, operation, "the camera's Digest challenge was not understood: "
                            + str(seen).removeprefix("Digest auth error: ")[:160],
                            "the camera sent a malformed or unsupported WWW-Authenticate "
                            "challenge (algorithm, qop, nonce or realm); no password was sent")
        if type(seen).__name__ == "ONVIFError" and "support service" in str(seen):
            named = re.search(r"service: (\w{1,40})", str(seen))
            return NotSupported(d, operation, f"the camera lists no "
                                f"{named.group(1) if named else 'such'} service",
                                "the camera's GetServices/GetCapabilities do not name it: "
                                "a camera without that service, or a firmware bug")
        if isinstance(seen, (aiohttp.ClientError, OSError)):
            text = str(seen) or type(seen).__name__
            return Unreachable(d, operation, self.address, redact_url(text)[:200],
                               "the camera dropped the connection (rebooting?)")
        return OddReply(d, operation, f"{type(seen).__name__}: {str(seen)[:200]}",
                        "the reply lacks something ONVIF requires (a firmware bug?); see "
                        "the camera's log")

    def _http_status(self, operation: str, status: int) -> OnvifError:
        """An HTTP error status without a SOAP reply, reported by the status."""
        d = self.device
        if status == 401:
            return AuthError(d, operation, "HTTP 401 Unauthorized", "check username and password")
        if status in (502, 503, 504):
            return BadReply(d, operation, f"HTTP {status}: the camera is busy or starting "
                            "and cannot answer now", "retried with back-off; if it lasts, "
                            "restart the camera")
        return BadReply(d, operation, f"HTTP {status}: not a SOAP reply",
                        f"is {self.address} an ONVIF port?")

    # ------------------------------------------------------------------ session

    async def connect(self) -> None:
        """Clock offset and service addresses; raises OnvifError."""
        harden_zeep()
        guard_replies()
        share_wsdl_loads()
        from onvif import ONVIFCamera

        await self.close()
        # Without a username the camera is asked without WS-Security at all (an empty
        # user would be a login attempt; None breaks the library's UsernameToken).
        camera_class = ONVIFCamera if self.username else _anonymous_camera()
        self._cam = camera_class(self.host, self.port, self.username or "",
                                 self._password or "", adjust_time=self.adjust_time,
                                 nat_override=self.pin_to_host)
        try:
            await self._call("GetServices", self._cam.update_xaddrs(), self.timeout_s * 2)
        except OnvifError as err:
            if isinstance(err, OddReply) and self.adjust_time \
                    and getattr(self._cam, "dt_diff", None) is None:
                raise self._clock_failed(err) from None  # the clock reply was unusable
            raise
        if not self._cam.xaddrs:
            raise BadReply(self.device, "GetServices", "the camera lists no services")

    def _clock_failed(self, err: OddReply) -> BadReply:
        """An unusable reply to the first step of connect (reading the camera's clock;
        other failures there keep the name GetServices, as the troubleshooting lists)."""
        return BadReply(self.device, "GetSystemDateAndTime", "the reply has no usable "
                        f"UTCDateTime ({err.detail[:120]})", "the camera does not tell its "
                        "clock; set `adjust_time: false` if its clock is right")

    @property
    def has_events(self) -> bool:
        """Whether the camera lists an events service (GetServices, or GetCapabilities on
        cameras without GetServices). Many cheap cameras have none."""
        xaddrs = getattr(self._cam, "xaddrs", None) or {}
        return _EVENTS_NS in xaddrs

    async def close(self) -> None:
        cam, self._cam = self._cam, None
        self._pullpoint = self._subscription = None
        if cam is not None:
            with contextlib.suppress(TimeoutError, OSError, aiohttp.ClientError, RuntimeError):
                async with asyncio.timeout(5):
                    await cam.close()

    def _camera(self) -> Any:
        if self._cam is None:
            raise BadReply(self.device, "connect", "not connected")
        return self._cam

    # ------------------------------------------------------------------ device & media

    async def device_info(self) -> DeviceInfo:
        async def op() -> Any:
            svc = await self._camera().create_devicemgmt_service()
            return await svc.GetDeviceInformation()

        r = await self._call("GetDeviceInformation", op())
        return DeviceInfo(*(str(getattr(r, k, "") or "")[:64] for k in
                            ("Manufacturer", "Model", "FirmwareVersion", "SerialNumber")))

    async def profiles(self) -> list[MediaProfile]:
        async def op() -> Any:
            svc = await self._camera().create_media_service()
            return await svc.GetProfiles()

        out: list[MediaProfile] = []
        for p in await self._call("GetProfiles", op()) or []:
            enc = getattr(p, "VideoEncoderConfiguration", None)
            res = getattr(enc, "Resolution", None)
            out.append(MediaProfile(str(getattr(p, "token", "") or "")[:64],
                                    str(getattr(p, "Name", "") or "")[:64],
                                    str(getattr(enc, "Encoding", "") or ""),
                                    int(getattr(res, "Width", 0) or 0),
                                    int(getattr(res, "Height", 0) or 0)))
        if not out:
            raise BadReply(self.device, "GetProfiles", "the camera has no media profile")
        return out

    async def stream_uri(self, token: str) -> str:
        async def op() -> Any:
            svc = await self._camera().create_media_service()
            return await svc.GetStreamUri({"StreamSetup": {"Stream": "RTP-Unicast",
                                                           "Transport": {"Protocol": "RTSP"}},
                                           "ProfileToken": token})

        reply = await self._call("GetStreamUri", op())
        uri = str(getattr(reply, "Uri", "") or "")
        if not uri.lower().startswith(("rtsp://", "rtsps://", "http://", "https://")):
            raise BadReply(self.device, "GetStreamUri", "no usable stream URI in the reply")
        return redact_url(self._pinned(uri) if self.pin_to_host else uri)

    def _pinned(self, url: str) -> str:
        """`url` with its host replaced by the configured one (scheme, port, path kept)."""
        parts = urlsplit(url)
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def snapshot(self, token: str, max_bytes: int, limit_s: float) -> bytes | None:
        """A JPEG from the snapshot URI, or None when the camera has none. Credentials
        go only in answer to the camera's challenge (`_download`). Never holds more
        than `max_bytes` of a reply: a larger image is refused as it streams in (the
        library's own download reads the whole body first)."""
        cam = self._camera()
        uri = await self._call("GetSnapshotUri", cam.get_snapshot_uri(token))
        if not uri:
            return None
        return await self._call("GetSnapshot", self._download(str(uri), max_bytes, limit_s),
                                limit_s + self.timeout_s)

    async def _download(self, uri: str, max_bytes: int, limit_s: float) -> bytes | None:
        """GET `uri`, first without credentials. A 401 is answered with the scheme the
        camera asks for: Digest (the password never crosses the network), or Basic when
        that is all it offers, and then only to the configured host (Basic hands the
        password to whoever answers). Nothing is sent before a challenge."""
        creds = bool(self.username and self._password)
        same_host = (urlsplit(uri).hostname or "").strip("[]") == self.host.strip("[]")
        digest = ((aiohttp.DigestAuthMiddleware(self.username or "", self._password or ""),)
                  if creds else ())
        timeout = aiohttp.ClientTimeout(total=limit_s)
        async with aiohttp.ClientSession(timeout=timeout, middlewares=digest) as http:
            async with http.get(uri, allow_redirects=False) as reply:
                schemes = _challenges(reply) if reply.status == 401 else set()
                if creds and schemes and not schemes & {"digest", "basic"}:
                    raise AuthError(self.device, "GetSnapshot", "the snapshot URI asks for "
                                    f"{', '.join(sorted(schemes))[:80]}, which the agent "
                                    "does not answer: no credentials were sent",
                                    "set the camera's HTTP authentication to Digest")
                if reply.status != 401 or not creds or "digest" in schemes \
                        or "basic" not in schemes:
                    return await self._image(reply, max_bytes)
            if not same_host:
                raise AuthError(self.device, "GetSnapshot", "the snapshot URI is on another "
                                "host and asks for HTTP Basic: the password was not sent",
                                "keep `pin_to_host: true`, or make the camera hand out its "
                                "own address")
            if not self._basic_warned:
                self._basic_warned = True
                log.warning("snapshot_basic_auth", device=self.device,
                            secure=uri.lower().startswith("https://"),
                            hint="the camera asks for HTTP Basic on its snapshot URI: over "
                                 "http the password crosses the network readable; prefer "
                                 "Digest or https in the camera's settings")
            basic = aiohttp.encode_basic_auth(self.username or "", self._password or "")
            async with http.get(uri, allow_redirects=False, middlewares=(),
                                headers={"Authorization": basic}) as reply:
                return await self._image(reply, max_bytes)

    async def _image(self, reply: aiohttp.ClientResponse, max_bytes: int) -> bytes | None:
        if reply.status == 401:
            if not (self.username and self._password):
                raise AuthError(self.device, "GetSnapshot", "the snapshot URI wants "
                                "credentials (HTTP 401)",
                                "set `username` and `password:` of this camera")
            raise AuthError(self.device, "GetSnapshot", "the camera refused the "
                            "username or password for its snapshot URI",
                            "check `username` and `password:` of this camera")
        if reply.status >= 300:
            raise BadReply(self.device, "GetSnapshot",
                           f"HTTP {reply.status} {reply.reason or ''}".strip(),
                           "the camera could not give a picture now (busy or starting)"
                           if reply.status == 503 else "check the camera's snapshot settings")
        if (reply.content_length or 0) > max_bytes:
            raise self._too_big(reply.content_length or 0, max_bytes)
        data = bytearray()
        async for chunk in reply.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > max_bytes:
                raise self._too_big(len(data), max_bytes)
        return bytes(data)

    def _too_big(self, size: int, max_bytes: int) -> BadReply:
        return BadReply(self.device, "GetSnapshot", f"image of more than {max_bytes} bytes "
                        f"(at least {size}); refused")

    # ------------------------------------------------------------------ events

    async def create_pullpoint(self, termination_s: float) -> PullPoint:
        cam = self._camera()

        async def op() -> Any:
            svc = await cam.create_events_service()
            return await svc.CreatePullPointSubscription(
                {"InitialTerminationTime": f"PT{int(termination_s)}S"})

        reply = await self._call("CreatePullPointSubscription", op())
        try:
            address = str(reply.SubscriptionReference.Address._value_1)
        except AttributeError:
            raise BadReply(self.device, "CreatePullPointSubscription",
                           "no subscription address in the reply") from None
        if not address.lower().startswith(("http://", "https://")):
            raise BadReply(self.device, "CreatePullPointSubscription",
                           "the subscription address is not an http URL")
        cam.xaddrs[_PULLPOINT_NS] = cam.rewrite_url(address)

        async def services() -> tuple[Any, Any]:
            return (await cam.create_pullpoint_service(),
                    await cam.create_subscription_service("PullPointSubscription"))

        self._pullpoint, self._subscription = await self._call("CreatePullPointSubscription",
                                                               services())
        return PullPoint(redact_url(address),
                         _lifetime(reply.CurrentTime, reply.TerminationTime, termination_s))

    async def pull(self, timeout_s: float, limit: int, deadline_s: float | None = None) -> Any:
        """One PullMessages (long poll of `timeout_s`); `deadline_s` overrides the time
        allowed for the whole call (default: timeout_s + timeout_s of the options)."""
        if self._pullpoint is None:
            raise BadReply(self.device, "PullMessages", "no subscription")
        reply = await self._call("PullMessages", self._pullpoint.PullMessages(
            {"Timeout": dt.timedelta(seconds=timeout_s), "MessageLimit": limit}),
            deadline_s or timeout_s + self.timeout_s)
        if reply is None or getattr(reply, "CurrentTime", None) is None:
            # zeep gives None (or an empty object) for a Body that is not a
            # PullMessagesResponse; CurrentTime is mandatory in a real one
            raise BadReply(self.device, "PullMessages", "the reply is not a "
                           "PullMessagesResponse", "the camera's event service answers "
                           "something else; see the camera's log or firmware")
        return reply

    async def renew(self, termination_s: float) -> float:
        """Renew the subscription; returns its new lifetime in seconds."""
        if self._subscription is None:
            raise BadReply(self.device, "Renew", "no subscription")
        reply = await self._call("Renew", self._subscription.Renew(
            {"TerminationTime": f"PT{int(termination_s)}S"}))
        return _lifetime(getattr(reply, "CurrentTime", None),
                         getattr(reply, "TerminationTime", None), termination_s)

    async def unsubscribe(self) -> None:
        sub, self._subscription, self._pullpoint = self._subscription, None, None
        if sub is not None:
            # a courtesy: the subscription expires on the camera anyway
            with contextlib.suppress(OnvifError):
                await self._call("Unsubscribe", sub.Unsubscribe(), 3)
