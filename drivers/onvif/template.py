"""The camera worker template: one process that imports the workers' code once and forks them.

Every camera worker used to start a fresh interpreter and import pydantic, structlog, the
ONVIF client (zeep, lxml, aiohttp), numpy and OpenCV and parse the ONVIF WSDLs itself:
~80 MiB of private memory per worker, repeated for every 8 cameras. This process does it
once (`warm`), calls `gc.freeze()` (the collector then never writes to those objects'
headers, which would copy their pages) and forks each worker, which shares the base
copy-on-write and only adds its cameras' own memory.

Started by `template_client.WorkerTemplate` as `python -c ... <fd> [module...]` with the
agent's environment plus `MALLOC_ARENA_MAX=2` (read by glibc at start, inherited by the
workers) and `SINGLE_THREADED` (no OpenBLAS thread pool: numpy and OpenCV would each
start one at import). A fork copies only the calling thread, so the template must have
no other when it forks: `ready` reports the count, and a fork with more logs
`camera_template_threads`. `fd` is a SOCK_SEQPACKET socket; each message is one JSON
object:

- template -> agent: `ready` (`pid`, `modules`, `wsdl`, `load_s`, `threads`) once warm,
  or `failed` (`error`) and exit code 4 when an import or the WSDL parse fails (the
  agent then starts its workers the old way and says so); `forked` (`id`, `pid`) or
  `fork_failed` (`id`, `error`); `exit` (`pid`, `code`: the exit code, negative for a
  signal) when a worker ends and was reaped here.
- agent -> template: `fork` (`id`) with the worker's socket end attached (SCM_RIGHTS);
  `kill` (`pid`): SIGKILL that worker if it is still our child (the template reaps, so
  only it knows a pid is not yet free for reuse).

A worker dies with the template (PR_SET_PDEATHSIG): its exit status could not be read
any more, the agent restarts it from a new template. When the agent's end closes (the
agent stops or died) the template waits `STOP_GRACE_S` for its workers, which see their
own sockets close and stop, kills what is left and exits. Like the workers it ignores
SIGTERM and SIGINT (a service stop or Ctrl-C reaches the whole cgroup/process group).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from edge_agent.contract.logs import get_logger

from .child import start_child

__all__ = ["PRELOAD", "main", "threads", "warm"]

log = get_logger("drivers.onvif.template")

#: What every worker imports. video_sampler first: it sets the FFmpeg options in
#: os.environ, which the forked workers inherit.
PRELOAD = (
    "drivers.onvif.video_sampler", "cv2", "numpy", "lxml.etree", "zeep", "aiohttp",
    "onvif.client", "drivers.onvif.camera_process", "drivers.onvif.driver",
    "drivers.onvif.video_monitor", "drivers.onvif.video_analysis",
)
#: The WSDLs the driver loads (device management, media, events with pull points).
WSDLS = ("devicemgmt.wsdl", "media.wsdl", "events.wsdl")
STOP_GRACE_S = 8.0
FAILED_EXIT = 4
_PR_SET_PDEATHSIG = 1
_MAX_MESSAGE = 64 * 1024


def threads() -> int:
    """How many threads this process has now (from /proc; 0 if it cannot be read)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def warm(extra: Sequence[str] = ()) -> dict[str, Any]:
    """Import what the workers need and parse the driver's WSDLs; what was loaded."""
    started = time.monotonic()
    modules = [*PRELOAD, *extra]
    for name in modules:
        importlib.import_module(name)
    wsdl = _parse_wsdls()
    gc.collect()
    gc.freeze()
    return {"modules": len(modules), "wsdl": wsdl,
            "load_s": round(time.monotonic() - started, 2), "threads": threads()}


def _parse_wsdls() -> int:
    """Fill onvif-zeep-async's document cache from its bundled WSDL files (no camera
    needed): each worker would otherwise parse them again (~11 MiB)."""
    import asyncio
    from pathlib import Path

    import onvif.client as lib

    load = getattr(lib, "_cached_document", None)
    folder = getattr(lib, "_WSDL_PATH", None)
    if load is None or not isinstance(folder, str):
        return 0  # another onvif-zeep-async: the workers load them as before

    async def all_of_them() -> None:
        for name in WSDLS:
            await load(str(Path(folder) / name))

    asyncio.run(all_of_them())
    return len(WSDLS)


def _send(ctl: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the agent went: the loop sees EOF next
        ctl.send(json.dumps(message).encode())


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the template died before prctl took effect
        os._exit(1)


def _child(fd: int, closing: Sequence[int], parent: int) -> int:
    """In the forked worker: drop the template's fds and signal set-up, run the worker."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for other in closing:
        with contextlib.suppress(OSError):
            os.close(other)
    _die_with_parent(parent)
    from .camera_process import main as worker_main

    try:
        worker_main([str(fd)])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


class _Server:
    """The template's loop: fork requests from the agent, SIGCHLD from the workers."""

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.children: set[int] = set()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector via the fd
        signal.set_wakeup_fd(self.wake_w)
        self.selector = selectors.DefaultSelector()
        self.selector.register(ctl, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def run(self) -> None:
        deadline: float | None = None
        while deadline is None or (self.children and time.monotonic() < deadline):
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            for key, _ in self.selector.select(timeout):
                if key.fileobj is self.ctl and not self._request():
                    self.selector.unregister(self.ctl)
                    deadline = time.monotonic() + STOP_GRACE_S
                elif key.fileobj == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
            self._reap()
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _request(self) -> bool:
        """Serve one message from the agent; False once its end is closed."""
        try:
            data, fds, _, _ = socket.recv_fds(self.ctl, _MAX_MESSAGE, 4)
        except OSError:
            return False
        if not data:
            return False
        try:
            msg = json.loads(data)
            kind = msg["t"]
        except (ValueError, KeyError, TypeError):
            log.error("camera_template_bad_request", size=len(data))
            kind, msg = "", {}
        if kind == "fork" and len(fds) == 1:
            self._fork(msg.get("id"), fds[0])
            return True
        for fd in fds:
            os.close(fd)
        if kind == "kill" and msg.get("pid") in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(msg["pid"]), signal.SIGKILL)
        return True

    def _fork(self, request: Any, fd: int) -> None:
        if (count := threads()) > 1:  # a lock another thread holds would stay held there
            log.warning("camera_template_threads", threads=count,
                        hint="forking with other threads; see template_client.SINGLE_THREADED")
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(fd)
            _send(self.ctl, {"t": "fork_failed", "id": request,
                             "error": exc.strerror or type(exc).__name__})
            return
        if pid == 0:
            code = 1
            try:
                code = _child(fd, (self.ctl.fileno(), self.wake_r, self.wake_w), os.getppid())
            except BaseException as exc:  # the child must never return here
                log.error("camera_worker_crashed", error=type(exc).__name__,
                          detail=str(exc)[:200], exc_info=True)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(fd)
        self.children.add(pid)
        _send(self.ctl, {"t": "forked", "id": request, "pid": pid})

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children.discard(pid)
                _send(self.ctl, {"t": "exit", "pid": pid,
                                 "code": os.waitstatus_to_exitcode(status)})


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    ctl = start_child(args[0])
    try:
        loaded = warm(args[1:])
    except Exception as exc:  # any failure: the agent falls back, says why
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.error("camera_template_failed", error=error)
        _send(ctl, {"t": "failed", "error": error})
        raise SystemExit(FAILED_EXIT) from None
    log.info("camera_template_ready", pid=os.getpid(), **loaded)
    _send(ctl, {"t": "ready", "pid": os.getpid(), **loaded})
    _Server(ctl).run()
