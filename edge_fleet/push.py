"""Push one bundle to many gateways: bounded parallelism, per-gateway timeouts, canary.

Per gateway: connect (strict host key), SFTP upload to a unique temp path, run the
install command of the contract, read its answer defensively, remove the upload (also
when anything before failed or timed out: best effort on the same connection). One
gateway's failure is its outcome; it never stops or slows the others beyond the
`parallel` bound. `gateway_timeout_s` caps the whole of one gateway's push.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from edge_agent.contract.logs import get_logger
from edge_fleet.inventory import Gateway, SshOptions
from edge_fleet.outcome import GatewayResult, Outcome, clean, read_answer
from edge_fleet.plan import canary_stop, install_command, remote_name, skipped
from edge_fleet.ssh import SshFailure, connect, run_bounded

log = get_logger("edge_fleet.push")


@dataclass(frozen=True)
class PushSettings:
    bundle: Path
    wait_s: float
    parallel: int
    canary: int
    ssh: SshOptions


class Progress:
    """What the display is told; the default tells nobody."""

    def started(self, gw: Gateway) -> None:
        pass

    def finished(self, result: GatewayResult) -> None:
        pass


async def push_one(gw: Gateway, s: PushSettings) -> GatewayResult:
    t0 = time.monotonic()

    def result(outcome: Outcome, reason: str, **extra: str | None) -> GatewayResult:
        return GatewayResult(gw.id, gw.address, outcome, reason, time.monotonic() - t0, **extra)

    try:
        async with asyncio.timeout(s.ssh.gateway_timeout_s):
            conn = await connect(gw, s.ssh)
            async with conn:
                r = await _install(conn, gw, s)
    except SshFailure as exc:
        r = result(exc.outcome, str(exc))
    except TimeoutError:
        r = result(Outcome.ERROR, f"no result within gateway_timeout_s="
                   f"{s.ssh.gateway_timeout_s:g}s (the box may still finish the install; "
                   "check with edge-fleet status or logs)")
    except (asyncssh.Error, OSError) as exc:  # after the connection was made
        text = exc.reason if isinstance(exc, asyncssh.Error) else str(exc)
        r = result(Outcome.ERROR, f"{gw.address}: connection failed during the push: "
                   f"{clean(text)} (the box may have installed it: check with edge-fleet "
                   "status)")
    else:
        r = GatewayResult(r.gateway, r.address, r.outcome, r.reason, time.monotonic() - t0,
                          r.driver, r.version, r.previous)
    log.info("push_gateway_done", gateway=gw.id, outcome=r.outcome.value, reason=r.reason,
             seconds=round(r.seconds, 3))
    return r


async def _install(conn: asyncssh.SSHClientConnection, gw: Gateway,
                   s: PushSettings) -> GatewayResult:
    remote = f"{gw.temp_dir.rstrip('/')}/{remote_name(s.bundle.name, secrets.token_hex(8))}"
    async with conn.start_sftp_client() as sftp:
        try:
            try:
                await sftp.put(str(s.bundle), remote)
            except asyncssh.SFTPError as exc:
                return GatewayResult(gw.id, gw.address, Outcome.ERROR,
                                     f"upload to {remote} failed: {clean(exc.reason)} "
                                     "(hint: `temp_dir` must be writable by the SSH user)")
            ran = await run_bounded(conn, install_command(gw, remote, s.wait_s))
        finally:
            with contextlib.suppress(asyncssh.Error, OSError):
                await asyncio.shield(sftp.remove(remote))
    answer = read_answer(ran.stdout, ran.stderr, ran.exit_status, ran.truncated)
    reason = answer.reason
    if answer.gateway is not None and answer.gateway != gw.id:
        reason = (f"{reason}; note: the box calls itself {answer.gateway!r} "
                  f"(inventory: {gw.id!r})").lstrip("; ")
    return GatewayResult(gw.id, gw.address, answer.outcome, reason, 0.0, answer.driver,
                         answer.version, answer.previous)


async def push_many(gateways: Sequence[Gateway], s: PushSettings,
                    progress: Progress) -> list[GatewayResult]:
    """Push to `gateways`, at most `s.parallel` at once; results in inventory order."""
    gate = asyncio.Semaphore(max(1, s.parallel))

    async def one(gw: Gateway) -> GatewayResult:
        async with gate:
            progress.started(gw)
            r = await push_one(gw, s)
            progress.finished(r)
            return r

    return list(await asyncio.gather(*(one(g) for g in gateways)))


async def push(gateways: Sequence[Gateway], s: PushSettings,
               progress: Callable[[], Progress] = Progress) -> list[GatewayResult]:
    """The whole push, canary first when asked."""
    shown = progress()
    if s.canary <= 0 or s.canary >= len(gateways):
        return await push_many(gateways, s, shown)
    first, rest = gateways[: s.canary], gateways[s.canary:]
    results = await push_many(first, s, shown)
    why = canary_stop(results)
    if why is not None:
        log.warning("push_canary_stopped", reason=why, skipped=len(rest))
        for r in skipped(rest, why):
            shown.finished(r)
            results.append(r)
        return results
    return results + await push_many(rest, s, shown)
