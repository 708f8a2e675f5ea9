"""A Mosquitto the collector configures and supervises (`broker: managed`).

For the demo and a single site: the collector writes mosquitto.conf, a hashed password
file and the ACL into `managed_broker.state_dir` (0700) for its configured users and the
gateways provisioned with `edge-collector provision` (rewritten and re-read by Mosquitto
on the collector's SIGHUP), starts `mosquitto -c` as its child, forwards its log lines,
restarts it with back-off when it dies, and stops it on shutdown. It connects to it like
any client, over the loopback, with a per-run account `_collector-<id>` (the ACL gives
it the collector rights and its own presence topic). With `tls:` the configured listener
speaks TLS and a second, loopback-only plain listener on a free port serves the
collector itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
from collections import deque
from pathlib import Path

from pydantic import SecretStr

from collector.config import INTERNAL_USER_PREFIX, ManagedBrokerConfig
from collector.mosquitto_files import (
    EXPECTED_WARNINGS,
    CollectorAccount,
    GatewayAccount,
    Listener,
    acl_file,
    mosquitto_conf,
    password_file,
)
from collector.provisioning.files import Provisioning
from collector.provisioning.plan import ProvisionError
from edge_agent.contract.backoff import Backoff
from edge_agent.contract.files import write_atomic
from edge_agent.contract.logs import get_logger
from edge_agent.contract.mqtt import Endpoint
from edge_agent.contract.settings import SecretError

log = get_logger("collector.broker")

_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}
#: How long the first start may take before the collector gives up (exit 2).
START_TIMEOUT_S = 10.0
#: A broker that ran this long before dying restarts with the initial back-off again.
STABLE_AFTER_S = 60.0
_PR_SET_PDEATHSIG = 1
#: MQTT DISCONNECT, the whole packet.
DISCONNECT = b"\xe0\x00"


class ManagedBrokerError(RuntimeError):
    """The managed broker cannot start; the message says what to fix."""


#: libc loaded once here: the child between fork and exec must not load libraries.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the collector dies, even by SIGKILL (no orphan holding
    the port). Linux only; elsewhere a no-op."""
    with contextlib.suppress(AttributeError):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def connect_packet(username: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session, client id = user name) for the readiness probe."""
    def field(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("!H", len(raw)) + raw

    body = field("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 10)  # user, password, clean
    body += field(username) + field(username) + field(password)
    length, n = b"", len(body)
    while True:
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            return b"\x10" + length + body


#: starts of Mosquitto, each on a new loopback port, when the one we picked was taken
LOOPBACK_PORT_ATTEMPTS = 3


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ManagedBroker:
    def __init__(self, cfg: ManagedBrokerConfig, collector_id: str,
                 provisioning: Provisioning | None = None) -> None:
        self.cfg = cfg
        #: gateways provisioned with `edge-collector provision`, read at each start and
        #: again on the collector's SIGHUP (`reload`)
        self.provisioning = provisioning
        self.collector_id = collector_id
        self.username = f"{INTERNAL_USER_PREFIX}{collector_id}"
        self._password = secrets.token_urlsafe(24)
        #: an account with no rights, only to tell that our Mosquitto is up
        self._probe_user = f"_probe-{collector_id}"
        self._probe_password = secrets.token_urlsafe(24)
        self._local_port = self.cfg.port if self.cfg.tls is None else _free_loopback_port()
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._log_tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        #: the last lines Mosquitto printed (for the error message when it cannot start)
        self._last_lines: deque[str] = deque(maxlen=5)
        self.restarts = 0

    # ------------------------------------------------------------------ files

    def binary(self) -> str:
        found = shutil.which(self.cfg.binary) or next(
            (p for p in (f"/usr/sbin/{self.cfg.binary}",) if os.access(p, os.X_OK)), None)
        if found is None:
            raise ManagedBrokerError(
                f"managed_broker.binary: {self.cfg.binary!r} not found (hint: apt-get install "
                "mosquitto, or set managed_broker.binary to its path)")
        return found

    def write_files(self) -> Path:
        """mosquitto.conf, passwd and acl in the state dir. Reads the users' secrets now
        (raises SecretError); checks the TLS files (ManagedBrokerError)."""
        state = self.cfg.state_dir.resolve()
        try:
            state.mkdir(parents=True, exist_ok=True, mode=0o700)
            state.chmod(0o700)
        except OSError as exc:
            raise ManagedBrokerError(
                f"managed_broker.state_dir: cannot use {state}: {exc.strerror}") from None
        self._check_tls()
        passwords = {u.username: u.password.reveal().get_secret_value() for u in self.cfg.users}
        passwords[self.username] = self._password
        passwords[self._probe_user] = self._probe_password
        collectors = [CollectorAccount(self.username, self.collector_id)]
        collectors += [CollectorAccount(u.username) for u in self.cfg.users
                       if u.role == "collector"]
        gateways = [GatewayAccount(u.username) for u in self.cfg.users if u.role == "gateway"]
        hashes = self._provisioned(passwords, gateways)
        listeners = [Listener(self.cfg.host.strip("[]") or "0.0.0.0", self.cfg.port,
                              *((self.cfg.tls.cert_file.resolve(), self.cfg.tls.key_file.resolve())
                                if self.cfg.tls else ()))]
        if self.cfg.tls is not None:
            listeners.append(Listener("127.0.0.1", self._local_port))
        conf = mosquitto_conf(listeners=listeners, state_dir=state,
                              message_size_limit=self.cfg.message_size_limit,
                              run_as_root=os.geteuid() == 0)
        passwd = password_file(passwords) + "".join(f"{u}:{h}\n" for u, h in hashes.items())
        for name, text in (("passwd", passwd), ("acl", acl_file(collectors, gateways)),
                           ("mosquitto.conf", conf)):
            # atomic: also rewritten on SIGHUP while Mosquitto may be (re)reading them
            write_atomic(state / name, text, mode=0o600)
        return state / "mosquitto.conf"

    def _provisioned(self, passwords: dict[str, str],
                     gateways: list[GatewayAccount]) -> dict[str, str]:
        """Add the provisioned gateways (their own codes) to `gateways`; their hashes.
        A configured user of the same name wins (warned)."""
        if self.provisioning is None:
            return {}
        try:
            accounts = self.provisioning.accounts()
        except ProvisionError as exc:
            raise ManagedBrokerError(f"provisioning: {exc}") from None
        hashes: dict[str, str] = {}
        for gw, (digest, place) in accounts.items():
            if gw in passwords:
                log.warning("provisioned_gateway_shadowed", gateway=gw,
                            hint="managed_broker.users lists it too; that entry is used")
                continue
            hashes[gw] = digest
            gateways.append(GatewayAccount(gw, place.district, place.community))
        log.info("managed_broker_provisioned", gateways=len(hashes))
        return hashes

    def _check_tls(self) -> None:
        if self.cfg.tls is None:
            return
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                str(self.cfg.tls.cert_file), str(self.cfg.tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ManagedBrokerError(
                f"managed_broker.tls: cannot load cert_file/key_file: {exc}") from None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Write the files, start Mosquitto and wait until it listens; then supervise it.

        Raises ManagedBrokerError (binary missing, port taken, bad TLS files) or SecretError.
        """
        binary = self.binary()
        for attempt in range(1, LOOPBACK_PORT_ATTEMPTS + 1):
            conf = self.write_files()
            await self._spawn(binary, conf)
            if await self._wait_listening(START_TIMEOUT_S):
                break
            await self._terminate()
            said = "; ".join(self._last_lines) or "no output"
            if self._own_port_taken() and attempt < LOOPBACK_PORT_ATTEMPTS:
                # The loopback port we picked was free when we looked; something took it
                # before Mosquitto bound it. Ours to change: nobody else is told it.
                log.warning("managed_broker_loopback_port_taken", port=self._local_port,
                            attempt=attempt)
                self._local_port = _free_loopback_port()
                continue
            raise ManagedBrokerError(
                f"managed broker (mosquitto) did not start on {self.cfg.listen}: {said} "
                "(hint: is the port taken? see managed_broker.listen)")
        log.info("managed_broker_started", listen=self.cfg.listen, pid=self._pid(),
                 tls=self.cfg.tls is not None, users=len(self.cfg.users),
                 state_dir=str(self.cfg.state_dir))
        self._supervisor = asyncio.create_task(self._supervise(binary, conf),
                                               name="managed-broker")

    def reload(self) -> None:
        """Rewrite the password file and ACL (provisioned gateways added or revoked since)
        and have Mosquitto read them again (SIGHUP). On the collector's SIGHUP."""
        try:
            self.write_files()
        except (ManagedBrokerError, SecretError) as exc:
            # on the operator's SIGHUP: always answered, never held back as a repeat
            log.error("managed_broker_reload_failed", error=str(exc),
                      hint="the broker keeps the files it read before", repeat_ok=True)
            return
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGHUP)
        log.info("managed_broker_reloaded", pid=self._pid())

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._terminate()
        log.info("managed_broker_stopped", restarts=self.restarts)

    def endpoint(self) -> Endpoint:
        """How the collector reaches its broker: loopback, its own per-run account."""
        host = "127.0.0.1" if self.cfg.tls is not None or self.cfg.host in _WILDCARD_HOSTS \
            else self.cfg.host.strip("[]")
        return Endpoint(host=host, port=self._local_port, username=self.username,
                        password=SecretStr(self._password), protocol="auto")

    def _own_port_taken(self) -> bool:
        """Mosquitto said a port was in use, and it was the loopback port we picked (TLS
        mode): something holds it now. The public listener's port is the operator's."""
        if self.cfg.tls is None or not any(
                "address already in use" in line.lower() for line in self._last_lines):
            return False
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", self._local_port))
            except OSError:
                return True
        return False

    def _pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def _spawn(self, binary: str, conf: Path) -> None:
        self._last_lines.clear()
        self._proc = await asyncio.create_subprocess_exec(
            binary, "-c", str(conf), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent)
        task = asyncio.create_task(self._forward_log(self._proc), name="managed-broker-log")
        self._log_tasks.add(task)
        task.add_done_callback(self._log_tasks.discard)

    async def _forward_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            self._last_lines.append(text)
            if text.startswith(EXPECTED_WARNINGS):
                continue
            level = "error" if text.startswith("Error") else "warning"
            # Each distinct line is a `reason`: repeats are rate-limited by RepeatLimiter.
            getattr(log, level)("mosquitto_log", reason=text, pid=proc.pid)

    async def _wait_listening(self, timeout_s: float) -> bool:
        """True once our Mosquitto accepts the probe account (not merely: something listens
        on the port), False if it exits or does not within `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self._proc is None or self._proc.returncode is not None:
                await asyncio.sleep(0.05)  # let the log forwarder read the last lines
                return False
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                if await self._probe():
                    return True
            await asyncio.sleep(0.05)
        return False

    async def _probe(self) -> bool:
        """One MQTT 3.1.1 CONNECT with the probe account; True on CONNACK 0."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self._local_port)
        try:
            writer.write(connect_packet(self._probe_user, self._probe_password))
            async with asyncio.timeout(2):
                connack = await reader.readexactly(4)
            if connack[:2] == b"\x20\x02" and connack[3] == 0:
                writer.write(DISCONNECT)
                await writer.drain()
                return True
            return False
        finally:
            writer.close()

    async def _supervise(self, binary: str, conf: Path) -> None:
        """Restart Mosquitto with exponential back-off whenever it exits on its own."""
        backoff = Backoff(self.cfg.restart.initial_s, self.cfg.restart.max_s)
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            code = await self._proc.wait() if self._proc is not None else None
            if self._stopping:
                return
            if loop.time() - started >= STABLE_AFTER_S:
                backoff.reset()
            delay = backoff.next_s()
            log.error("managed_broker_exited", code=code, restart_in_s=round(delay, 2),
                      last=list(self._last_lines)[-1:])
            await asyncio.sleep(delay)
            self.restarts += 1
            try:
                await self._spawn(binary, conf)
            except OSError as exc:  # the binary went away (package removed, upgrade)
                log.error("managed_broker_restart_failed", error=str(exc))
                self._proc = None
                continue
            if await self._wait_listening(START_TIMEOUT_S):
                log.info("managed_broker_restarted", pid=self._pid(), restarts=self.restarts)

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
