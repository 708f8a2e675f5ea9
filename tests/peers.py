"""Real peers for tests on 127.0.0.1 and random ports: Mosquitto, PostgreSQL, a TCP fault proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Test servers listen on ports below Linux's ephemeral range (32768-60999 by default).
#: A port the kernel hands out for bind(0) comes from that range, and so does the local port
#: of every outgoing connection: a port found free with bind(0) and closed could be taken by
#: a client's connection (another test, PostgreSQL's clients, ...) before our server bound
#: it ("address already in use", seen in CI). Below the range only explicit binds compete.
PORTS_LOW = 20000
PORTS_HIGH = 32000
#: each pytest-xdist worker has a slice of its own, so two workers never hand out one port
WORKER_SLICE = 1500


def _ephemeral_low() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def _slice() -> range:
    """This process's ports: its xdist worker's slice, else one picked by the pid."""
    high = min(PORTS_HIGH, _ephemeral_low())
    slices = max(1, (high - PORTS_LOW) // WORKER_SLICE)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker[2:].isdigit() else os.getpid()
    low = PORTS_LOW + (index % slices) * WORKER_SLICE
    return range(low, min(low + WORKER_SLICE, high))


class _Ports:
    """Hands out ports of this process's slice in turn (never the same one twice until the
    slice wraps), skipping any that something holds now, TCP or UDP."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ports = _slice()
        self.cursor = os.getpid() % len(self.ports)  # two runs outside xdist rarely meet

    def take(self, count: int) -> int:
        with self.lock:
            for _ in range(len(self.ports)):
                base = self.ports[self.cursor % len(self.ports)]
                self.cursor = (self.cursor + count) % len(self.ports)
                if base + count <= self.ports.stop and all(
                        _bindable(p) for p in range(base, base + count)):
                    return base
        raise RuntimeError(f"no {count} consecutive free ports in {self.ports}")


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


_PORTS = _Ports()


def free_port() -> int:
    """A port on 127.0.0.1 free now that no other test of this run will be handed."""
    return _PORTS.take(1)


def free_ports(count: int) -> int:
    """The first of `count` consecutive such ports."""
    return _PORTS.take(count)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) of a one-day EC certificate for 127.0.0.1 made by openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "self.crt", folder / "self.key"
    subprocess.run([require_binary("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def require_binary(name: str) -> str:
    """Path of a binary the test needs; skip without it, but fail under CI=true."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)
    if path:
        return path
    reason = f"{name} is not installed (Debian: apt-get install {name}); .ci/run installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Mosquitto:
    """One mosquitto process; `stop()`/`start()` keep the port so clients can reconnect."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: str = ""
    #: replaces the default plain, anonymous listener (e.g. a TLS listener with passwords)
    listener_conf: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = require_binary("mosquitto")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        listener = self.listener_conf or f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        conf.write_text(
            f"{listener}\n"
            # As root, mosquitto drops to user `mosquitto`, who can't read pytest's 0700 tmp dirs.
            f"{'user root' if os.geteuid() == 0 else ''}\n"
            "persistence false\n"
            "set_tcp_nodelay true\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
            f"{self.extra_conf}\n"
        )
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        wait_port(self.port)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class FaultProxy:
    """TCP proxy between a client and a server with switchable faults.

    `blackhole_downstream`: bytes from the server are swallowed (PUBACKs and acks
    never reach the client) while upstream bytes still flow, so a publish is
    delivered but the client times out on it. `cut()` drops every connection.
    `frozen`: a silent network cut: nothing is forwarded either way, nothing more is read
    (the senders' socket buffers fill, their writes block, as over a dead route), and
    every socket stays open (no FIN, no RST reaches either side, even when the other side
    closes); only `close()` ends them.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.blackhole_downstream = False
        self.refuse = False
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def close(self) -> None:
        self.frozen = False
        self.cut()
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _thawed(self) -> None:
        """Returns once `frozen` is off (a plain attribute, set from any thread: polled)."""
        while self.frozen:  # noqa: ASYNC110 - an asyncio.Event cannot be set from a thread
            await asyncio.sleep(0.1)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        if self.frozen:  # the link is cut: a new connection gets nowhere, and no answer
            self._writers.add(writer)
            await self._thawed()
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, down: bool) -> None:
            try:
                while data := await src.read(65536):
                    if self.frozen:  # a cut link: nothing read any more, the sender's
                        await self._thawed()  # socket buffers fill as over a dead route
                        continue
                    if down and self.blackhole_downstream:
                        continue
                    dst.write(data)
                    await dst.drain()
                await self._thawed()  # the peer is gone; the other side must not learn it
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_w, False), pump(up_r, writer, True))
        self._writers -= {writer, up_w}


@contextlib.contextmanager
def proxy_thread(target_port: int) -> Iterator[FaultProxy]:
    """A started `FaultProxy` on its own event loop thread, for tests that are not async;
    its switches are plain attributes, set from the test's thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = FaultProxy(target_port)
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def stop_process(proc: subprocess.Popen[bytes] | None, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace_s`; reaped either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pg_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them in /usr/lib/postgresql/<ver>/bin/."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return str(found[-1])
    return require_binary(name)


@dataclass
class Postgres:
    """One PostgreSQL cluster in a temp dir on 127.0.0.1 and a random port (trust auth,
    fsync off). As root, initdb refuses to run: the cluster runs as user `postgres`."""

    workdir: Path
    port: int = field(default_factory=free_port)
    #: False (tests): fsync and synchronous commit off for speed; True (bench): as shipped.
    durable: bool = False
    _n: int = 0

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        if not data.exists():
            subprocess.run([*self._as_owner(), initdb, "-D", str(data), "-U", "postgres",
                            "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
                           check=True, capture_output=True)
        opts = f"-k {self.workdir} -p {self.port} -h 127.0.0.1"
        if not self.durable:
            opts += " -F -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run([*self._as_owner(), pg_ctl, "-D", str(data), "-w", "-t", "60",
                        "-l", str(self.workdir / "postgres.log"), "-o", opts, "start"],
                       check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m <mode>`: `fast` rolls back sessions and checkpoints; `immediate`
        is a crash (every server process quits at once, recovery on the next start).
        `start()` afterwards brings the same cluster back on the same port."""
        subprocess.run([*self._as_owner(), _pg_bin("pg_ctl"), "-D", str(self.workdir / "data"),
                        "-m", mode, "-w", "stop"], check=False, capture_output=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
