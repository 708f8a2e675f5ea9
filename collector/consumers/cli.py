"""`edge-collector consumers add|list|revoke|token|audit|types`.

A token is printed once, by `add` and `token`, on stdout and alone on its line (so a
script can take it: `... | tail -1`); nothing else ever prints it (`list` shows its id,
its first characters and its dates). A mistake prints `edge-collector: <what> (hint: …)`
and exits 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import click

from collector.consumers import ConsumerError, Consumers, open_consumers, parse_scope
from collector.consumers.tokens import PREFIX, parse_expiry
from collector.text import visible

_AGO = re.compile(r"^([1-9][0-9]{0,5})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"edge-collector: {visible(message)}", err=True)
    sys.exit(code)


def _out(*fields: object) -> None:
    click.echo("\t".join(visible(str(f)) for f in fields))


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def _consumers(store_url: str) -> Iterator[Consumers]:
    try:
        consumers = open_consumers(store_url)
    except ConsumerError as exc:
        _fail(str(exc))
    try:
        yield consumers
    except ConsumerError as exc:
        consumers.close()
        _fail(str(exc))
    consumers.close()


def _split(values: tuple[str, ...]) -> list[str]:
    """`--area a --area b,c` -> [a, b, c]."""
    return [part for v in values for part in v.split(",")]


def _expiry(value: str | None) -> datetime | None:
    try:
        return parse_expiry(value)
    except ConsumerError as exc:
        _fail(f"--expires: {exc}")


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    m = _AGO.match(value.strip())
    if m:
        return datetime.now(UTC) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        _fail(f"--since {value!r}: expected a span back from now (30m, 12h, 7d, 2w) or a "
              "date/time (2026-12-01, 2026-12-01T08:00Z)")
    return at if at.tzinfo else at.replace(tzinfo=UTC)


STORE = click.option("--store", "store_url", required=True, metavar="URL",
                     help="sqlite:///path.db (relative), sqlite:////abs/path.db or "
                          "postgresql://user@host:port/db")
EXPIRES = click.option("--expires", default=None, metavar="WHEN",
                       help="90d, 12h, 30m, 2w, a date (2027-06-30) or never (default)")


def _show_token(name: str, token_id: str, token: str, expires: datetime | None) -> None:
    click.echo(f"token {token_id} for {visible(name)}, expires {_when(expires)}; shown this "
               "once, keep it secret (send it as `Authorization: Bearer <token>`):", err=True)
    click.echo(token)


@click.group()
def consumers() -> None:
    """Consumers of the stream API: scopes, tokens, the audit of their reads."""
    from edge_agent.contract.logs import configure

    configure("warning")  # stdout is for the token and the listings; problems go to stderr


@consumers.command()
@STORE
@click.argument("name")
@click.option("--area", "areas", multiple=True, required=True, metavar="CODE",
              help="district (6 digits), street (9) or community (12) code, or all; "
                   "repeat or comma-separate")
@click.option("--type", "types", multiple=True, required=True, metavar="PATTERN",
              help="event type (gate.access), family (smoke.*) or *; repeat or comma-separate")
@EXPIRES
def add(store_url: str, name: str, areas: tuple[str, ...], types: tuple[str, ...],
        expires: str | None) -> None:
    """Add consumer NAME with its scope; prints its first token once."""
    try:
        scope = parse_scope(_split(areas), _split(types))
    except ConsumerError as exc:
        _fail(str(exc))
    when = _expiry(expires)
    with _consumers(store_url) as c:
        made = c.add(name, scope, when)
    click.echo(f"consumer {visible(made.consumer)} added: {scope.text()}", err=True)
    _show_token(made.consumer, made.id, made.token, made.expires_at)


@consumers.command()
@STORE
@click.argument("name")
@EXPIRES
def token(store_url: str, name: str, expires: str | None) -> None:
    """A new token for consumer NAME (its other tokens stay valid); printed once."""
    when = _expiry(expires)
    with _consumers(store_url) as c:
        made = c.new_token(name, when)
    _show_token(made.consumer, made.id, made.token, made.expires_at)


@consumers.command("list")
@STORE
def list_(store_url: str) -> None:
    """Consumers, their scopes and tokens (id, first characters, state, expiry, last use)."""
    with _consumers(store_url) as c:
        found = c.list_consumers()
    if not found:
        click.echo("no consumers")
        return
    now = datetime.now(UTC)
    for info in found:
        _out(info.name, info.scope.text(), f"created {_when(info.created_at)}")
        for t in info.tokens:
            _out("", t.id, f"{PREFIX}{t.hint}…", t.state(now), f"expires {_when(t.expires_at)}",
                 f"last used {_when(t.last_used_at)}")
        if not info.tokens:
            _out("", "no tokens")


@consumers.command()
@STORE
@click.argument("name")
@click.option("--token", "token_id", default=None, metavar="ID",
              help="only this token (tok_…, from `consumers list`); default: every token")
def revoke(store_url: str, name: str, token_id: str | None) -> None:
    """Revoke the tokens of consumer NAME (or one of them); effective within seconds."""
    with _consumers(store_url) as c:
        ids = c.revoke(name, token_id)
        delay = c.cache_s
    if not ids:
        click.echo(f"{visible(name)}: nothing to revoke (already revoked)")
        return
    click.echo(f"revoked {', '.join(ids)} of {visible(name)}; refused everywhere within "
               f"{delay:g} s")


@consumers.command()
@STORE
@click.option("--consumer", default=None, metavar="NAME", help="only this consumer")
@click.option("--since", default=None, metavar="WHEN",
              help="30m, 12h, 7d, 2w back from now, or a date/time")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
def audit(store_url: str, consumer: str | None, since: str | None, limit: int) -> None:
    """Reads by consumers, most recent first: time, consumer, route, scope, events."""
    start = _since(since)
    with _consumers(store_url) as c:
        rows = c.audit_rows(consumer, start, limit)
    if not rows:
        click.echo("no reads")
    for r in rows:
        _out(_when(r.at), r.consumer, r.route, r.scope, f"{r.events} events")


@consumers.command()
def types() -> None:
    """The event types a --type pattern can name (the event catalog)."""
    from edge_agent.contract.envelope import CATALOG

    for t, kind in sorted(CATALOG.items()):
        _out(t, kind.summary)
