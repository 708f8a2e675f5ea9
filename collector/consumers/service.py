"""`Consumers`: add, list, revoke and authenticate consumers; audit their reads.

`authenticate` is on every request of the stream API, so it is one indexed lookup by the
token's SHA-256 (`consumer_tokens.hash`, unique), and its answer (the consumer, or
"no such token") is cached per token hash for `cache_s` (2 s). A revocation, made by this
process or another (the CLI), therefore takes effect within `cache_s`; an expiry is exact
(checked against the cached expiry on every call). The stored hash is compared with
`hmac.compare_digest` as well: the database's own lookup is no constant-time comparison,
but what it compares is a hash of a 256-bit secret, which timing cannot walk back to.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from collector.consumers.audit import AuditLog
from collector.consumers.db import Db
from collector.consumers.errors import ConsumerError
from collector.consumers.scope import Scope, ScopeParts, scope_from_db, scope_to_db
from collector.consumers.tokens import digest, hint, mint, parse_name, token_id, well_formed
from edge_agent.contract.logs import get_logger

log = get_logger("collector.consumers")

#: How long an authentication answer is reused: the most a revocation waits.
CACHE_S = 2.0
_CACHE_MAX = 4096
_LOOKUP = ("SELECT t.id, t.hash, t.expires_at, t.revoked_at, c.name, c.areas, c.types "
           "FROM consumer_tokens t JOIN consumers c ON c.name = t.consumer WHERE t.hash = ?")


#: Why a token reads nothing (`Consumers.check`).
Refusal = Literal["unknown", "revoked", "expired"]


@dataclass(frozen=True)
class Consumer:
    name: str
    scope: Scope


@dataclass(frozen=True)
class TokenInfo:
    """What `list` shows of a token: never the token, never its hash."""

    id: str
    hint: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class ConsumerInfo:
    name: str
    scope: Scope
    created_at: datetime
    tokens: tuple[TokenInfo, ...]


@dataclass(frozen=True)
class AuditRow:
    at: datetime
    consumer: str
    route: str
    scope: str
    events: int


@dataclass(frozen=True)
class NewToken:
    """A token just made: `token` is shown once and exists nowhere else."""

    consumer: str
    id: str
    token: str
    expires_at: datetime | None


@dataclass(frozen=True)
class _Cached:
    at: float
    #: None with a token_id: the token exists but was revoked; with none: unknown
    consumer: Consumer | None
    token_id: str | None
    expires_at: datetime | None


class Consumers:
    def __init__(self, db: Db, *, audit_retention_days: int | None = 90,
                 cache_s: float = CACHE_S, audit_flush_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.cache_s = cache_s
        self.clock = clock
        self._cache: dict[str, _Cached] = {}
        self._cache_lock = threading.Lock()
        self.audit_log = AuditLog(db, retention_days=audit_retention_days,
                                  flush_every_s=audit_flush_s, clock=clock)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # ------------------------------------------------------------------ the stream API's

    def authenticate(self, token: str) -> Consumer | None:
        """The consumer of a valid token; None when unknown, revoked or expired.

        Raises StoreUnavailable when the store cannot be read (answer 503, not 401)."""
        found = self.check(token)
        return found if isinstance(found, Consumer) else None

    def check(self, token: str) -> Consumer | Refusal:
        """`authenticate` saying why not: the consumer of a valid token, else "unknown",
        "revoked" or "expired". Cached as `authenticate` is: an open event stream calls it
        before each delivery and every second (a revocation ends it within `cache_s`).

        Raises StoreUnavailable when the store cannot be read."""
        if not isinstance(token, str) or not well_formed(token):
            return "unknown"
        key = digest(token)
        mono = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is None or mono - hit.at >= self.cache_s:
            hit = self._lookup(key, mono)
        if hit.consumer is None:
            return "revoked" if hit.token_id is not None else "unknown"
        if hit.expires_at is not None and hit.expires_at <= self._now():
            log.info("consumer_token_expired", consumer=hit.consumer.name, token_id=hit.token_id)
            return "expired"
        assert hit.token_id is not None
        self.audit_log.used(hit.token_id)
        return hit.consumer

    def _lookup(self, key: str, mono: float) -> _Cached:
        rows = self.db.query(_LOOKUP, (key,))
        found = _Cached(mono, None, None, None)
        if rows:
            tid, stored, expires, revoked, name, areas, types = rows[0]
            if hmac.compare_digest(str(stored), key):
                found = (_Cached(mono, None, tid, None) if revoked is not None
                         else _Cached(mono, Consumer(name, scope_from_db(areas, types)), tid,
                                      self.db.dt(expires)))
        with self._cache_lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()  # bounded; a flood of unknown tokens only costs lookups
            self._cache[key] = found
        return found

    def audit(self, consumer: str, route: str, scope: ScopeParts, events: int) -> None:
        """One read: a `consumer_read` log line now, an audit row within a second."""
        self.audit_log.record(consumer, route, Scope(scope.areas, scope.types).text(), events)

    # ------------------------------------------------------------------ management (CLI)

    def add(self, name: str, scope: Scope, expires_at: datetime | None = None) -> NewToken:
        """A new consumer with its first token; an existing name is an error."""
        name = parse_name(name)
        areas, types = scope_to_db(scope)
        with self.db.transaction() as tx:
            if tx.run("SELECT 1 FROM consumers WHERE name = ?", (name,)):
                raise ConsumerError(f"consumer {name!r} exists already (hint: `consumers token "
                                    f"NAME` gives it another token; `consumers list` shows it)")
            tx.run("INSERT INTO consumers (name, areas, types, created_at) VALUES (?, ?, ?, ?)",
                   (name, areas, types, self.db.ts(self._now())))
        made = self.new_token(name, expires_at)
        log.info("consumer_added", consumer=name, scope=scope.text(), token_id=made.id)
        return made

    def new_token(self, name: str, expires_at: datetime | None = None) -> NewToken:
        """Another token for an existing consumer (the others stay valid)."""
        name = parse_name(name)
        token, tid = mint(), token_id()
        with self.db.transaction() as tx:
            if not tx.run("SELECT 1 FROM consumers WHERE name = ?", (name,)):
                raise _unknown(name)
            tx.run("INSERT INTO consumer_tokens (id, consumer, hash, hint, created_at, "
                   "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (tid, name, digest(token), hint(token), self.db.ts(self._now()),
                    None if expires_at is None else self.db.ts(expires_at)))
        log.info("consumer_token_added", consumer=name, token_id=tid,
                 expires_at=None if expires_at is None else expires_at.isoformat())
        return NewToken(name, tid, token, expires_at)

    def revoke(self, name: str, token: str | None = None) -> list[str]:
        """Revoke one token (by id) or every active token of the consumer; returns the ids
        revoked. Effective within `cache_s` everywhere."""
        name = parse_name(name)
        now = self.db.ts(self._now())
        with self.db.transaction() as tx:
            if not tx.run("SELECT 1 FROM consumers WHERE name = ?", (name,)):
                raise _unknown(name)
            if token is None:
                ids = [r[0] for r in tx.run("SELECT id FROM consumer_tokens WHERE consumer = ? "
                                            "AND revoked_at IS NULL ORDER BY id", (name,))]
            else:
                got = tx.run("SELECT revoked_at FROM consumer_tokens WHERE consumer = ? AND "
                             "id = ?", (name, token))
                if not got:
                    raise ConsumerError(f"consumer {name!r} has no token {token!r} (hint: "
                                        "`consumers list` shows its token ids)")
                ids = [token] if got[0][0] is None else []
            for tid in ids:
                tx.run("UPDATE consumer_tokens SET revoked_at = ? WHERE id = ?", (now, tid))
        if ids:
            log.info("consumer_tokens_revoked", consumer=name, token_ids=ids,
                     effective_within_s=self.cache_s)
        return ids

    def list_consumers(self) -> list[ConsumerInfo]:
        consumers = self.db.query("SELECT name, areas, types, created_at FROM consumers "
                                  "ORDER BY name")
        tokens: dict[str, list[TokenInfo]] = {}
        for tid, owner, hnt, created, expires, revoked, used in self.db.query(
                "SELECT id, consumer, hint, created_at, expires_at, revoked_at, last_used_at "
                "FROM consumer_tokens ORDER BY created_at, id"):
            created_at = self.db.dt(created)
            assert created_at is not None
            tokens.setdefault(owner, []).append(TokenInfo(
                tid, hnt, created_at, self.db.dt(expires), self.db.dt(revoked), self.db.dt(used)))
        out = []
        for name, areas, types, created in consumers:
            created_at = self.db.dt(created)
            assert created_at is not None
            out.append(ConsumerInfo(name, scope_from_db(areas, types), created_at,
                                    tuple(tokens.get(name, ()))))
        return out

    def audit_rows(self, consumer: str | None = None, since: datetime | None = None,
                   limit: int = 1000) -> list[AuditRow]:
        """Most recent first (what is queued is written first)."""
        self.audit_log.flush()
        where, params = [], []
        if consumer is not None:
            where.append("consumer = ?")
            params.append(parse_name(consumer))
        if since is not None:
            where.append("at >= ?")
            params.append(self.db.ts(since))
        sql = ("SELECT at, consumer, route, scope, events FROM consumer_audit"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY at DESC, id DESC LIMIT ?")
        rows = self.db.query(sql, (*params, limit))
        out = []
        for at, name, route, scope, events in rows:
            when = self.db.dt(at)
            assert when is not None
            out.append(AuditRow(when, name, route, scope, int(events)))
        return out

    def flush(self) -> None:
        self.audit_log.flush()

    def close(self) -> None:
        self.audit_log.close()
        self.db.close()

    def __enter__(self) -> Consumers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unknown(name: str) -> ConsumerError:
    return ConsumerError(f"no consumer {name!r} (hint: `edge-collector consumers list`; "
                         "`consumers add` makes one)")
