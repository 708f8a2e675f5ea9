"""The journal: one JSON line per install, rollback or refusal, in `<store>/journal.jsonl`.

Written (appended, fsynced) by whoever acts (the CLI, the agent's probation); read by the
agent, which turns each entry into one `gateway.driver_*` event and keeps its read offset in
`journal.offset` only after that event is committed to the outbox (a crash in between sends
the entry again: at least once, and the entry's `entry_id` lets the district drop a repeat).
Only complete lines (ending in a newline) are read: a torn last line waits to be whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from edge_agent.contract.files import write_atomic

JOURNAL = "journal.jsonl"
OFFSET = "journal.offset"
MAX_READ = 1024 * 1024


def append(root: Path, entry: dict[str, Any]) -> None:
    entry = {"time": round(time.time(), 3), **entry}
    line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_offset(root: Path) -> int:
    try:
        return int((root / OFFSET).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def write_offset(root: Path, offset: int) -> None:
    write_atomic(root / OFFSET, f"{offset}\n".encode())


def entry_id(offset: int, line: bytes) -> str:
    return hashlib.sha256(f"{offset}:".encode() + line).hexdigest()[:24]


def read_from(root: Path, offset: int) -> list[tuple[int, dict[str, Any]]]:
    """(offset after the entry, entry) of each complete entry after `offset`."""
    out: list[tuple[int, dict[str, Any]]] = []
    with contextlib.suppress(FileNotFoundError), open(root / JOURNAL, "rb") as fh:
        fh.seek(offset)
        data = fh.read(MAX_READ)
        pos = offset
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            start, pos = pos, pos + len(raw)
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entry["entry_id"] = entry_id(start, raw)
                out.append((pos, entry))
    return out
