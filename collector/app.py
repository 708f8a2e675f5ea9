"""Compose one collector process: store, optional managed broker, ingest loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Callable

from collector.config import CollectorConfig
from collector.inbox import Bounds
from collector.ingest import Collector
from collector.managed_broker import ManagedBroker
from collector.provisioning.files import Provisioning
from collector.registry import Registry, RegistryFile
from collector.service import announce
from collector.store import Store, open_store
from collector.validate import Limits
from edge_agent.contract.logs import get_logger
from edge_agent.contract.mqtt import Endpoint, tls_context
from edge_agent.contract.settings import ConfigError

log = get_logger("collector.app")


class SetupError(RuntimeError):
    """Something in the configuration cannot work; the message says what to fix."""


def check_tls(endpoint: Endpoint) -> None:
    """Load the TLS files now, so a wrong path stops the start instead of every reconnect."""
    if endpoint.use_tls:
        try:
            tls_context(endpoint.tls)
        except (OSError, ssl.SSLError) as exc:
            raise SetupError(f"broker TLS settings: {exc}") from None


def open_registry(cfg: CollectorConfig) -> RegistryFile | None:
    """The gateway registry file, read now (SetupError listing every issue), reloaded on SIGHUP."""
    registry: RegistryFile | None = None
    if cfg.gateways is None:
        log.warning("gateway_registry_missing",
                    hint="without a `gateways:` file any gateway may claim any district, street "
                         "or community; see docs/config.md")
    else:
        try:
            registry = RegistryFile(cfg.gateways.file, cfg.gateways.unregistered)
        except ConfigError as exc:
            raise SetupError("gateways file:\n" + str(exc)) from None
    # SIGHUP (systemctl reload) must never end the process, registry or not.
    on_hup = registry.request_reload if registry is not None else _nothing_to_reload
    with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):  # not main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
    return registry


def _reload_broker_on_hup(broker: ManagedBroker, registry: RegistryFile | None) -> None:
    """SIGHUP also rewrites the managed broker's files: newly provisioned or revoked
    gateways take effect without a restart."""
    def on_hup() -> None:
        if registry is not None:
            registry.request_reload()
        broker.reload()

    with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):  # not main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)


def _nothing_to_reload() -> None:
    log.info("reload_ignored", reason="no gateways file configured")


def build_collector(cfg: CollectorConfig, store: Store, endpoint: Endpoint,
                    registry: RegistryFile | None = None) -> Collector:
    share_group = cfg.broker.share_group if cfg.broker is not None else None
    current: Callable[[], Registry | None] = (
        registry.current if registry is not None else lambda: None)
    return Collector(
        store, endpoint, client_id=cfg.client_id, share_group=share_group,
        limits=Limits(cfg.ingest.max_payload_bytes, cfg.ingest.max_events_per_batch),
        backoff=cfg.reconnect, ack_timeout_s=cfg.ingest.ack_timeout_s, registry=current,
        collector_id=cfg.collector.id, summary_interval_s=cfg.ingest.summary_interval_s,
        bounds=Bounds(queued_payloads=cfg.ingest.max_queued_payloads,
                      queued_bytes=cfg.ingest.max_queued_bytes),
    )


async def serve(cfg: CollectorConfig, stop: asyncio.Event) -> None:
    """Run until `stop` is set, then shut down in order: ingest, broker, store.

    Raises StoreError, SecretError, SetupError or ManagedBrokerError for problems an
    operator must fix.
    """
    registry = open_registry(cfg)
    store = open_store(cfg.store, quarantine=cfg.quarantine,
                       retention_days=cfg.store_retention_days)
    broker: ManagedBroker | None = None
    try:
        if cfg.broker is not None:
            endpoint = cfg.broker.endpoint()
            check_tls(endpoint)
        else:
            assert cfg.managed_broker is not None
            broker = ManagedBroker(cfg.managed_broker, cfg.collector.id,
                                   Provisioning.from_config(cfg))
            await broker.start()
            endpoint = broker.endpoint()
            if broker.provisioning is not None:
                _reload_broker_on_hup(broker, registry)
        log.info("collector_started", collector=cfg.collector.id, broker=endpoint.describe(),
                 managed=broker is not None)
        collector = build_collector(cfg, store, endpoint, registry)
        announcer = asyncio.create_task(announce(collector, stop))  # systemd: READY, pings
        try:
            await collector.run(stop)
        finally:
            announcer.cancel()
    finally:
        if broker is not None:
            await broker.stop()
        store.close()
