"""A camera worker process: runs some cameras' `OnvifDriver` and reports over one socket.

Forked by the worker template (`template.py`, which calls `main([fd])`) or, for a lone
worker, started by `host.CameraHost` as `python -c ... <fd>`; either way with one end of
a socketpair as file descriptor `fd`. The agent sends one `start` frame (worker_proto);
the worker then runs the ONVIF client (zeep/lxml/aiohttp) and the OpenCV video health of
its cameras, and sends back what a driver hands its sink (events, device states, poll
errors) plus a heartbeat every `heartbeat_s`. Only the camera processes (the workers and
their template) import cv2, numpy, zeep and lxml: a decoder that crashes or wedges takes
down this process, never the agent, which restarts it. The worker ends when the agent's
end closes (the agent stopped or died) and on any frame it cannot parse; it ignores
SIGTERM and SIGINT, which a service stop or Ctrl-C sends to the agent's whole cgroup or
process group (the agent stops it). Logs go to the inherited stderr (the agent's
journal), as JSON.

`fault` in `start` (tests only): `abort` calls os.abort(), `hang` blocks the event
loop forever and `garbage` sends a frame that is not JSON, `fault_after_s` after the
start and once the file `fault_file` exists when one is named.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from typing import Any

from edge_agent.contract.envelope import Severity
from edge_agent.contract.logs import get_logger
from edge_agent.sdk.api import DeviceState, OpenAlarm
from edge_agent.sdk.config import ChatterConfig, SnapshotsConfig

from .child import start_child
from .options import OnvifCamera
from .worker_proto import (
    HEADER,
    TO_WORKER,
    ProtocolError,
    decode_body,
    encode,
    header_length,
)

__all__ = ["PipeSink", "main"]

log = get_logger("drivers.onvif.worker")


def rss_kib() -> int:
    """This process's resident set (KiB), from /proc (no psutil in the worker)."""
    with contextlib.suppress(OSError, ValueError, IndexError), \
            open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class PipeSink:
    """The worker's EventSink: every report becomes one frame to the agent."""

    def __init__(self, writer: asyncio.StreamWriter, start: dict[str, Any]) -> None:
        self._writer = writer
        self.credential_salt = bytes.fromhex(str(start.get("salt", "")))
        snaps = start.get("snapshots")
        self.snapshots: SnapshotsConfig | None = (
            SnapshotsConfig.model_validate_json(snaps) if isinstance(snaps, str) else None)
        self.alarm_chatter: ChatterConfig | None = None
        self._restore: dict[str, list[OpenAlarm]] = {}
        for cam in start.get("cameras", []):
            self._restore[cam["id"]] = [OpenAlarm(a["type"], a["alarm_id"], dict(a["data"]))
                                        for a in cam.get("restore", [])]

    def _send(self, message: dict[str, Any]) -> None:
        if not self._writer.is_closing():
            self._writer.write(encode(message))

    def emit(self, device: str, type_: str, data: dict[str, Any], *,
             severity: Severity | None = None, observed_at: float | None = None) -> None:
        self._send({"t": "emit", "dev": device, "type": type_, "data": data,
                    "sev": severity.value if severity is not None else None,
                    "at": observed_at if observed_at is not None else time.time()})

    def device_state(self, device: str, state: DeviceState, reason: str = "") -> None:
        self._send({"t": "state", "dev": device, "state": state.value, "reason": reason})

    def restored_alarms(self, device: str) -> list[OpenAlarm]:
        return self._restore.pop(device, [])

    def poll_error(self, device: str, reason: str) -> None:
        self._send({"t": "poll_error", "dev": device, "reason": reason})

    def chatter_toggles(self, device: str, suppressed: int) -> None:
        self._send({"t": "chatter", "dev": device, "n": suppressed})


async def _read_start(reader: asyncio.StreamReader) -> dict[str, Any]:
    length = header_length(await reader.readexactly(HEADER.size))
    return decode_body(await reader.readexactly(length), TO_WORKER)


async def _heartbeat(sink: PipeSink, every_s: float, cameras: int) -> None:
    while True:
        sink._send({"t": "hb", "rss_kib": rss_kib(), "cameras": cameras})
        await asyncio.sleep(every_s)


async def _fault(kind: str, after_s: float, when: str, sink: PipeSink) -> None:
    await asyncio.sleep(after_s)
    while when and not await asyncio.to_thread(os.path.exists, when):  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # tests only: poll the trigger file
    log.warning("camera_worker_fault_injected", fault=kind)
    if kind == "abort":
        os.abort()
    if kind == "garbage":  # a frame that is no JSON: the agent must restart us
        sink._writer.write(HEADER.pack(9) + b"not json!")
    if kind == "hang":
        while True:  # the event loop wedged on purpose: no heartbeat any more
            time.sleep(3600)  # noqa: ASYNC251


async def serve(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_connection(sock=sock)
    start = await _read_start(reader)
    cameras = [OnvifCamera.model_validate_json(c["config"]) for c in start["cameras"]]
    sink = PipeSink(writer, start)
    from .driver import OnvifDriver  # the ONVIF client and OpenCV: here only

    driver = OnvifDriver(cameras, sink)
    tasks = [asyncio.create_task(driver.run()),
             asyncio.create_task(_heartbeat(sink, float(start.get("heartbeat_s", 2.0)),
                                            len(cameras)))]
    if start.get("fault"):
        tasks.append(asyncio.create_task(_fault(str(start["fault"]),
                                                float(start.get("fault_after_s", 0.0)),
                                                str(start.get("fault_file", "")), sink)))
    log.info("camera_worker_started", worker=start.get("worker"), pid=os.getpid(),
             cameras=[c.id for c in cameras])
    try:
        # Anything from the agent after `start`, or its end closing, ends the worker.
        await reader.read(1)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    sock = start_child(args[0])
    try:
        asyncio.run(serve(sock))
    except ConnectionError:  # the agent closed its end while we were writing: stopping
        log.info("camera_worker_agent_gone")
    except (ProtocolError, asyncio.IncompleteReadError, KeyError, TypeError,
            ValueError) as exc:
        log.error("camera_worker_bad_start", error=type(exc).__name__, detail=str(exc)[:200])
        raise SystemExit(3) from None
