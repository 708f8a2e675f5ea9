"""Why a stream did not open: ask the camera the way a player would, read its answer.

OpenCV only says "could not open". `why_not_open` connects to the stream's host and
asks for the stream itself (HTTP GET, RTSP DESCRIBE), answering the camera's own
challenge (Digest, or Basic when the camera asks for it) with the URL's credentials,
and turns the answer into a plain reason: refused credentials, no such path, HTTP/RTSP
503 (busy), a connection that stays silent (stalled), or a stream that answers but
cannot be decoded (codec). Blocking: run it in a worker thread. Never returns a secret.
"""

from __future__ import annotations

import hashlib
import re
import socket
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["why_not_open"]

#: The probe waits at most this long for an answer (it runs in the shared opener thread).
PROBE_MAX_S = 3.0
_STATUS = re.compile(rb"^(?:RTSP|HTTP)/\d\.\d (\d{3})(?: ([^\r\n]*))?")


def _plain(url: str) -> tuple[str, str | None, str | None]:
    """The URL without user info, and the user and password it held."""
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), user, password


def _status_reason(kind: str, status: int, text: str, has_user: bool, safe: str) -> str:
    if status in (401, 403):
        return (f"{kind} {status}: the camera refused the stream's username or password"
                if has_user else f"{kind} {status}: the stream wants credentials (set "
                "username and password)")
    if status == 404:
        return f"{kind} 404: the camera has no stream at {safe} (wrong path)"
    if status == 503:
        return (f"{kind} 503 {text}: the camera cannot serve the stream now (busy, too many "
                "viewers or starting)").replace("  ", " ")
    if 200 <= status < 300:
        return (f"the camera serves {safe} ({kind} {status}) but its video could not be "
                "decoded (codec?)")
    return f"{kind} {status} {text}".strip() + f" for {safe}"


def _silent(timeout_s: float) -> str:
    return (f"the camera accepted the connection but sent nothing in {timeout_s:g} s "
            "(stream stalled)")


def _http(url: str, timeout_s: float, safe: str) -> str:
    plain, user, password = _plain(url)
    handlers: list[urllib.request.BaseHandler] = []
    if user:
        manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        manager.add_password(None, plain, user, password or "")
        handlers = [urllib.request.HTTPDigestAuthHandler(manager),
                    urllib.request.HTTPBasicAuthHandler(manager)]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(plain), timeout=timeout_s) as reply:
            return _status_reason("HTTP", reply.status, reply.reason, bool(user), safe)
    except urllib.error.HTTPError as exc:
        return _status_reason("HTTP", exc.code, str(exc.reason or ""), bool(user), safe)
    except TimeoutError:
        return _silent(timeout_s)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        cause = getattr(exc, "reason", exc)
        if isinstance(cause, TimeoutError):
            return _silent(timeout_s)
        return f"cannot open stream {safe}: {str(cause)[:120]}"


def _rtsp_answer(sock: socket.socket) -> tuple[int, str, dict[str, str]]:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 16384:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    match = _STATUS.match(data)
    if match is None:
        raise ValueError("not an RTSP answer")
    headers: dict[str, str] = {}
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return int(match.group(1)), (match.group(2) or b"").decode("latin-1")[:80], headers


def _digest(challenge: str, user: str, password: str, uri: str) -> str:
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    realm, nonce = fields.get("realm", ""), fields.get("nonce", "")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    response = md5(f"{md5(f'{user}:{realm}:{password}')}:{nonce}:{md5(f'DESCRIBE:{uri}')}")
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}"')


def _rtsp(url: str, host: str, port: int, timeout_s: float, safe: str) -> str:
    import base64

    plain, user, password = _plain(url)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            request = f"DESCRIBE {plain} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n"
            sock.sendall((request + "\r\n").encode())
            status, text, headers = _rtsp_answer(sock)
            challenge = headers.get("www-authenticate", "")
            if status == 401 and user:
                if challenge.lower().startswith("digest"):
                    auth = _digest(challenge, user, password or "", plain)
                else:  # Basic only because the camera asked for it
                    auth = "Basic " + base64.b64encode(
                        f"{user}:{password or ''}".encode()).decode()
                sock.sendall(f"DESCRIBE {plain} RTSP/1.0\r\nCSeq: 2\r\nAccept: "
                             f"application/sdp\r\nAuthorization: {auth}\r\n\r\n".encode())
                status, text, headers = _rtsp_answer(sock)
    except TimeoutError:
        return _silent(timeout_s)
    except (OSError, ValueError) as exc:
        return f"cannot open stream {safe}: {str(exc)[:120] or type(exc).__name__}"
    return _status_reason("RTSP", status, text, bool(user), safe)


def why_not_open(url: str, host: str, port: int, timeout_s: float, safe: str) -> str:
    """A plain reason why `url` (credentials inside, never echoed) gives no video; `safe`
    is the URL as it may be shown."""
    timeout_s = min(timeout_s, PROBE_MAX_S)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "http":
        return _http(url, timeout_s, safe)
    if scheme == "rtsp":
        return _rtsp(url, host, port, timeout_s, safe)
    return (f"cannot open stream {safe}: the camera answers on {host}:{port} but no video "
            "came (check path, credentials and codec)")

