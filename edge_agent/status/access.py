"""Who may see what: the Host header allow-list and the per-gateway credential.

Host check (against DNS rebinding): a request is served only if its Host names this
box: an IP literal equal to the address the connection arrived on (what a staff member
types: `http://192.168.1.20:8080/`), a loopback address, `localhost`, the machine's
hostname or `<hostname>.local`, or an entry of `status_page.allowed_hosts`
(`*.example.org` matches its subdomains).

Credential: `status_page.credential` (a SecretRef). A browser logs in once (POST /login)
and gets an HttpOnly, SameSite=Strict session cookie with a random token (kept in memory
only); machines may send `Authorization: Bearer <credential>` or Basic with it as the
password. Without a configured credential nothing sensitive is served at all.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable

SESSION_COOKIE = "edge_agent_session"
SESSION_TTL_S = 12 * 3600
SESSIONS_MAX = 64


def split_host(header: str) -> str:
    """The host part of a Host header, lowercased, without port or trailing dot."""
    host = header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else ""
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class HostPolicy:
    def __init__(self, allowed: Iterable[str], *, hostname: str | None = None) -> None:
        name = (hostname if hostname is not None else socket.gethostname()).lower()
        self.names = {"localhost", name, f"{name}.local"} - {"", ".local"}
        self.patterns: list[str] = []
        self.ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for entry in allowed:
            host = split_host(entry)
            ip = _ip(host)
            if ip is not None:
                self.ips.add(ip)
            elif host.startswith("*."):
                self.patterns.append(host[1:])
            else:
                self.names.add(host)

    def allows(self, header: str | None, local_addr: str | None) -> bool:
        """Whether `header` (the request's Host) names this box; `local_addr`: the address
        the connection arrived on (the socket's own address)."""
        if not header:
            return False
        host = split_host(header)
        ip = _ip(host)
        if ip is not None:
            local = _ip(local_addr) if local_addr else None
            return ip.is_loopback or ip in self.ips or (local is not None and ip == local)
        return host in self.names or any(host.endswith(p) for p in self.patterns)


class Credential:
    """The per-gateway secret and the browser sessions opened with it."""

    def __init__(self, secret: str | None) -> None:
        self._secret = secret.encode() if secret else None
        self._sessions: OrderedDict[str, float] = OrderedDict()

    @property
    def configured(self) -> bool:
        return self._secret is not None

    def matches(self, candidate: str) -> bool:
        if self._secret is None:
            return False
        return hmac.compare_digest(candidate.encode(), self._secret)

    def open_session(self) -> str:
        token = secrets.token_urlsafe(32)
        self._sessions[token] = time.monotonic() + SESSION_TTL_S
        while len(self._sessions) > SESSIONS_MAX:
            self._sessions.popitem(last=False)
        return token

    def close_session(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)

    def session_valid(self, token: str | None) -> bool:
        if not token or self._secret is None:
            return False
        expiry = self._sessions.get(token)
        if expiry is None:
            return False
        if expiry < time.monotonic():
            del self._sessions[token]
            return False
        return True

    def authorization_valid(self, header: str | None) -> bool:
        """`Authorization: Bearer <secret>` or `Basic base64(any-user:<secret>)`."""
        if not header or self._secret is None:
            return False
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            return self.matches(value.strip())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            return self.matches(decoded.partition(":")[2])
        return False
