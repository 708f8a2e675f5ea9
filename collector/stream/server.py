"""Run the stream API from the collector's config until stopped (`edge-collector serve`,
or beside ingest in `edge-collector run --serve`)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence

from aiohttp import web

from collector.config import ApiConfig
from collector.stream.access import ConsumersLike, open_consumers
from collector.stream.api import StreamSettings, build_app
from collector.stream.cursor import CursorCodec
from collector.stream.reader import Reader, ReaderError, open_reader
from edge_agent.contract.http_guard import ConnectionLimits, GuardedSite
from edge_agent.contract.logs import get_logger

log = get_logger("collector.stream")


#: Adds another package's routes and tasks to the API's app (given the app and its reader).
Extension = Callable[[web.Application, Reader], None]


class ApiSetupError(RuntimeError):
    """The API cannot start; the message says what to fix."""


def _ssl(api: ApiConfig) -> ssl.SSLContext | None:
    if api.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(api.tls.cert_file, api.tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ApiSetupError(f"api.tls: {exc}") from None
    return ctx


def codec_for(api: ApiConfig) -> CursorCodec:
    key = api.cursor_key.reveal().get_secret_value().strip()
    if len(key) < 16:
        raise ApiSetupError("api.cursor_key: at least 16 characters (e.g. `openssl rand -hex "
                            "32 > FILE`)")
    return CursorCodec(key.encode())


async def serve_api(api: ApiConfig, store_url: str, stop: asyncio.Event,
                    consumers: ConsumersLike | None = None,
                    extensions: Sequence[Extension] = ()) -> None:
    """Serve until `stop` is set. Raises ApiSetupError or SecretError. `extensions` add
    routes and tasks of other packages to the app, sharing its reader (the webhooks' lag
    page and delivery loop, the fleet view: `edge-collector`'s `_extensions`)."""
    codec = codec_for(api)
    context = _ssl(api)
    try:
        reader: Reader = await asyncio.to_thread(open_reader, store_url)
    except (ReaderError, ValueError) as exc:
        raise ApiSetupError(f"stream API: {exc}") from None
    try:
        if consumers is None:
            try:
                consumers = open_consumers(store_url)
            except ImportError:
                raise ApiSetupError("stream API: collector.consumers is not installed") from None
        settings = StreamSettings(api.heartbeat_s, api.poll_s, api.behind_after_s)
        app = build_app(reader, codec, consumers, settings)
        for extend in extensions:
            extend(app, reader)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await runner.setup()
        try:
            site = GuardedSite(runner, api.host, api.port, ssl_context=context,
                               name="stream_api", limits=ConnectionLimits(
                                   per_address=api.max_connections_per_address,
                                   total=api.max_connections,
                                   head_timeout_s=api.request_head_timeout_s))
            try:
                await site.start()
            except OSError as exc:
                raise ApiSetupError(f"api.listen {api.listen}: {exc}") from None
            log.info("stream_api_started", listen=api.listen, tls=context is not None,
                     store=reader.kind)
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        reader.close()
