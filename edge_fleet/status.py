"""Each box's `/api/status`, fetched through its SSH connection (direct-tcpip).

The agent's status page listens on the box; the maintainer reaches it without opening
any port: an SSH channel to 127.0.0.1:`status_port` on the box, a plain HTTP/1.1 GET with
`Connection: close`, the answer read up to `MAX_STATUS_BYTES`. The box is not trusted:
a non-200 answer, a body that is not a JSON object or is too big is that gateway's error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from edge_fleet.inventory import Gateway, SshOptions
from edge_fleet.outcome import clean
from edge_fleet.ssh import SshFailure, connect

MAX_STATUS_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class StatusResult:
    gateway: str
    address: str
    ok: bool
    seconds: float
    error: str = ""
    status: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The few figures the table shows (missing ones as None)."""
        def part(name: str) -> dict[str, Any]:
            value = self.status.get(name)
            return value if isinstance(value, dict) else {}

        summary, uplink, outbox, gw = (part(n) for n in ("summary", "uplink", "outbox",
                                                         "gateway"))
        return {"version": gw.get("version"), "uptime_s": gw.get("uptime_s"),
                "uplink": uplink.get("connected"), "outbox_events": outbox.get("events"),
                "devices": summary.get("devices"), "online": summary.get("online"),
                "open_alarms": summary.get("open_alarms")}

    def as_json(self) -> dict[str, Any]:
        return {"gateway": self.gateway, "address": self.address, "ok": self.ok,
                "seconds": round(self.seconds, 3), "error": self.error, "status": self.status}


def parse_http(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status code, headers (lowercased names) and body of an HTTP/1.1 response read
    to the end (`Connection: close`); chunked bodies are decoded. ValueError if malformed."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no complete HTTP header")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {clean(lines[0], 60)}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(body) < length:
            raise ValueError("the body ended early")
        body = body[:length]
    return int(parts[1]), headers, body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            raise ValueError("bad chunked body")
        size = int(size_line.split(b";")[0].strip() or b"x", 16)
        if size == 0:
            return bytes(out)
        out.extend(data[:size])
        data = data[size + 2:]


async def fetch_status(conn: asyncssh.SSHClientConnection, port: int,
                       limit: int = MAX_STATUS_BYTES) -> dict[str, Any]:
    """GET /api/status on the box's 127.0.0.1:`port`, through `conn`."""
    reader, writer = await conn.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Accept: application/json\r\nConnection: close\r\n"
                     "User-Agent: edge-fleet\r\n\r\n".encode())
        raw = bytearray()
        while chunk := await reader.read(65536):
            raw.extend(chunk)
            if len(raw) > limit:
                raise ValueError(f"answer larger than {limit} bytes")
    finally:
        writer.close()
    code, _headers, body = parse_http(bytes(raw))
    if code != 200:
        raise ValueError(f"HTTP {code}: {clean(body.decode('utf-8', 'replace'), 100)}")
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the status is not a JSON object")
    return data


async def status_one(gw: Gateway, ssh: SshOptions) -> StatusResult:
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(ssh.gateway_timeout_s):
            conn = await connect(gw, ssh)
            async with conn:
                data = await fetch_status(conn, gw.status_port)
        return StatusResult(gw.id, gw.address, True, time.monotonic() - t0, status=data)
    except SshFailure as exc:
        error = str(exc)
    except asyncssh.ChannelOpenError as exc:
        error = (f"nothing answers on the box's 127.0.0.1:{gw.status_port} ({clean(exc.reason)}; "
                 "hint: is edge-agent running with status_page enabled? set `status_port`)")
    except TimeoutError:
        error = f"no status within {ssh.gateway_timeout_s:g}s"
    except (ValueError, asyncssh.Error, OSError) as exc:
        text = exc.reason if isinstance(exc, asyncssh.Error) else str(exc)
        error = f"bad status answer: {clean(text)}"
    return StatusResult(gw.id, gw.address, False, time.monotonic() - t0, error=error)


async def status_many(gateways: Sequence[Gateway], ssh: SshOptions,
                      parallel: int) -> list[StatusResult]:
    gate = asyncio.Semaphore(max(1, parallel))

    async def one(gw: Gateway) -> StatusResult:
        async with gate:
            return await status_one(gw, ssh)

    return list(await asyncio.gather(*(one(g) for g in gateways)))
