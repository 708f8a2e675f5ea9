"""`edge-agent discover cameras`: WS-Discovery Probe to a configured target, YAML out.

The probe goes only where it is told: a unicast `HOST:PORT` (or a last-octet range,
`192.168.10.20-40:3702`, one probe per address). The multicast group
239.255.255.250:3702 is used only with `multicast=True` (the `--multicast` flag).
Replies are parsed with `wsdiscovery.parse_probe_matches` (no DTD, no entities, 64 KiB)
and must relate to our probe. The output is ready-to-paste `devices:` YAML, with a
password *reference*, never a password.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from edge_agent.contract.logs import get_logger

from .notifications import one_line
from .wsdiscovery import MAX_DATAGRAM, ProbeMatch, build_probe, parse_probe_matches
from .xmlsafe import HostileXml

__all__ = ["MULTICAST", "DiscoveryError", "Target", "discover", "parse_target", "to_yaml"]

log = get_logger("drivers.onvif.discovery")

MULTICAST = ("239.255.255.250", 3702)
#: Distinct cameras kept from one discovery (replies are untrusted datagrams).
MAX_FOUND = 1024
_TARGET = re.compile(r"^(?P<host>\d{1,3}(?:\.\d{1,3}){3})(?:-(?P<last>\d{1,3}))?"
                     r":(?P<port>\d{1,5})$")
_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class DiscoveryError(ValueError):
    """A target that cannot be probed; the message says how to write it."""


@dataclass(frozen=True)
class Target:
    hosts: tuple[str, ...]
    port: int

    @property
    def is_multicast(self) -> bool:
        return any(ipaddress.ip_address(h).is_multicast for h in self.hosts)

    @property
    def is_loopback(self) -> bool:
        return all(ipaddress.ip_address(h).is_loopback for h in self.hosts)


def parse_target(text: str, *, multicast: bool = False) -> Target:
    m = _TARGET.match(text.strip())
    if not m:
        raise DiscoveryError(f"`{text}` is not HOST:PORT or A.B.C.D-E:PORT (IPv4), e.g. "
                             "192.168.10.31:3702 or 192.168.10.20-40:3702")
    try:
        first = ipaddress.IPv4Address(m["host"])
    except ValueError:
        raise DiscoveryError(f"`{m['host']}` is not an IPv4 address") from None
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise DiscoveryError(f"port {port} is out of range")
    if m["last"] is None:
        hosts: tuple[str, ...] = (str(first),)
    else:
        last = int(m["last"])
        start = int(str(first).rsplit(".", 1)[1])
        if not start <= last <= 255 or last - start > 255:
            raise DiscoveryError(f"range {start}-{last}: the last octet must not go down or "
                                 "past 255")
        prefix = str(first).rsplit(".", 1)[0]
        hosts = tuple(f"{prefix}.{i}" for i in range(start, last + 1))
    target = Target(hosts, port)
    if target.is_multicast and not multicast:
        raise DiscoveryError(f"{text} is a multicast group; add --multicast to send there")
    return target


class _Collector(asyncio.DatagramProtocol):
    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.found: dict[str, ProbeMatch] = {}
        self.refused = 0
        #: errors of sendto() itself (asyncio hands them to error_received, not the caller)
        self.sending = False
        self.send_errors: list[OSError] = []

    def error_received(self, exc: Exception) -> None:
        if self.sending and isinstance(exc, OSError):
            self.send_errors.append(exc)
        # later ones (an ICMP "port unreachable" from an address without a camera) are
        # what a scan expects

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(data) > MAX_DATAGRAM:
            return
        try:
            matches = parse_probe_matches(data, self.message_id)
        except HostileXml as exc:
            self.refused += 1
            log.warning("discovery_reply_refused", sender=str(addr[0]), reason=str(exc))
            return
        for match in matches:
            if len(self.found) < MAX_FOUND:
                self.found.setdefault(match.xaddr, match)


async def discover(target: Target, timeout_s: float = 2.0, *,
                   bind: str | None = None) -> list[ProbeMatch]:
    """Probe `target`; the distinct matches that answered within `timeout_s`."""
    loop = asyncio.get_running_loop()
    message_id, probe = build_probe()
    local = bind or ("127.0.0.1" if target.is_loopback else "0.0.0.0")
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Collector(message_id), local_addr=(local, 0))
    try:
        proto.sending = True
        for host in target.hosts:
            transport.sendto(probe, (host, target.port))
        proto.sending = False
        if proto.send_errors and len(proto.send_errors) == len(target.hosts):
            raise proto.send_errors[0]  # not one probe left: say why, not "0 answered"
        if proto.send_errors:
            log.warning("discovery_probes_not_sent", probes=len(target.hosts),
                        not_sent=len(proto.send_errors),
                        reason=proto.send_errors[0].strerror or str(proto.send_errors[0]))
        await asyncio.sleep(timeout_s)
    finally:
        transport.close()
    log.info("discovery_done", probes=len(target.hosts), found=len(proto.found),
             refused=proto.refused)
    return sorted(proto.found.values(), key=lambda m: (m.host, m.port))


def _device_id(match: ProbeMatch, used: set[str]) -> str:
    base = _ID_CHARS.sub("-", match.scope("name")).strip("-._").lower()[:40]
    if not base:
        base = f"cam-{match.host.replace('.', '-')}-{match.port}"
    candidate, n = base, 2
    while candidate in used:
        candidate, n = f"{base}-{n}", n + 1
    used.add(candidate)
    return candidate


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML): no injection."""
    return json.dumps(text, ensure_ascii=False)


def to_yaml(matches: list[ProbeMatch], username: str = "admin",
            secrets_dir: str = "/etc/edge-agent/secrets") -> str:
    """`devices:` entries for the matches (paste under a gateway config)."""
    if not matches:
        return "# no ONVIF camera answered\ndevices: []\n"
    used: set[str] = set()
    lines = ["# ONVIF cameras found by `edge-agent discover cameras`; review before use.",
             "devices:"]
    for m in matches:
        device = _device_id(m, used)
        name = one_line(m.scope("name")).strip()[:100]  # percent-decoded: may hold newlines
        hardware = one_line(m.scope("hardware")).strip()[:60]
        lines += [f"  - id: {device}",
                  "    driver: onvif",
                  *([f"    name: {_quoted(name)}"] if name else []),
                  f"    host: {_quoted(m.host)}",
                  f"    port: {m.port}",
                  f"    username: {_quoted(username)}",
                  f"    password: {{file: {_quoted(f'{secrets_dir}/{device}.password')}}}",
                  *([f"    # hardware: {hardware}"] if hardware else [])]
    return "\n".join(lines) + "\n"
