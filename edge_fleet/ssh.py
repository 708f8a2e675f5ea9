"""SSH to a gateway with asyncssh: key auth, strict known-hosts checking, bounded output.

Invariants: a connection is made only with the inventory's client key (no ssh-agent, no
~/.ssh/config, no password) and only to a host whose key is in the inventory's
known_hosts file, unless `trust_on_first_use` is set there; every connection attempt has
a timeout; a remote command's stdout is read up to `MAX_OUTPUT_BYTES` and the channel is
closed past that (a hostile box cannot fill the maintainer's memory). Failures are
returned as `SshFailure` (outcome + a message naming the gateway and the fix), never
raised past the caller.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncssh

from edge_fleet.inventory import Gateway, SshOptions
from edge_fleet.outcome import MAX_OUTPUT_BYTES, Outcome

STDERR_TAIL_BYTES = 4096


class SshFailure(Exception):
    """Reaching a gateway failed; `outcome` is unreachable or error, `str()` says why."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


async def connect(gw: Gateway, ssh: SshOptions) -> asyncssh.SSHClientConnection:
    """An open, authenticated connection to `gw`; SshFailure otherwise."""
    try:
        return await asyncssh.connect(
            gw.host, gw.port, username=gw.user, client_keys=[str(ssh.client_key)],
            known_hosts=None if ssh.trust_on_first_use else str(ssh.known_hosts),
            connect_timeout=ssh.connect_timeout_s, agent_path=None, config=[],
            password_auth=False, kbdint_auth=False, gss_auth=False, gss_kex=False,
            host_based_auth=False, keepalive_interval=15, keepalive_count_max=3)
    except asyncssh.HostKeyNotVerifiable:
        raise SshFailure(Outcome.ERROR, _host_key_message(gw, ssh)) from None
    except asyncssh.PermissionDenied:
        raise SshFailure(Outcome.ERROR, (
            f"{gw.address}: the box refused key {ssh.client_key} (hint: add its .pub to "
            f"~{gw.user}/.ssh/authorized_keys on the box, or fix `user`)")) from None
    except TimeoutError:
        raise SshFailure(Outcome.UNREACHABLE, (
            f"{gw.address}: no SSH answer within {ssh.connect_timeout_s:g}s")) from None
    except OSError as exc:
        raise SshFailure(Outcome.UNREACHABLE, (
            f"{gw.address}: {exc.strerror or exc} (hint: is the box up and its sshd "
            f"listening on port {gw.port}?)")) from None
    except asyncssh.KeyImportError as exc:
        raise SshFailure(Outcome.ERROR, (
            f"cannot use client key {ssh.client_key}: {exc} (hint: an unencrypted OpenSSH "
            "private key, e.g. ssh-keygen -t ed25519 -N '' -f FILE)")) from None
    except asyncssh.Error as exc:
        raise SshFailure(Outcome.UNREACHABLE if isinstance(exc, asyncssh.ConnectionLost)
                         else Outcome.ERROR, f"{gw.address}: SSH: {exc.reason}") from None


def _host_key_message(gw: Gateway, ssh: SshOptions) -> str:
    """Unknown or changed: say which, and how to fix it without blind trust."""
    known = False
    try:
        listed = asyncssh.match_known_hosts(str(ssh.known_hosts), gw.host, gw.host, gw.port)
        known = bool(listed[0])
    except (OSError, ValueError, asyncssh.Error):
        pass
    entry = gw.host if gw.port == 22 else f"[{gw.host}]:{gw.port}"
    if known:
        return (f"gateway {gw.id} ({gw.address}): its host key differs from the one in "
                f"{ssh.known_hosts}, connection refused (a reinstalled box, or someone "
                f"in the middle); hint: check the box's fingerprint on site "
                f"(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then replace the "
                f"`{entry}` line of {ssh.known_hosts}")
    return (f"gateway {gw.id} ({gw.address}): host key unknown, not in {ssh.known_hosts}, "
            f"connection refused; hint: ssh-keyscan -p {gw.port} {gw.host}, compare the "
            f"fingerprint with the box's own, and append the `{entry}` line to "
            f"{ssh.known_hosts}")


@dataclass(frozen=True)
class Ran:
    stdout: bytes
    stderr: bytes
    exit_status: int | None
    truncated: bool


async def run_bounded(conn: asyncssh.SSHClientConnection, command: str,
                      limit: int = MAX_OUTPUT_BYTES) -> Ran:
    """Run `command` on the box; stdout kept up to `limit` bytes (then the channel is
    closed and `truncated` set), the last STDERR_TAIL_BYTES of stderr kept."""
    proc = await conn.create_process(command, stdin=asyncssh.DEVNULL, encoding=None)
    out = bytearray()
    err = bytearray()
    truncated = False

    async def read_out() -> None:
        nonlocal truncated
        while chunk := await proc.stdout.read(65536):
            out.extend(chunk)
            if len(out) > limit:
                truncated = True
                proc.close()
                return

    async def read_err() -> None:
        while chunk := await proc.stderr.read(65536):
            err.extend(chunk)
            del err[:-STDERR_TAIL_BYTES]

    try:
        await asyncio.gather(read_out(), read_err())
    except (asyncssh.Error, BrokenPipeError, ConnectionError):
        if not truncated:
            raise
    if truncated:
        return Ran(bytes(out[:limit]), bytes(err), None, True)
    await proc.wait_closed()
    return Ran(bytes(out), bytes(err), proc.exit_status, False)
