"""Room kept for alarms on the disk that holds the outbox: `<outbox>.reserve`.

A file of `RESERVE_BYTES` zeros written next to the outbox while there is space. When the
disk fills up (another program's logs, a small partition), releasing it (unlink) gives
SQLite room to commit the alarms that are waiting and the deletes the collector's acks
ask for, which in turn free pages for what follows. It is written again once commits
succeed and the disk has twice its size free. It also lets the outbox open at start-up
on a disk that filled up meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from edge_agent.contract.logs import get_logger

log = get_logger("edge_agent.outbox.store")

#: Room kept for alarms: a few hundred alarm commits, or the WAL growth that lets acks
#: delete rows (and so free pages) on a full disk.
RESERVE_BYTES = 256 * 1024
_CHUNK = 64 * 1024


def reserve_path(outbox: Path) -> Path:
    return outbox.with_name(outbox.name + ".reserve")


def ensure(outbox: Path, size: int = RESERVE_BYTES) -> bool:
    """Write the reserve if it is missing or short; False when there is no room for it
    (nothing left behind). Blocking: call from the outbox thread."""
    path = reserve_path(outbox)
    with contextlib.suppress(OSError):
        if path.stat().st_size >= size:
            return True
    try:
        if shutil.disk_usage(outbox.parent).free < 2 * size:
            return False  # the room is needed now; try again later
    except OSError:
        return False
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            for _ in range(0, size, _CHUNK):
                f.write(b"\0" * _CHUNK)  # real blocks: a sparse file would hold no room
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.warning("outbox_reserve_not_written", path=str(path), error=str(exc),
                    hint="no room kept for alarms until space is freed on this disk")
        return False
    return True


def release(outbox: Path) -> bool:
    """Delete the reserve; True if there was one to give back."""
    path = reserve_path(outbox)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.error("outbox_reserve_not_released", path=str(path), error=str(exc))
        return False
    log.warning("outbox_reserve_released", path=str(path),
                hint="the disk under the outbox is full; its reserve is used for alarms")
    return True
