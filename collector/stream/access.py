"""Who may read: the bearer token's consumer, and the audit of what it read.

`collector.consumers` (tokens stored hashed, scopes, the audit table) implements
`ConsumersLike`; this module only states the interface the API calls, so the stream
package does not depend on how consumers are stored.
"""

from __future__ import annotations

from typing import Protocol

from collector.stream.filter import ScopeLike


class ConsumerLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def scope(self) -> ScopeLike: ...


class ConsumersLike(Protocol):
    def authenticate(self, token: str) -> ConsumerLike | None:
        """None: unknown, revoked or expired."""

    def check(self, token: str) -> ConsumerLike | str:
        """`authenticate` saying why not: the consumer, or "unknown", "revoked" or
        "expired". An open stream calls it before each delivery and every second."""

    def audit(self, consumer: str, route: str, scope: ScopeLike, events: int) -> None: ...


def open_consumers(store_url: str) -> ConsumersLike:
    """The consumers of the store at `store_url` (`collector.consumers`)."""
    from collector.consumers import open_consumers as open_real

    return open_real(store_url)
