"""Opening a file, checking it, quarantining a bad one.

Invariants 9 and 10 of `edge_agent.outbox.store`: an existing file is checked on a read-only
connection (lock, the note left by an earlier run, `PRAGMA quick_check`, tables, meta)
and moved aside exactly as found if it is not a usable outbox; then it is opened
read-write, locked exclusively and switched to WAL. Errors that are not corruption
(locked, permissions, I/O) leave the file alone and raise `OutboxError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edge_agent.contract.logs import get_logger
from edge_agent.outbox._errors import (
    Corrupt,
    OutboxError,
    OutboxFullDiskError,
    OutboxLockedError,
    errname,
    is_corruption,
    is_locked,
)
from edge_agent.outbox._loss import parse_loss
from edge_agent.outbox._schema import COLUMNS, FORMAT_VERSION, Figures
from edge_agent.outbox._transaction import table_names

log = get_logger("edge_agent.outbox.store")

_SIDE_FILES = ("", "-wal", "-shm", "-journal")
#: WAL pages (4 KiB) after which a commit checkpoints them into the main file.
WAL_AUTOCHECKPOINT_PAGES = 256
#: Next to the outbox: the note that a run met corruption, so the next open quarantines.
_MARKER_SUFFIX = ".needs-quarantine"
_EPOCH_RE = re.compile(r"[0-9a-f]{16}")
_UINT_RE = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True, slots=True)
class Quarantine:
    """A bad file moved aside: where to, and why."""

    file: Path
    reason: str
    previous_epoch: str | None

    def report_data(self) -> dict[str, Any]:
        """The `data` of the gateway.data_loss event that reports it."""
        data: dict[str, Any] = {"reason": "outbox_corrupt", "evicted": 0, "by_type": {},
                                "quarantined_file": str(self.file),
                                "detail": self.reason[:300]}
        if self.previous_epoch:
            data["previous_epoch"] = self.previous_epoch
        return data


@dataclass(frozen=True, slots=True)
class Opened:
    """An outbox file opened read-write, locked, in WAL mode."""

    conn: sqlite3.Connection
    #: None: the file has no tables yet (new, or the one left after a quarantine).
    figures: Figures | None
    quarantine: Quarantine | None


def open_file(path: Path, connect: Callable[[Path], sqlite3.Connection],
              timeout: float) -> Opened:
    """Open `path` with `connect`, quarantining it first if it is not a usable outbox.
    `timeout`: how long the read-only check waits for another holder of the file."""
    if not path.exists():
        with contextlib.suppress(OSError):
            _side(path, _MARKER_SUFFIX).unlink()  # a note about a file that is gone
    moved: Quarantine | None = None
    if path.exists():
        try:
            _inspect(path, timeout)
        except Corrupt as exc:
            moved = _quarantine(path, exc)
    conn: sqlite3.Connection | None = None
    try:
        try:
            conn = connect(path)
            _lock(conn)
            figures = None if moved else _load(conn)
            _use_wal(conn, path)
        except sqlite3.Error as exc:
            raise open_error(exc, path) from exc
    except Corrupt as exc:  # passed read-only a moment ago; the next open() retries
        close_quietly(conn)
        raise OutboxError(f"outbox {path} failed its check: {exc.reason}") from exc
    except BaseException:
        close_quietly(conn)
        raise
    return Opened(conn, figures, moved)


def open_error(exc: sqlite3.Error, path: Path) -> Exception:
    """Classify an error met while opening: quarantine, or refuse and leave the file alone."""
    name = errname(exc)
    if is_corruption(exc):
        return Corrupt(f"{name}: {exc}")
    if is_locked(name):
        return OutboxLockedError(
            f"outbox {path} is locked by another process (another edge-agent is using it?): "
            f"{exc}")
    if name in ("SQLITE_FULL", "SQLITE_IOERR_SHMSIZE"):  # SHMSIZE: no room for a -shm
        return OutboxFullDiskError(f"cannot open outbox {path}: disk full ({exc}); free space "
                                   f"on {path.parent}")
    hint = " (does the directory exist, and may this user write it?)" if name.startswith(
        ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")) else ""
    return OutboxError(f"cannot open outbox {path}: {exc} [{name or type(exc).__name__}]{hint}")


def mark_for_quarantine(path: Path, note: str) -> None:
    """Leave a note so that the next open quarantines `path` instead of failing again."""
    with contextlib.suppress(OSError):
        _side(path, _MARKER_SUFFIX).write_text(note, "utf-8")


def close_quietly(conn: sqlite3.Connection | None) -> None:
    """Close a connection, ignoring errors."""
    if conn is not None:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


def fsync_dir(directory: Path) -> None:
    """Make a rename or a file creation in `directory` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _side(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _quarantine(path: Path, bad: Corrupt) -> Quarantine:
    """Move `path` and its -wal/-shm aside to `<name>.corrupt-<UTC time>`."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = _side(path, f".corrupt-{stamp}")
    n = 1
    while any(_side(dest, sfx).exists() for sfx in _SIDE_FILES):
        dest, n = _side(path, f".corrupt-{stamp}.{n}"), n + 1
    moved = []
    try:
        for sfx in _SIDE_FILES:
            src = _side(path, sfx)
            if src.exists():
                os.replace(src, _side(dest, sfx))
                moved.append(src.name)
    except OSError as exc:
        raise OutboxError(f"outbox {path} is corrupt ({bad.reason}) and could not be moved "
                          f"aside to {dest}: {exc}") from exc
    fsync_dir(path.parent)
    with contextlib.suppress(OSError):
        _side(path, _MARKER_SUFFIX).unlink()
    log.error("outbox_quarantined", path=str(path), quarantined_file=str(dest),
              reason=bad.reason, moved=moved, previous_epoch=bad.previous_epoch)
    return Quarantine(dest, bad.reason, bad.previous_epoch)


def _inspect(path: Path, timeout: float) -> None:
    """Check an existing file through a read-only connection: lock, the note of an earlier
    run, `PRAGMA quick_check`, tables and meta. Read-only, because closing a read-write
    connection checkpoints the WAL into the main file and deletes the -wal: a corrupt file
    must be quarantined exactly as found. Raises `Corrupt` or `OutboxError`."""
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True,
                               timeout=timeout, isolation_level=None)
        conn.execute("BEGIN")  # one read snapshot; BUSY here if another process holds it
        marker = _side(path, _MARKER_SUFFIX)
        if marker.exists():
            try:
                seen = marker.read_text("utf-8", errors="replace")[:300]
            except OSError:
                seen = ""
            raise Corrupt(f"an earlier run saw corruption: {seen or '?'}")
        rows = conn.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise Corrupt("quick_check: " + "; ".join(str(r[0])[:200] for r in rows[:3]))
        _load(conn)
    except sqlite3.Error as exc:
        raise open_error(exc, path) from exc
    finally:
        close_quietly(conn)


def _lock(conn: sqlite3.Connection) -> None:
    """Hold the file exclusively while open. Set before the first read, so WAL keeps its
    index in process memory (no -shm) and no other process can read or write."""
    conn.isolation_level = None
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("BEGIN IMMEDIATE")  # take the lock now (no write), not at the first append
    conn.execute("COMMIT")


def _use_wal(conn: sqlite3.Connection, path: Path) -> None:
    """WAL with `synchronous=FULL`: a returned commit survives power loss."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise OutboxError(f"outbox {path}: cannot switch to WAL (journal_mode={mode})")
    conn.execute("PRAGMA synchronous=FULL")
    # A small WAL: checkpointed every WAL_AUTOCHECKPOINT_PAGES pages (SQLite's default is
    # 1000, 4 MiB), so that on a full disk most of the outbox's space is in the main file,
    # where the pages acked rows free are reused by the next rows.
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")


def _load(conn: sqlite3.Connection) -> Figures | None:
    """Read and check the meta of an opened file; None for a file without tables (new)."""
    tables = set(table_names(conn))
    if not tables:
        return None
    meta: dict[str, Any] = {}
    if "meta" in tables:
        meta = {str(k): v for k, v in conn.execute("SELECT key, value FROM meta")}
    epoch_value = meta.get("epoch")
    epoch = epoch_value if isinstance(epoch_value, str) and _EPOCH_RE.fullmatch(
        epoch_value) else None
    if "meta" not in tables:
        raise Corrupt(f"meta table missing (tables: {sorted(tables)[:5]})")
    if "events" not in tables:
        raise Corrupt("events table missing", epoch)
    if meta.get("format") != str(FORMAT_VERSION):
        raise Corrupt(f"meta format={meta.get('format')!r}, expected '{FORMAT_VERSION}'", epoch)
    if epoch is None:
        raise Corrupt(f"meta epoch={epoch_value!r} is not 16 lowercase hex characters")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    if columns != set(COLUMNS):
        raise Corrupt(f"events columns {sorted(columns)} differ from {sorted(COLUMNS)}", epoch)
    next_seq = _uint(meta, "next_seq", 1, epoch)
    evicted_total = _uint(meta, "evicted_total", 0, epoch)
    count, total, max_seq = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(seq), 0) FROM events").fetchone()
    if max_seq >= next_seq:
        raise Corrupt(f"meta next_seq={next_seq} but seq {max_seq} is stored", epoch)
    loss = None
    if "loss_report" in meta:
        loss = parse_loss(meta["loss_report"], next_seq, evicted_total, epoch)
        for first, last in loss.seq_ranges:
            if conn.execute("SELECT 1 FROM events WHERE seq BETWEEN ? AND ? LIMIT 1",
                            (first, last)).fetchone():
                raise Corrupt(f"meta loss_report names seqs {first}-{last} but one of them "
                              "is stored", epoch)
    return Figures(epoch, next_seq, evicted_total, int(count), int(total), loss)


def _uint(meta: dict[str, Any], key: str, minimum: int, epoch: str | None) -> int:
    value = meta.get(key)
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not _UINT_RE.fullmatch(text) or int(text) < minimum:
        raise Corrupt(f"meta {key}={value!r} is not an integer >= {minimum}", epoch)
    return int(text)
