"""`edge-collector webhooks add|list|remove|replay|rotate`.

The secret is printed once, by `add` and `rotate`, alone on its stdout line (a script
takes it with `| tail -1`); `list` never shows it. Mistakes print
`edge-collector: <what> (hint: …)` and exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from typing import NoReturn

import click

from collector.consumers.errors import ConsumerError
from collector.text import visible
from collector.webhooks.db import WebhookDbError, open_webhook_db
from collector.webhooks.service import WebhookError, Webhooks

STORE = click.option("--store", "store_url", required=True, metavar="URL",
                     help="sqlite:///path.db or postgresql://user@host:port/db")


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"edge-collector: {visible(message)}", err=True)
    sys.exit(code)


def _out(*fields: object) -> None:
    click.echo("\t".join(visible(str(f)) for f in fields))


@contextlib.contextmanager
def _webhooks(store_url: str) -> Iterator[Webhooks]:
    from collector.store import parse_store_url

    try:
        kind = parse_store_url(store_url).kind
        hooks = Webhooks(open_webhook_db(store_url), "postgresql" if kind == "postgresql"
                         else "sqlite")
    except (ValueError, WebhookDbError) as exc:
        _fail(str(exc))
    try:
        yield hooks
    except (WebhookError, ConsumerError) as exc:
        hooks.close()
        _fail(str(exc))
    hooks.close()


def _show_secret(name: str, secret: str) -> None:
    click.echo(f"signing secret of webhook {visible(name)}; shown this once, give it to the "
               "receiver (it verifies Webhook-Signature with it):", err=True)
    click.echo(secret)


@click.group()
def webhooks() -> None:
    """Push subscriptions: signed CloudEvents batches POSTed to a department's URL."""
    from edge_agent.contract.logs import configure

    configure("warning")


@webhooks.command()
@STORE
@click.argument("name")
@click.option("--consumer", required=True, help="the consumer whose scope is delivered")
@click.option("--url", required=True, help="https://…; plain http only to 127.0.0.1/[::1]")
def add(store_url: str, name: str, consumer: str, url: str) -> None:
    """Add webhook NAME (from the start of the store); prints its secret once."""
    with _webhooks(store_url) as w:
        sub, secret = w.add(name, consumer, url)
    _show_secret(sub.name, secret)


@webhooks.command()
@STORE
@click.argument("name")
def rotate(store_url: str, name: str) -> None:
    """A new signing secret for NAME, used from the next attempt; prints it once."""
    with _webhooks(store_url) as w:
        secret = w.rotate(name)
    _show_secret(name, secret)


@webhooks.command()
@STORE
@click.argument("name")
def remove(store_url: str, name: str) -> None:
    """Remove webhook NAME (its cursor and dead letters too)."""
    with _webhooks(store_url) as w:
        w.remove(name)
    click.echo(f"removed {visible(name)}")


@webhooks.command("list")
@STORE
def list_(store_url: str) -> None:
    """Each webhook: consumer, URL, lag (events and seconds behind), counters."""
    from collector.stream.reader import ReaderError, open_reader
    from collector.webhooks.lag import lag_of

    try:
        reader = open_reader(store_url)
    except (ReaderError, ValueError) as exc:
        _fail(str(exc))
    try:
        with _webhooks(store_url) as w:
            lags = lag_of(w, reader)
    finally:
        reader.close()
    if not lags:
        click.echo("no webhooks")
    for lag in lags:
        s = lag.subscription
        behind = f"{'>=' if lag.capped else ''}{lag.events_behind}"
        _out(s.name, f"consumer {s.consumer}", s.url, "paused" if lag.paused else "active",
             f"behind {behind} events / {lag.seconds_behind:.0f} s",
             f"delivered {s.delivered}", f"failures {s.failures}",
             f"dead letters {lag.dead_letters}", f"last error {s.last_error or '-'}")


@webhooks.command()
@STORE
@click.argument("name")
def replay(store_url: str, name: str) -> None:
    """Send NAME's dead-lettered batches again (same body and Webhook-Id)."""
    from collector.webhooks.deliver import replay as run_replay

    with _webhooks(store_url) as w:
        done, left = asyncio.run(run_replay(w, name))
    click.echo(f"replayed {done} batches; {left} still failing")
    if left:
        sys.exit(1)
