"""What an operator can do about a store failure at run time, by its kind."""

from __future__ import annotations

import errno

from psycopg_pool import PoolTimeout

_ALWAYS = "nothing of this group is acked: its gateways keep the events and resend them"


def failure_hint(exc: BaseException) -> str:
    """A hint for a failed store transaction (`store_failed`), by the kind of failure."""
    text = str(exc).lower()
    if "disk is full" in text or "no space left" in text or (
            isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        what = "the disk under the store is full: free space or grow the file system"
    elif isinstance(exc, PoolTimeout) or "connection" in text or "server closed" in text:
        what = ("the database is unreachable: is PostgreSQL running, and does it accept "
                "this collector's connections (address, pg_hba.conf, max_connections)?")
    elif "locked" in text:
        what = ("another process holds the store locked (a collector, or a long sqlite3 "
                "session): end it")
    elif "readonly" in text or "read-only" in text or "permission" in text:
        what = "the store cannot be written: check the file's owner, mode and mount"
    else:
        what = "see the error"
    return f"{what}; {_ALWAYS}"
