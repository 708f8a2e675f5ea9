"""`edge-collector`: run the collector, and look into its store (gaps, quarantine, stats).

Everything printed from the store goes through `_out`, which escapes control and
format characters (`collector.text.visible`): a payload cannot drive the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from collector.store import Store, StoreError, migrate_store, open_store
from collector.text import visible
from edge_agent.contract.logs import configure
from edge_agent.contract.settings import (
    ConfigError,
    SecretError,
    check_model_secrets,
    load_model,
)

if TYPE_CHECKING:
    from collector.config import ApiConfig, CollectorConfig
    from collector.stream.server import Extension


def _out(*fields: object) -> None:
    """One tab-separated line; each field with its invisible characters escaped."""
    click.echo("\t".join(visible(str(f)) for f in fields))


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"edge-collector: {message}", err=True)
    sys.exit(code)


@click.group()
def main() -> None:
    """District collector: ingest gateway events into the district store."""


def _load(config_path: Path) -> CollectorConfig:
    """The config, or every mistake as `PATH:LINE:COL: key: message` and exit 2."""
    from collector.config import CollectorConfig

    try:
        return load_model(config_path, CollectorConfig)
    except ConfigError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        sys.exit(2)


@main.command()
@click.argument("config_path", metavar="PATH", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--skip-secrets", is_flag=True,
              help="check the YAML only, not the files it names (secrets, TLS files, the "
                   "gateways registry, the cursor key): for a config checked away from its "
                   "collector")
def validate(config_path: Path, skip_secrets: bool) -> None:
    """Check a collector YAML completely, starting nothing; exit 2 on mistakes.

    Also checks what `run` would refuse: the secret and TLS files it names (exist, regular
    file, size, readable by this user; a warning if group or others may read them), the
    gateways registry file, the stream API's cursor key (read: at least 16 characters) and
    that a managed broker's mosquitto is installed. Run it as the collector's user."""
    from collector.managed_broker import ManagedBroker, ManagedBrokerError
    from collector.registry import RegistryFile
    from collector.stream.server import ApiSetupError, codec_for

    cfg = _load(config_path)
    configure("warning")  # the registry's "loaded" line is not news here
    errors, warnings = ([], []) if skip_secrets else check_model_secrets(config_path, cfg)
    problems = [str(issue) for issue in errors]
    if cfg.gateways is not None and not skip_secrets:
        try:
            RegistryFile(cfg.gateways.file, cfg.gateways.unregistered)
        except ConfigError as exc:
            problems += [f"gateways.file: {issue}" for issue in exc.issues]
    if cfg.api is not None and not skip_secrets and not any(
            i.key.startswith("api.cursor_key") for i in errors):
        try:
            codec_for(cfg.api)
        except (ApiSetupError, SecretError) as exc:
            problems.append(f"{config_path}: {exc}")
    if cfg.managed_broker is not None:
        try:
            ManagedBroker(cfg.managed_broker, cfg.collector.id).binary()
        except ManagedBrokerError as exc:
            problems.append(f"{config_path}: {exc}")
    for issue in warnings:
        click.echo(issue.as_warning(), err=True)
    if problems:
        for line in problems:
            click.echo(line, err=True)
        _fail(f"{len(problems)} problem(s) in {config_path}; nothing was started")
    tail = f", {len(warnings)} warning(s)" if warnings else ""
    click.echo(f"{config_path}: ok{tail}")


@main.command()
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="collector YAML")
@click.option("--serve", "with_api", is_flag=True,
              help="also serve the event stream API (the config's `api:` section)")
def run(config_path: Path, with_api: bool) -> None:
    """Ingest until SIGINT/SIGTERM (with --serve or `api.enabled`, also the stream API)."""
    from collector.app import SetupError, serve
    from collector.managed_broker import ManagedBrokerError
    from collector.stream.server import ApiSetupError, serve_api
    from collector.webhooks.db import WebhookDbError

    cfg = _load(config_path)
    configure(cfg.log_level)
    api = cfg.api
    if with_api and api is None:
        _fail(f"{config_path}: --serve needs an `api:` section (listen, cursor_key)")

    async def main_async() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if api is None or not (with_api or api.enabled):
            await serve(cfg, stop)
            return
        tasks = [asyncio.create_task(serve(cfg, stop)),
                 asyncio.create_task(serve_api(api, cfg.store, stop,
                                               extensions=_extensions(api, cfg)))]
        try:  # either one failing stops both
            for done in asyncio.as_completed(tasks):
                await done
                stop.set()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(main_async())
    except (StoreError, SecretError, SetupError, ManagedBrokerError, ApiSetupError,
            WebhookDbError) as exc:
        _fail(str(exc))


@main.command("serve")
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="collector YAML")
def serve_command(config_path: Path) -> None:
    """Serve the event stream API (the config's `api:` section) until SIGINT/SIGTERM."""
    from collector.stream.server import ApiSetupError, serve_api
    from collector.webhooks.db import WebhookDbError

    cfg = _load(config_path)
    configure(cfg.log_level)
    if cfg.api is None:
        _fail(f"{config_path}: no `api:` section (listen, cursor_key); see docs/stream-api.md")
    api = cfg.api

    async def main_async() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_api(api, cfg.store, stop, extensions=_extensions(api, cfg))

    try:
        asyncio.run(main_async())
    except (SecretError, ApiSetupError, WebhookDbError) as exc:
        _fail(str(exc))


@contextlib.contextmanager
def _open(url: str) -> Iterator[Store]:
    """An existing store for the inspection commands; a bad URL ends the command."""
    try:
        store = open_store(url, create=False)
    except StoreError as exc:
        _fail(str(exc))
    try:
        yield store
    finally:
        store.close()


STORE = click.option("--store", "store_url", required=True, metavar="URL",
                     help="sqlite:///path.db (relative), sqlite:////abs/path.db or "
                          "postgresql://user@host:port/db")


@main.command()
@STORE
def migrate(store_url: str) -> None:
    """Create or upgrade the store's schema (PostgreSQL: numbered SQL migrations);
    safe to run again."""
    try:
        applied = migrate_store(store_url)
    except StoreError as exc:
        _fail(str(exc))
    for name in applied:
        click.echo(f"applied {name}")
    click.echo("schema up to date")


@main.command()
@STORE
@click.option("--gateway", default=None, help="only this gateway")
def gaps(store_url: str, gateway: str | None) -> None:
    """Missing seq ranges per gateway stream, explained (data_loss) or not (lost)."""
    with _open(store_url) as store:
        found = store.gaps(gateway)
    if not found:
        click.echo("no gaps")
        return
    for g in found:
        kind = f"explained ({g.reason})" if g.explained else "UNEXPLAINED"
        _out(g.gateway, g.epoch, f"{g.from_seq}-{g.to_seq}", f"{g.size} events", kind)
    lost = sum(g.size for g in found if not g.explained)
    evicted = sum(g.size for g in found if g.explained)
    click.echo(f"total: {lost} unexplained, {evicted} explained")


@main.command()
@STORE
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100_000))
def quarantine(store_url: str, limit: int) -> None:
    """Most recent quarantined payloads and why."""
    with _open(store_url) as store:
        entries = store.quarantined(limit)
    if not entries:
        click.echo("quarantine is empty")
    for q in entries:
        _out(f"#{q.id}", q.received_at, q.gateway_from_topic or "-", f"{q.raw_size} bytes",
             q.reason)


@main.command()
@STORE
def stats(store_url: str) -> None:
    """Events, quarantine (kept and dropped) and per-stream watermarks."""
    with _open(store_url) as store:
        st = store.stats()
    by_cause: dict[str, int] = {}
    for d in st.dropped:
        by_cause[d.cause] = by_cause.get(d.cause, 0) + d.rows
    dropped = ", ".join(f"{cause} {n}" for cause, n in sorted(by_cause.items())) or "0"
    click.echo(f"events: {st.events}\nquarantined: {st.quarantined} ({st.quarantine_bytes} bytes)"
               f"\nquarantine dropped: {dropped}\n"
               f"gateways: {st.gateways}\nlast received: {st.last_received_at or '-'}")
    for s in st.streams:
        _out(s.gateway, s.epoch, f"high {s.high_seq}", f"received {s.received}",
             f"contiguous {s.contiguous_through}", f"missing {s.missing}", f"last {s.last_seen}")
    for d in st.dropped:
        _out("dropped", d.gateway or "-", d.cause, f"{d.rows} entries", f"{d.bytes} bytes",
             f"last {d.last_at}")


def _extensions(api: ApiConfig, cfg: CollectorConfig) -> list[Extension]:
    """What the API's process serves beside the stream: the webhooks' lag page and delivery
    loop, and the fleet view when `fleet.enabled`."""
    from collector.webhooks.web import extension

    token = None if api.operator_token is None else \
        api.operator_token.reveal().get_secret_value().strip()
    extensions = [extension(cfg.store, token or None)]
    if cfg.fleet.enabled:
        from collector.fleet.projector import FleetSettings
        from collector.fleet.routes import add_fleet_routes

        fleet = FleetSettings(cfg.fleet.heartbeat_s, cfg.fleet.rebuild_s, cfg.fleet.poll_s,
                              cfg.fleet.gaps_s)
        extensions.append(lambda app, _reader: add_fleet_routes(app, cfg.store, fleet))
    return extensions


def _add_consumers() -> None:
    from collector.consumers.cli import consumers
    from collector.provisioning.cli import provision
    from collector.webhooks.cli import webhooks

    main.add_command(consumers)
    main.add_command(webhooks)
    main.add_command(provision)


_add_consumers()
