"""SOAP replies read bounded, HTTP error pages reported by their status.

onvif-zeep-async's aiohttp transport reads each reply whole (`response.read()`) before
zeep looks at it: a camera could hand the worker (shared with other cameras) any
amount of memory. `guard_replies()` replaces the transport's POST so that a reply is
read at most `MAX_REPLY_BYTES` + 1 bytes (a larger Content-Length is refused unread)
and raises `ReplyTooLarge`; and an HTTP error status (4xx/5xx) whose body is no SOAP
envelope (an HTML or plain-text error page) raises `HttpErrorPage` with that status,
before zeep would report the page as a DTD, an unknown fault or bad XML.
"""

from __future__ import annotations

from typing import Any

from .xmlsafe import MAX_XML_BYTES

__all__ = ["MAX_REPLY_BYTES", "HttpErrorPage", "ReplyTooLarge", "guard_replies"]

#: A SOAP reply larger than this is refused as it streams in (the limit of xmlsafe).
MAX_REPLY_BYTES = MAX_XML_BYTES
_CHUNK = 64 * 1024
#: the SOAP Envelope start tag appears within this many bytes of a SOAP reply
_ENVELOPE_WITHIN = 4096


class ReplyTooLarge(ValueError):
    """The camera's reply is larger than MAX_REPLY_BYTES (not read further)."""

    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(f"reply of more than {MAX_REPLY_BYTES} bytes (at least {size})")


class HttpErrorPage(ValueError):
    """An HTTP error status whose body is not a SOAP envelope."""

    def __init__(self, status: int, reason: str) -> None:
        self.status, self.reason = status, reason
        super().__init__(f"HTTP {status} {reason}".strip())


def _is_soap(content: bytes) -> bool:
    return b"Envelope" in content[:_ENVELOPE_WITHIN]


async def read_bounded(response: Any) -> bytes:
    """The body of an aiohttp response, at most MAX_REPLY_BYTES, else ReplyTooLarge."""
    declared = response.content_length or 0
    if declared > MAX_REPLY_BYTES:
        response.close()
        raise ReplyTooLarge(declared)
    data = bytearray()
    while len(data) <= MAX_REPLY_BYTES:
        chunk = await response.content.read(min(_CHUNK, MAX_REPLY_BYTES + 1 - len(data)))
        if not chunk:
            break
        data += chunk
    if len(data) > MAX_REPLY_BYTES:
        response.close()
        raise ReplyTooLarge(len(data))
    response.release()
    if response.status >= 400 and not _is_soap(bytes(data)):
        raise HttpErrorPage(response.status, response.reason or "")
    return bytes(data)


def guard_replies() -> bool:
    """Install the bounded POST on the library's transport; idempotent. False when this
    onvif-zeep-async has no such transport method (then replies are read unbounded)."""
    from aiohttp import ClientConnectionError
    from onvif.zeep_aiohttp import AIOHTTPTransport

    original: Any = getattr(AIOHTTPTransport, "_post_internal", None)
    if original is None:
        return False
    if getattr(original, "_bounded", False):
        return True

    async def _post_internal(self: Any, address: str, message: str | bytes,
                             headers: dict[str, str]) -> tuple[Any, bytes]:
        headers = headers or {}
        headers.setdefault("Content-Type", 'text/xml; charset="utf-8"')
        data = message.encode("utf-8") if isinstance(message, str) else message
        try:
            response = await self.session.post(address, data=data, headers=headers,
                                               proxy=self.proxy,
                                               timeout=self._client_timeout)
            return response, await read_bounded(response)
        except RuntimeError as exc:
            if self.session.closed:
                raise ClientConnectionError(f"Failed to post to {address}: {exc}") from exc
            raise

    _post_internal._bounded = True  # type: ignore[attr-defined]
    setattr(AIOHTTPTransport, "_post_internal", _post_internal)  # noqa: B010
    return True
