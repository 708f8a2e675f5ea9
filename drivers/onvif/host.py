"""`CameraHost`: the agent's ONVIF driver; the cameras run in supervised worker processes.

The agent process never imports the ONVIF client (zeep, lxml, aiohttp) nor OpenCV/numpy:
`plan_groups` splits the cameras into groups of `process.cameras_per_worker`, and each
group runs in its own worker process (`camera_process`), started with one end of a
socketpair and spoken to in `worker_proto` frames. The worker sends events, device
states and poll errors (handed on to the agent's sink as if a driver in this process had
reported them) and a heartbeat every `process.heartbeat_s`. Two or more workers are
forked by one template process that imported their code once (`template_client`,
`template`), so they share that base copy-on-write; a single worker, or all of them
when the template cannot start (logged as `camera_template_unavailable`), is a fresh
interpreter as before. A template that dies takes its workers with it: they are
restarted like any dead worker, from a new one.

A worker that exits or is killed (a decoder segfault, os.abort, the OOM killer), sends a
frame that breaks the protocol, or says nothing for `process.heartbeat_timeout_s` (a
wedged event loop: it is killed) is restarted after a back-off (`restart_initial_s`
doubling up to `restart_max_s`, reset once a worker ran for `restart_max_s`), and each
of its cameras gets one `camera.video_worker_restarted` event. The alarms its cameras
had open are handed to the new worker, which goes on with them under the same ids. The
agent itself never stops for a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_agent.contract.backoff import Backoff
from edge_agent.contract.envelope import Severity
from edge_agent.contract.logs import configured_level, get_logger
from edge_agent.sdk.api import DeviceState, EventSink, OpenAlarm
from edge_agent.sdk.config import DeviceConfig, SnapshotsConfig

from .options import OnvifCamera, ProcessOptions
from .template_client import (
    SINGLE_THREADED,
    ForkedWorker,
    TemplateGone,
    TemplateUnavailable,
    WorkerTemplate,
    exit_reason,
    python_c,
)
from .worker_proto import (
    FROM_WORKER,
    HEADER,
    WORKER_LOG_LEVEL,
    ProtocolError,
    decode_body,
    encode,
    header_length,
)

__all__ = ["CameraHost", "WorkerGroup", "exit_reason", "plan_groups"]

log = get_logger("drivers.onvif.host")

RESTARTED = "camera.video_worker_restarted"
#: How long a stopping worker gets to unsubscribe and close its streams before SIGKILL.
STOP_GRACE_S = 8.0
#: From this many workers on, a template forks them (one worker: its own interpreter).
MIN_FORKED_WORKERS = 2


def plan_groups(cameras: Sequence[OnvifCamera], per_worker: int) -> list[list[OnvifCamera]]:
    """Cameras in configuration order, `per_worker` to a group (the last one smaller)."""
    return [list(cameras[i:i + per_worker]) for i in range(0, len(cameras), per_worker)]


def worker_env() -> dict[str, str]:
    """The agent's environment, plus glibc malloc limited to 2 arenas (a value already set
    is kept): each decoding thread would otherwise get its own arena, and their
    fragmentation cost ~MiB per camera (docs/benchmarks.md); the agent's log level
    (`log_level` of the gateway YAML; a value already set is kept); and no BLAS thread pool
    (`SINGLE_THREADED`, always): the template must have one thread when it forks, and a
    worker started on its own is then the same as a forked one."""
    return {**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),
            **SINGLE_THREADED, WORKER_LOG_LEVEL: os.environ.get(WORKER_LOG_LEVEL,
                                                                configured_level())}


class _Worker(Protocol):
    """A worker process: a direct child (asyncio's Process) or a `ForkedWorker`."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def kill(self) -> None: ...
    async def wait(self) -> int | None: ...


@dataclass
class WorkerGroup:
    """One worker process and its cameras (pid, restarts, rss_kib: what tests read)."""

    index: int
    cameras: list[OnvifCamera]
    options: ProcessOptions
    pid: int | None = None
    restarts: int = 0
    rss_kib: int = 0
    last_heartbeat: float = 0.0
    fault: str = ""
    fault_after_s: float = 0.0
    fault_file: str = ""
    ids: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        self.ids = frozenset(c.id for c in self.cameras)


class CameraHost:
    """All ONVIF cameras of a gateway, in worker processes. `template`: None (a
    `WorkerTemplate` forks the workers when there are two or more: with one worker the
    template's own copy costs more than it saves, docs/benchmarks.md), True (always),
    False (never: a fresh interpreter per worker) or a template of the caller's.
    `fault` (tests only) is handed to the first start of worker 0 (`abort` or `hang`,
    `fault_after_s` later and once `fault_file` exists, if named)."""

    def __init__(self, devices: Sequence[DeviceConfig], sink: EventSink, *,
                 snapshots: SnapshotsConfig | None = None, fault: str = "",
                 fault_after_s: float = 0.5, fault_file: Path | None = None,
                 template: bool | WorkerTemplate | None = None) -> None:
        cams: list[OnvifCamera] = []
        for dev in devices:
            assert isinstance(dev, OnvifCamera), "validated by the agent"
            cams.append(dev)
        self.sink = sink
        self.snapshots = snapshots or sink.snapshots
        options = cams[0].process if cams else ProcessOptions()
        self.groups = [WorkerGroup(i, group, options)
                       for i, group in enumerate(plan_groups(cams, options.cameras_per_worker))]
        if self.groups and fault:
            first = self.groups[0]
            first.fault, first.fault_after_s = fault, fault_after_s
            first.fault_file = str(fault_file or "")
        #: alarms open per camera, handed to a restarted worker: id -> alarm
        self.open: dict[str, dict[str, OpenAlarm]] = {
            c.id: {a.alarm_id: a for a in sink.restored_alarms(c.id)} for c in cams}
        if template is None:
            template = len(self.groups) >= MIN_FORKED_WORKERS
        self.template: WorkerTemplate | None = (
            WorkerTemplate(worker_env()) if template is True else template or None)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for group in self.groups:
                    tg.create_task(self._supervise(group))
        finally:
            if self.template is not None:
                await self.template.close()

    # ------------------------------------------------------------------ supervision

    async def _supervise(self, group: WorkerGroup) -> None:
        o = group.options
        backoff = Backoff(o.restart_initial_s, o.restart_max_s)
        while True:
            started = time.monotonic()
            reason = await self._run_once(group)
            group.fault = ""  # injected faults hit the first start only
            if time.monotonic() - started >= o.restart_max_s:
                backoff.reset()
            wait = backoff.next_s()
            group.restarts += 1
            log.error("camera_worker_died", worker=group.index, reason=reason,
                      restarts=group.restarts, retry_in_s=round(wait, 2),
                      cameras=sorted(group.ids))
            for cam in group.cameras:
                self.sink.emit(cam.id, RESTARTED, {
                    "worker": group.index, "reason": reason, "restarts": group.restarts,
                    "cameras": len(group.cameras), "retry_in_s": round(wait, 3)})
            await asyncio.sleep(wait)

    def _start_message(self, group: WorkerGroup) -> dict[str, Any]:
        return {
            "t": "start", "worker": group.index, "heartbeat_s": group.options.heartbeat_s,
            "salt": self.sink.credential_salt.hex(),
            "snapshots": self.snapshots.model_dump_json() if self.snapshots else None,
            "fault": group.fault, "fault_after_s": group.fault_after_s,
            "fault_file": group.fault_file,
            "cameras": [{"id": c.id, "config": c.model_dump_json(),
                         "restore": [{"type": a.type, "alarm_id": a.alarm_id, "data": a.data}
                                     for a in self.open.get(c.id, {}).values()]}
                        for c in group.cameras],
        }

    async def _run_once(self, group: WorkerGroup) -> str:
        """Start the group's worker and serve it until it dies; why it died."""
        ours, theirs = socket.socketpair()
        try:
            proc = await self._launch(theirs)
        except (OSError, TemplateGone) as exc:
            ours.close()
            detail = exc.strerror if isinstance(exc, OSError) else str(exc)
            return f"could not start: {detail or type(exc).__name__}"
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        group.pid = proc.pid
        reader, writer = await asyncio.open_connection(sock=ours)
        try:
            writer.write(encode(self._start_message(group)))
            group.last_heartbeat = time.monotonic()
            reason = await self._serve(group, reader)
        except asyncio.CancelledError:
            await self._stop(proc, writer)
            raise
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        writer.close()
        returncode = await proc.wait()
        if isinstance(proc, ForkedWorker) and proc.template_died:
            return f"the worker template {proc.template_died}"
        return reason or exit_reason(returncode)

    async def _launch(self, theirs: socket.socket) -> _Worker:
        """A worker holding `theirs`: forked by the template, or (no template, or it
        cannot start: then for good, said once) a fresh interpreter."""
        if self.template is not None:
            try:
                return await self.template.spawn(theirs)
            except TemplateUnavailable as exc:
                log.error("camera_template_unavailable", reason=str(exc),
                          fallback="one fresh interpreter per worker")
                self.template = None
        return await asyncio.create_subprocess_exec(
            *python_c("camera_process"), str(theirs.fileno()), pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL, env=worker_env())

    async def _stop(self, proc: _Worker, writer: asyncio.StreamWriter) -> None:
        """Close our end (the worker's signal to stop), wait a while, then kill."""
        writer.close()
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _serve(self, group: WorkerGroup, reader: asyncio.StreamReader) -> str:
        """Hand on the worker's frames until it goes; "" when it simply ended."""
        timeout = group.options.heartbeat_timeout_s
        while True:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the
                # result when the read completes as the task is cancelled, and the
                # cancellation (the agent stopping) is lost: the host never stopped
                async with asyncio.timeout(timeout):
                    header = await reader.readexactly(HEADER.size)
                async with asyncio.timeout(timeout):
                    body = await reader.readexactly(header_length(header))
                self._handle(group, decode_body(body, FROM_WORKER))
            except TimeoutError:
                return f"no heartbeat for {timeout:g} s (wedged)"
            except asyncio.IncompleteReadError:
                return ""
            except ProtocolError as exc:
                return f"protocol error: {exc}"

    def _handle(self, group: WorkerGroup, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        group.last_heartbeat = time.monotonic()
        if kind == "hb":
            group.rss_kib = _int(msg.get("rss_kib"))
            return
        dev = msg.get("dev")
        if not isinstance(dev, str) or dev not in group.ids:
            raise ProtocolError(f"{kind} for a camera this worker does not run")
        if kind == "emit":
            self._emit(dev, msg)
        elif kind == "state":
            try:
                state = DeviceState(str(msg.get("state")))
            except ValueError:
                raise ProtocolError("unknown device state") from None
            self.sink.device_state(dev, state, _str(msg.get("reason")))
        elif kind == "poll_error":
            self.sink.poll_error(dev, _str(msg.get("reason")))
        else:  # chatter
            self.sink.chatter_toggles(dev, _int(msg.get("n")))

    def _emit(self, dev: str, msg: dict[str, Any]) -> None:
        type_, data, sev, at = msg.get("type"), msg.get("data"), msg.get("sev"), msg.get("at")
        if not isinstance(type_, str) or not isinstance(data, dict):
            raise ProtocolError("emit without a type or data object")
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise ProtocolError("emit without an observation time")
        try:
            severity = Severity(sev) if sev is not None else None
        except ValueError:
            raise ProtocolError("unknown severity") from None
        self._track(dev, type_, data)
        self.sink.emit(dev, type_, data, severity=severity, observed_at=float(at))

    def _track(self, dev: str, type_: str, data: dict[str, Any]) -> None:
        """Keep the camera's open alarms, to hand them to a restarted worker."""
        alarm_id, state = data.get("alarm_id"), data.get("state")
        if not isinstance(alarm_id, str):
            return
        opened = self.open.setdefault(dev, {})
        if state == "raised":
            plain = {k: v for k, v in data.items() if isinstance(v, str | int | float | bool)
                     and k not in ("state", "alarm_id")}
            opened[alarm_id] = OpenAlarm(type_, alarm_id, plain)
        elif state == "cleared":
            opened.pop(alarm_id, None)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError("expected an integer")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ProtocolError("expected a string")
    return value[:500]
