"""Store URLs: `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, `postgresql://…`.

The SQLite form follows the SQLAlchemy convention: what follows `sqlite:///` is the
path, so a fourth slash makes it absolute. Relative paths are relative to the
working directory of the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

_SQLITE = "sqlite:///"
_POSTGRES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class StoreUrl:
    kind: Literal["sqlite", "postgresql"]
    path: Path | None = None
    dsn: str | None = None

    def describe(self) -> str:
        """Safe to log: no password."""
        if self.kind == "sqlite":
            return f"sqlite:{self.path}"
        return safe_postgres_url(self.dsn or "")


def parse_store_url(url: str) -> StoreUrl:
    """Raise ValueError with a fix hint for anything that is not a supported store URL."""
    if url.startswith(_SQLITE):
        rest = url[len(_SQLITE):]
        if not rest or rest.endswith("/") or "?" in rest:
            raise ValueError("expected sqlite:///relative/file.db or sqlite:////absolute/file.db")
        return StoreUrl("sqlite", path=Path(rest))
    if url.startswith(_POSTGRES):
        return StoreUrl("postgresql", dsn=url)
    raise ValueError("expected sqlite:///relative/file.db, sqlite:////absolute/file.db "
                     "or postgresql://user@host/db")


def safe_postgres_url(dsn: str) -> str:
    """`postgresql://user@host:port/db`: no password, no query (it may hold one)."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://…"
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}{host}{port}{parts.path}"
