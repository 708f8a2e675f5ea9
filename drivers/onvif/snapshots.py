"""A bounded on-disk ring of camera snapshots: `<dir>/<ULID>.jpg`.

The status page serves a snapshot by its id; camera alarm events reference it as
`data.snapshot = {"id", "bytes", "sha256"}`. Writes are atomic (a `.tmp` file, fsync,
rename), so a reader never sees half an image. After each write the oldest files go
until at most `max_files` files and `max_bytes` bytes remain; ULIDs sort by time, so
"oldest" is simply the smallest name. No URL, user or camera credential is stored:
the file holds the JPEG bytes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edge_agent.contract.envelope import new_ulid
from edge_agent.contract.logs import get_logger

__all__ = ["SNAPSHOT_ID", "SnapshotRef", "SnapshotRing", "is_jpeg"]

log = get_logger("drivers.onvif.snapshots")

SNAPSHOT_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


@dataclass(frozen=True)
class SnapshotRef:
    id: str
    bytes: int
    sha256: str

    def as_data(self) -> dict[str, object]:
        return {"id": self.id, "bytes": self.bytes, "sha256": self.sha256}


def is_jpeg(data: bytes) -> bool:
    return len(data) > 4 and data[:3] == b"\xff\xd8\xff"


class SnapshotRing:
    """One ring per gateway directory; safe to share between cameras (one lock)."""

    def __init__(self, directory: Path, *, max_bytes: int, max_files: int) -> None:
        self.dir, self.max_bytes, self.max_files = directory, max_bytes, max_files
        self._lock = asyncio.Lock()

    async def store(self, jpeg: bytes) -> SnapshotRef:
        """Write one JPEG; raises ValueError for data that is not a JPEG, OSError for disk."""
        if not is_jpeg(jpeg):
            raise ValueError("not a JPEG image")
        if len(jpeg) > self.max_bytes:
            raise ValueError(f"image of {len(jpeg)} bytes exceeds the ring ({self.max_bytes})")
        snapshot_id = new_ulid()
        async with self._lock:  # hashing and writing a few MiB: in a thread, not the loop
            digest = await asyncio.to_thread(self._write, snapshot_id, jpeg)
        return SnapshotRef(snapshot_id, len(jpeg), digest)

    def path(self, snapshot_id: str) -> Path | None:
        """The file of an id, or None for a malformed id (never a path outside the ring)."""
        if not SNAPSHOT_ID.match(snapshot_id):
            return None
        return self.dir / f"{snapshot_id}.jpg"

    def _write(self, snapshot_id: str, jpeg: bytes) -> str:
        """Store the file (atomically) and trim the ring; returns the image's sha256."""
        digest = hashlib.sha256(jpeg).hexdigest()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        final = self.dir / f"{snapshot_id}.jpg"
        tmp = self.dir / f".{snapshot_id}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(jpeg)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        self._trim()
        return digest

    def _trim(self) -> None:
        files: list[tuple[str, int]] = []
        for entry in os.scandir(self.dir):
            name = entry.name
            if name.endswith(".jpg") and SNAPSHOT_ID.match(name[:-4]):
                try:
                    files.append((name, entry.stat().st_size))
                except FileNotFoundError:
                    continue
        files.sort()
        total = sum(size for _, size in files)
        removed = 0
        while files and (len(files) > self.max_files or total > self.max_bytes):
            name, size = files.pop(0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / name)
            total -= size
            removed += 1
        if removed:
            log.debug("snapshots_trimmed", removed=removed, files=len(files), bytes=total)
