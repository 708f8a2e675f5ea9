"""`WorkerTemplate`: the agent's side of the camera worker template (`template.py`).

The agent asks one template process, which imported the workers' code once, to fork each
camera worker: the workers share that base copy-on-write instead of each importing it
again (docs/benchmarks.md, issue 14). The worker is the template's child, so the
template reaps it and reports its exit status; this class turns those reports into a
`ForkedWorker` per worker with the same `pid` / `kill()` / `wait()` as a direct child.

Only the standard library here: the agent process must not load what the template does.
The template is started on the first `spawn` and again on the first `spawn` after it
died; a template that cannot warm up (an import or WSDL error, or no `ready` within
`ready_timeout_s`) raises `TemplateUnavailable` with its reason, and the caller falls
back to starting workers itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_agent.contract.logs import get_logger

__all__ = [
    "SINGLE_THREADED",
    "ForkedWorker",
    "TemplateGone",
    "TemplateUnavailable",
    "WorkerTemplate",
    "exit_reason",
    "python_c",
]

log = get_logger("drivers.onvif.template")

_PACKAGE = __name__.rpartition(".")[0]
_ROOT = Path(__file__).resolve().parents[len(_PACKAGE.split("."))]
_MAX_MESSAGE = 64 * 1024
#: a fork request unanswered this long means a wedged template (a fork takes ms)
FORK_TIMEOUT_S = 30.0
#: Set in the template's and the workers' environment, read by OpenBLAS (numpy's and the
#: copy bundled with OpenCV) when it loads: no BLAS thread pool. Both would otherwise
#: start one thread per further core at import, and a fork copies only the forking
#: thread: a lock another thread holds at that moment stays locked for good in the
#: child. OpenBLAS happens to stop its pool in a pthread_atfork handler, but the
#: template must not depend on that; the video analysis (160x90 thumbnails, no matrix
#: products) makes no BLAS call, so the threads never did any work.
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
STOP_WAIT_S = 12.0


def python_c(module: str) -> list[str]:
    """The command running `main()` of this package's `module` in a fresh interpreter
    that finds the package wherever it was imported from."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(_ROOT)!r}); "
            f"from {_PACKAGE}.{module} import main; main()"]


class TemplateUnavailable(RuntimeError):
    """The template could not start or warm up; the message says why."""


class TemplateGone(RuntimeError):
    """The template died while a fork was asked of it."""


class ForkedWorker:
    """One worker forked by the template; `returncode` as for a subprocess (negative:
    killed by that signal), None while it runs or when its status was lost with the
    template (`template_died` then tells which)."""

    def __init__(self, template: WorkerTemplate, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.template_died = ""
        self._template = template
        self._done = asyncio.get_running_loop().create_future()

    def _ended(self, code: int | None, template_died: str = "") -> None:
        if not self._done.done():
            self.returncode, self.template_died = code, template_died
            self._done.set_result(None)

    def kill(self) -> None:
        """SIGKILL, through the template: only it knows the pid was not reaped yet."""
        if not self._done.done():
            with contextlib.suppress(TemplateGone):  # then it died with the template
                self._template._request({"t": "kill", "pid": self.pid})

    async def wait(self) -> int | None:
        await asyncio.shield(self._done)
        return self.returncode


class WorkerTemplate:
    """The template process, started on demand; `extra` modules are preloaded too.
    `threads`: how many threads the template had once warm (its `ready` report), which
    must be 1 for the forks to be safe."""

    def __init__(self, env: Mapping[str, str], *, extra: Sequence[str] = (),
                 ready_timeout_s: float = 120.0) -> None:
        self.env = dict(env)
        self.extra = tuple(extra)
        self.ready_timeout_s = ready_timeout_s
        self.pid: int | None = None
        self.starts = 0
        self.threads: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ctl: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._forks: dict[int, asyncio.Future[ForkedWorker]] = {}
        self._workers: dict[int, ForkedWorker] = {}

    async def spawn(self, sock: socket.socket) -> ForkedWorker:
        """Fork a worker holding `sock` (our copy stays the caller's to close)."""
        async with self._lock:
            if self._reader is None or self._reader.done():
                await self._start()
        request = next(self._ids)
        future: asyncio.Future[ForkedWorker] = asyncio.get_running_loop().create_future()
        self._forks[request] = future
        try:
            self._request({"t": "fork", "id": request}, sock.fileno())
            async with asyncio.timeout(FORK_TIMEOUT_S):  # not wait_for: see host._serve
                return await future
        except TimeoutError:
            self._kill_template()
            raise TemplateGone(f"no answer to a fork within {FORK_TIMEOUT_S:g} s") from None
        finally:
            self._forks.pop(request, None)

    async def close(self) -> None:
        """Close our end (the template waits for its workers, then exits), then reap."""
        proc, reader = self._proc, self._reader
        self._proc = None  # what the reader sees end now is no death
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if proc is not None:
            try:
                async with asyncio.timeout(STOP_WAIT_S):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    # ------------------------------------------------------------------ internals

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = await asyncio.create_subprocess_exec(
                *python_c("template"), str(theirs.fileno()), *self.extra,
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                env={**self.env, **SINGLE_THREADED})
        except OSError as exc:
            ours.close()
            raise TemplateUnavailable(f"could not start: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        self.starts += 1
        try:
            async with asyncio.timeout(self.ready_timeout_s):
                ready = await self._receive(ours)
        except TimeoutError:
            ready = {"t": "failed", "error": f"not ready within {self.ready_timeout_s:g} s"}
        except BaseException:  # cancelled while it warms up: no template left behind
            ours.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        if ready.get("t") != "ready":
            ours.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code_ = await proc.wait()
            raise TemplateUnavailable(str(ready.get("error") or f"exited ({code_})"))
        self._proc, self._ctl, self.pid = proc, ours, proc.pid
        threads = ready.get("threads")
        self.threads = threads if isinstance(threads, int) else None
        self._reader = asyncio.create_task(self._read(proc, ours))
        log.info("camera_template_started", pid=proc.pid, starts=self.starts,
                 load_s=ready.get("load_s"), wsdl=ready.get("wsdl"), threads=self.threads)

    async def _receive(self, ctl: socket.socket) -> dict[str, Any]:
        """The next message; {} at EOF or on a broken one."""
        try:
            data = await asyncio.get_running_loop().sock_recv(ctl, _MAX_MESSAGE)
            msg = json.loads(data) if data else {}
        except (OSError, ValueError):
            return {}
        return msg if isinstance(msg, dict) else {}

    async def _read(self, proc: asyncio.subprocess.Process, ctl: socket.socket) -> None:
        """Hand on the template's reports until it ends; then its workers' status is
        lost (they die with it) and waiting forks fail."""
        reason = "was stopped"
        try:
            while msg := await self._receive(ctl):
                self._dispatch(msg)
            reason = exit_reason(await proc.wait())
            if self._proc is proc:
                log.error("camera_template_died", pid=proc.pid, reason=reason,
                          workers=len(self._workers))
        finally:
            ctl.close()
            if self._proc is proc:
                self._proc = None
            if self._ctl is ctl:
                self._ctl = None
            for worker in self._workers.values():
                worker._ended(None, reason)
            self._workers.clear()
            for future in self._forks.values():
                if not future.done():
                    future.set_exception(TemplateGone(f"the worker template {reason}"))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind, pid = msg.get("t"), msg.get("pid")
        if kind == "forked" and isinstance(pid, int):
            worker = self._workers[pid] = ForkedWorker(self, pid)
            future = self._forks.get(msg.get("id"))  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(worker)
        elif kind == "fork_failed":
            future = self._forks.get(msg.get("id"))  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_exception(TemplateGone(f"fork failed: {msg.get('error')}"))
        elif kind == "exit" and isinstance(pid, int):
            code = msg.get("code")
            if (ended := self._workers.pop(pid, None)) is not None:
                ended._ended(code if isinstance(code, int) else None)

    def _request(self, message: dict[str, Any], fd: int | None = None) -> None:
        ctl = self._ctl
        if ctl is None:
            raise TemplateGone("the worker template is not running")
        data = json.dumps(message).encode()
        try:
            if fd is None:
                ctl.send(data)
            else:
                socket.send_fds(ctl, [data], [fd])
        except OSError as exc:
            self._kill_template()
            raise TemplateGone(f"cannot reach the template: {exc.strerror or exc}") from None

    def _kill_template(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()


def exit_reason(returncode: int | None) -> str:
    """A process's end in words: `killed by SIGSEGV`, `exited with code 3`."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"

