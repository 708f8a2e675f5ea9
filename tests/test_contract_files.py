"""The shared durable file steps (edge_agent.contract.files): a refused or failed write
leaves the old file and no temporary file; modes; the lock serialises processes."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from edge_agent.contract.files import locked, write_atomic


def test_a_refused_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    write_atomic(path, "old\n", mode=0o640)
    assert path.read_text() == "old\n" and path.stat().st_mode & 0o777 == 0o640

    def refuse(tmp: Path) -> None:
        assert tmp.read_text() == "new\n" and tmp.parent == path.parent
        raise ValueError("no")

    with pytest.raises(ValueError):
        write_atomic(path, "new\n", check=refuse)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["acl"]


def test_keep_mode_keeps_an_existing_file_s_mode_and_a_new_file_gets_mode(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write_atomic(path, b"a", mode=0o600, keep_mode=True)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o640)
    write_atomic(path, b"b", mode=0o600, keep_mode=True)
    assert path.stat().st_mode & 0o777 == 0o640 and path.read_bytes() == b"b"
    write_atomic(path, b"c", mode=0o600)
    assert path.stat().st_mode & 0o777 == 0o600


def _append_under_lock(directory: str, rounds: int) -> None:
    for _ in range(rounds):
        with locked(Path(directory)):
            file = Path(directory) / "count"
            n = int(file.read_text()) if file.exists() else 0
            time.sleep(0.001)  # a read-modify-write that would lose updates unlocked
            write_atomic(file, str(n + 1))


def test_the_lock_serialises_read_modify_write_across_processes(tmp_path: Path) -> None:
    directory = tmp_path / "d"  # made by the lock
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_under_lock, args=(str(directory), 40)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert (directory / "count").read_text() == "120"
