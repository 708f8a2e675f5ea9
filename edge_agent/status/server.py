"""Run the status page inside the agent's event loop (one supervised task)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from edge_agent.contract.backoff import Backoff
from edge_agent.contract.http_guard import ConnectionLimits, GuardedSite
from edge_agent.contract.logs import get_logger
from edge_agent.status.app import StatusApp
from edge_agent.status.snapshot import AgentView

log = get_logger("edge_agent.status")

#: Bound of the wait between attempts to listen (edge_agent.contract.backoff).
RETRY_LISTEN_S = 30.0
#: A page for the few people of one site: a browser opens ~6 connections; the agent's
#: 1,024 file descriptors are for its devices, outbox and uplink first.
LIMITS = ConnectionLimits(per_address=16, total=128, head_timeout_s=10.0)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host, int(port)


async def serve_status(view: AgentView) -> None:
    """Serve until cancelled. A port that cannot be bound is logged and retried: the page
    is never a reason for the agent to stop collecting events."""
    host, port = split_listen(view.cfg.status_page.listen)
    status = StatusApp(view)
    runner = web.AppRunner(status.build(), access_log=None, handle_signals=False,
                           shutdown_timeout=1.0)
    await runner.setup()
    backoff = Backoff(RETRY_LISTEN_S, RETRY_LISTEN_S)
    try:
        while True:
            try:
                await GuardedSite(runner, host, port, reuse_address=True, limits=LIMITS,
                                  name="status_page").start()
                break
            except OSError as exc:
                wait = backoff.next_s()
                log.error("status_page_listen_failed", listen=f"{host}:{port}",
                          error=exc.strerror or str(exc), retry_s=round(wait, 1),
                          hint="another program uses the port; change status_page.listen")
                await asyncio.sleep(wait)
        log.info("status_page_listening", listen=f"{host}:{port}",
                 credential=status.credential.configured)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
