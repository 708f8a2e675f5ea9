"""Durable file system steps: atomic file write, atomic symlink switch, directory fsync.

Each step is all-or-nothing under SIGKILL or power loss: write to a temporary name in the
same directory, fsync, `os.replace`, fsync the directory.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, flag: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flag, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_new(tmp, data, os.O_TRUNC)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def switch_symlink(link: Path, target: str | None) -> None:
    """Point `link` at `target` (relative) atomically; None removes it."""
    if target is None:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
    else:
        tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
    fsync_dir(link.parent)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    """Write `files` (relative posix paths, already checked safe) under `root`, fsynced."""
    dirs = {root}
    for rel, data in files.items():
        path = root.joinpath(*rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        dirs.add(path.parent)
        _write_new(path, data, os.O_EXCL)
    for d in dirs:
        fsync_dir(d)
