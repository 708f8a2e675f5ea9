"""`Webhooks`: the subscriptions, their cursors and counters, and the dead letters.

Synchronous (the store drivers are); the delivery loop calls it in worker threads. A
subscription's secret is returned by `add` and `rotate` once, and otherwise only to the
delivery loop (`Subscription.secret`): listings and the lag page use `public()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from collector.consumers.db import Db
from collector.consumers.scope import Scope, scope_from_db
from collector.consumers.tokens import parse_name
from collector.stream.position import Position, StoreKind
from collector.webhooks.plan import Batch, check_url
from collector.webhooks.signing import new_secret
from edge_agent.contract.logs import get_logger

log = get_logger("collector.webhooks")

_COLUMNS = ("name, consumer, url, secret, cursor_a, cursor_b, created_at, delivered, attempts, "
            "failures, dead_lettered, last_error, last_success_at")


class WebhookError(ValueError):
    """A management request that cannot be done; the message has a hint."""


@dataclass(frozen=True)
class Subscription:
    name: str
    consumer: str
    url: str
    secret: str
    cursor: Position
    created_at: datetime
    delivered: int
    attempts: int
    failures: int
    dead_lettered: int
    last_error: str | None
    last_success_at: datetime | None

    def public(self) -> dict[str, Any]:
        """What may be shown: everything but the secret and the raw cursor."""
        return {"name": self.name, "consumer": self.consumer, "url": self.url,
                "created_at": self.created_at.isoformat(), "delivered": self.delivered,
                "attempts": self.attempts, "failures": self.failures,
                "dead_lettered": self.dead_lettered, "last_error": self.last_error,
                "last_success_at": None if self.last_success_at is None
                else self.last_success_at.isoformat()}


@dataclass(frozen=True)
class DeadLetter:
    id: int
    webhook: str
    batch_id: str
    body: bytes
    events: int
    status: int
    error: str
    at: datetime


class Webhooks:
    def __init__(self, db: Db, kind: StoreKind,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.kind = kind
        self.clock = clock

    def _now(self) -> Any:
        return self.db.ts(datetime.fromtimestamp(self.clock(), UTC))

    def _sub(self, r: tuple[Any, ...]) -> Subscription:
        created = self.db.dt(r[6])
        assert created is not None
        return Subscription(r[0], r[1], r[2], r[3], Position(self.kind, int(r[4]), int(r[5])),
                            created, int(r[7]), int(r[8]), int(r[9]), int(r[10]), r[11],
                            self.db.dt(r[12]))

    # ------------------------------------------------------------------ management

    def add(self, name: str, consumer: str, url: str) -> tuple[Subscription, str]:
        """A new subscription from the start of the store; returns it and its secret
        (shown once)."""
        name, consumer = parse_name(name), parse_name(consumer)
        try:
            check_url(url)
        except ValueError as exc:
            raise WebhookError(str(exc)) from None
        secret = new_secret()
        start = Position.start(self.kind)
        with self.db.transaction() as tx:
            if not tx.run("SELECT 1 FROM consumers WHERE name = ?", (consumer,)):
                raise WebhookError(f"no consumer {consumer!r} (hint: `edge-collector consumers "
                                   "add` makes one; its scope is what the webhook delivers)")
            if tx.run("SELECT 1 FROM webhooks WHERE name = ?", (name,)):
                raise WebhookError(f"webhook {name!r} exists already (hint: `webhooks list`)")
            tx.run(f"INSERT INTO webhooks ({_COLUMNS}) VALUES "
                   "(?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0, NULL, NULL)",
                   (name, consumer, url, secret, start.a, str(start.b), self._now()))
        log.info("webhook_added", webhook=name, consumer=consumer, url=url)
        got = self.get(name)
        assert got is not None
        return got, secret

    def rotate(self, name: str) -> str:
        """A new secret, used from the next attempt on; returns it (shown once)."""
        secret = new_secret()
        with self.db.transaction() as tx:
            tx.run("UPDATE webhooks SET secret = ? WHERE name = ?", (secret, parse_name(name)))
            if tx.rowcount() != 1:
                raise _unknown(name)
        log.info("webhook_secret_rotated", webhook=name)
        return secret

    def remove(self, name: str) -> None:
        with self.db.transaction() as tx:
            tx.run("DELETE FROM webhook_dead_letters WHERE webhook = ?", (parse_name(name),))
            tx.run("DELETE FROM webhooks WHERE name = ?", (parse_name(name),))
            if tx.rowcount() != 1:
                raise _unknown(name)
        log.info("webhook_removed", webhook=name)

    def get(self, name: str) -> Subscription | None:
        rows = self.db.query(f"SELECT {_COLUMNS} FROM webhooks WHERE name = ?", (name,))
        return self._sub(rows[0]) if rows else None

    def all(self) -> list[Subscription]:
        return [self._sub(r) for r in
                self.db.query(f"SELECT {_COLUMNS} FROM webhooks ORDER BY name")]

    def scope_of(self, consumer: str) -> Scope | None:
        """The consumer's scope; None (the subscription pauses) when the consumer is gone
        or has no token that is neither revoked nor expired."""
        rows = self.db.query("SELECT c.areas, c.types, t.expires_at FROM consumers c JOIN "
                             "consumer_tokens t ON t.consumer = c.name WHERE c.name = ? AND "
                             "t.revoked_at IS NULL", (consumer,))
        now = datetime.fromtimestamp(self.clock(), UTC)
        for areas, types, expires in rows:
            until = self.db.dt(expires)
            if until is None or until > now:
                return scope_from_db(areas, types)
        return None

    # ------------------------------------------------------------------ the delivery loop

    def attempted(self, name: str, error: str) -> None:
        """One failed attempt (it will be retried, or dead-lettered)."""
        with self.db.transaction() as tx:
            tx.run("UPDATE webhooks SET attempts = attempts + 1, failures = failures + 1, "
                   "last_error = ? WHERE name = ?", (error[:500], name))

    def delivered(self, name: str, batch: Batch) -> None:
        """A 2xx: the cursor moves past the batch."""
        with self.db.transaction() as tx:
            tx.run("UPDATE webhooks SET attempts = attempts + 1, delivered = delivered + ?, "
                   "cursor_a = ?, cursor_b = ?, last_success_at = ? WHERE name = ?",
                   (batch.events, batch.last.a, str(batch.last.b), self._now(), name))

    def dead_letter(self, name: str, batch: Batch, status: int, error: str) -> None:
        """The batch was refused for good: kept for `replay`, and the cursor moves on."""
        with self.db.transaction() as tx:
            tx.run("INSERT INTO webhook_dead_letters (webhook, batch_id, body, events, status, "
                   "error, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (name, batch.id, batch.body, batch.events, status, error[:500], self._now()))
            tx.run("UPDATE webhooks SET attempts = attempts + 1, failures = failures + 1, "
                   "dead_lettered = dead_lettered + ?, last_error = ?, cursor_a = ?, "
                   "cursor_b = ? WHERE name = ?",
                   (batch.events, error[:500], batch.last.a, str(batch.last.b), name))
        log.warning("webhook_dead_lettered", webhook=name, batch_id=batch.id,
                    events=batch.events, status=status)

    def skip_to(self, name: str, pos: Position) -> None:
        """Nothing in scope up to `pos`: the cursor moves there (no rescans)."""
        with self.db.transaction() as tx:
            tx.run("UPDATE webhooks SET cursor_a = ?, cursor_b = ? WHERE name = ?",
                   (pos.a, str(pos.b), name))

    def dead_letters(self, name: str) -> list[DeadLetter]:
        """Those not replayed yet, oldest first."""
        rows = self.db.query("SELECT id, webhook, batch_id, body, events, status, error, at "
                             "FROM webhook_dead_letters WHERE webhook = ? AND replayed_at IS "
                             "NULL ORDER BY id", (name,))
        out = []
        for i, hook, bid, body, events, status, error, at in rows:
            when = self.db.dt(at)
            assert when is not None
            out.append(DeadLetter(int(i), hook, bid, bytes(body), int(events), int(status),
                                  error, when))
        return out

    def pending_dead_letters(self) -> dict[str, int]:
        """Batches waiting for a replay, per subscription."""
        return {r[0]: int(r[1]) for r in self.db.query(
            "SELECT webhook, count(*) FROM webhook_dead_letters WHERE replayed_at IS NULL "
            "GROUP BY webhook")}

    def replayed(self, letter_id: int) -> None:
        with self.db.transaction() as tx:
            tx.run("UPDATE webhook_dead_letters SET replayed_at = ? WHERE id = ?",
                   (self._now(), letter_id))

    def close(self) -> None:
        self.db.close()


def _unknown(name: str) -> WebhookError:
    return WebhookError(f"no webhook {name!r} (hint: `edge-collector webhooks list`)")
