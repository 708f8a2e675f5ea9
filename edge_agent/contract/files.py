"""Durable file steps shared by the agent, the collector and edge-fleet.

Each write is all-or-nothing under SIGKILL or power loss: the new content goes to a
temporary name in the same directory, is fsynced, optionally checked, then `os.replace`d
over the old file, and the directory is fsynced. A failed step leaves the old file as it
was and no temporary file behind. `locked` serialises writers of a directory across
processes with `flock` on a lock file (released when the process dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["fsync_dir", "locked", "write_atomic"]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644,
                 keep_mode: bool = False, check: Callable[[Path], None] | None = None) -> None:
    """Replace `path` by `data` (str: UTF-8) atomically.

    `mode` is the new file's mode; with `keep_mode` an existing file keeps its mode and
    group instead. `check(tmp)` may refuse the new content by raising (nothing changes)."""
    old = None
    if keep_mode:
        with contextlib.suppress(FileNotFoundError):
            old = path.stat()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, old.st_mode & 0o7777 if old is not None else mode)
        if old is not None:
            with contextlib.suppress(PermissionError):
                os.chown(tmp, -1, old.st_gid)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def locked(directory: Path, *, dir_mode: int = 0o750, name: str = ".lock") -> Iterator[None]:
    """Hold an exclusive lock on `directory` (created if missing) across processes.
    Raises OSError when the directory or its lock file cannot be made."""
    directory.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
