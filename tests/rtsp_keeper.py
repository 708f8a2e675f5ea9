"""`Keeper`: a minimal RTSP client (standard library only) that plays one stream over the
RTSP connection (RTP/AVP/TCP interleaved) and drops what it receives.

tests/rtsp_server.py runs one per mount before it says `ready` (see there why: a fresh
shared media aborts gst-rtsp-server 1.22 when several clients PLAY it at once); the tests
use it as a client that really starts at the same moment as others, which OpenCV cannot
do (it serialises opens in a process).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time

__all__ = ["Keeper"]


class Keeper(threading.Thread):
    """Plays rtsp://127.0.0.1:PORT/PATH and drops what it gets until `close()`; `flowing`
    is set once the first RTP packet came or it failed (`failed` then says why)."""

    KEEPALIVE_S = 20.0  # an OPTIONS this often: the session never times out (60 s)

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}{path}"
        self.flowing = threading.Event()
        self.failed = ""
        self._cseq = 0
        self._buffer = b""
        self._sock: socket.socket | None = None

    def close(self) -> None:
        """End the session from another thread (its reading stops with the socket)."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        try:
            self._play()
        except (OSError, ValueError) as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            self.flowing.set()

    def _play(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            self._sock = sock
            headers, sdp = self._request(sock, "DESCRIBE", self.url, "Accept: application/sdp")
            base = headers.get("content-base", self.url).rstrip("/")
            control = re.search(r"^a=control:(\S+)", sdp.split("m=", 1)[-1], re.M)
            track = control.group(1) if control else ""
            track_url = track if "://" in track else f"{base}/{track}" if track else base
            headers, _ = self._request(sock, "SETUP", track_url,
                                       "Transport: RTP/AVP/TCP;unicast;interleaved=0-1")
            session = headers.get("session", "").split(";")[0]
            if not session:
                raise ValueError("SETUP answered without a session")
            self._request(sock, "PLAY", self.url, f"Session: {session}")
            sock.settimeout(None)
            last = time.monotonic()
            while True:
                if not self._buffer:
                    self._buffer = sock.recv(65536)
                    if not self._buffer:
                        raise OSError("the server closed the keeper's connection")
                if self._buffer[:1] == b"$":
                    self.flowing.set()
                self._buffer = b""  # dropped: interleaved RTP and OPTIONS answers alike
                if time.monotonic() - last > self.KEEPALIVE_S:
                    self._send(sock, "OPTIONS", self.url, f"Session: {session}")
                    last = time.monotonic()

    def _send(self, sock: socket.socket, method: str, url: str, extra: str) -> None:
        self._cseq += 1
        sock.sendall(f"{method} {url} RTSP/1.0\r\nCSeq: {self._cseq}\r\n{extra}\r\n"
                     "User-Agent: rtsp_server-keeper\r\n\r\n".encode())

    def _request(self, sock: socket.socket, method: str, url: str,
                 extra: str) -> tuple[dict[str, str], str]:
        """Send one request, read its answer (headers, body); any status but 200 raises."""
        self._send(sock, method, url, extra)
        while b"\r\n\r\n" not in self._buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError(f"connection closed during {method}")
            self._buffer += chunk
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError(f"connection closed during {method}")
            rest += chunk
        self._buffer = rest[length:]
        if " 200 " not in lines[0] + " ":
            raise ValueError(f"{method} answered {lines[0]!r}")
        return headers, rest[:length].decode("latin-1")
