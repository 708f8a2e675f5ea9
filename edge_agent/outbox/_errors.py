"""The outbox's exceptions, and what a SQLite error's name says.

The public exceptions are re-exported by `edge_agent.outbox.store`; import them from there.
"""

from __future__ import annotations


class OutboxError(Exception):
    """Anything the outbox cannot do; the message names the file."""


class OutboxLockedError(OutboxError):
    """Another process holds the outbox file."""


class OutboxFullDiskError(OutboxError):
    """The disk (or SQLite's page limit) is full; the append was not written."""


class Corrupt(Exception):
    """The file is not a usable outbox: quarantine it."""

    def __init__(self, reason: str, previous_epoch: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.previous_epoch = previous_epoch


def errname(exc: BaseException) -> str:
    """SQLite's name of the error (`SQLITE_FULL`, ...), or "" if it has none."""
    return str(getattr(exc, "sqlite_errorname", "") or "")


def is_corruption(exc: BaseException) -> bool:
    name = errname(exc)
    return (name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB"
            or name == "SQLITE_IOERR_SHORT_READ")


def is_locked(name: str) -> bool:
    """The error named `name` means another connection holds the file."""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
