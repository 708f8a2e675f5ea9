"""Durable file system steps of the driver store: atomic symlink switch, a new tree.

Each step is all-or-nothing under SIGKILL or power loss: write to a temporary name in the
same directory, fsync, `os.replace`, fsync the directory. Atomic file writes are the
shared `edge_agent.contract.files.write_atomic`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from edge_agent.contract.files import fsync_dir


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
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    for d in dirs:
        fsync_dir(d)
