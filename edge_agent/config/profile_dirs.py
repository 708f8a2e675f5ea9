"""The gateway YAML's `profiles:` search path, as the drivers' validators see it.

A device's `profile: NAME` is looked up while its entry is validated, deep inside
pydantic, where no argument can carry the gateway's own directories. So the loader
resolves `profiles:` (relative paths relative to the YAML file) and validates the
`devices:` list inside `using_profile_dirs(...)`; a driver's profile lookup reads
`profile_dirs()` and searches them before its shipped and site folders. Outside a
loader's `with` block the tuple is empty (a ContextVar: threads and tasks started
elsewhere never see another config's directories).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

__all__ = ["profile_dirs", "resolve_profile_dirs", "using_profile_dirs"]

_DIRS: ContextVar[tuple[Path, ...]] = ContextVar("edge_agent_profile_dirs", default=())


def profile_dirs() -> tuple[Path, ...]:
    """The `profiles:` directories of the config being loaded, in order (may be empty)."""
    return _DIRS.get()


@contextmanager
def using_profile_dirs(dirs: Sequence[Path]) -> Iterator[None]:
    token = _DIRS.set(tuple(dirs))
    try:
        yield
    finally:
        _DIRS.reset(token)


def resolve_profile_dirs(entries: Sequence[str], config_file: Path) -> list[Path]:
    """Absolute directories: `~` expanded, a relative entry relative to the YAML's folder."""
    base = config_file.absolute().parent
    out: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        out.append(path if path.is_absolute() else base / path)
    return out
