"""Run the status page inside the agent's event loop (one supervised task)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from edge_agent.contract.backoff import Backoff
from edge_agent.contract.logs import get_logger
from edge_agent.status.app import StatusApp
from edge_agent.status.snapshot import AgentView

log = get_logger("edge_agent.status")

#: Bound of the wait between attempts to listen (edge_agent.contract.backoff).
RETRY_LISTEN_S = 30.0


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
                await web.TCPSite(runner, host, port, reuse_address=True).start()
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
