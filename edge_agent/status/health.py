"""`/healthz`: is the agent doing its job? For systemd, monitoring and the page footer.

Unhealthy (503) when events wait in memory and none was committed for `stall_s` (the
outbox is stuck: disk failing, SQLite locked), or when the outbox's filesystem is full.
That the loop answers at all is the liveness part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from edge_agent.status.snapshot import AgentView, DiskGauge

STALL_S = 60.0
DISK_FREE_MIN = 1024 * 1024


@dataclass
class Health:
    view: AgentView
    disk: DiskGauge
    stall_s: float = STALL_S
    _committed: int = -1
    _progress_at: float = field(default_factory=time.monotonic)

    def check(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        p = self.view.pipeline
        if p.counters.committed != self._committed or p.pending == 0:
            self._committed, self._progress_at = p.counters.committed, now
        problems: list[str] = []
        stalled = now - self._progress_at
        if stalled > self.stall_s:
            problems.append(f"pipeline stuck: {p.pending} events waiting, nothing committed "
                            f"for {stalled:.0f} s (check the disk holding the outbox)")
        if p.disk_full or not self.view.outbox.is_open:
            problems.append(f"disk full: the outbox at {self.view.outbox.path} cannot commit "
                            f"({p.pending} events waiting in memory, alarms first; "
                            f"{p.counters.dropped} dropped); free space on that disk")
        disk = self.disk.read()
        free = disk.get("free_bytes")
        if isinstance(free, int) and free < DISK_FREE_MIN:
            problems.append(f"disk full: {free} bytes free at {disk['path']}")
        body: dict[str, Any] = {
            "status": "unhealthy" if problems else "ok", "problems": problems,
            "pending": p.pending, "committed": p.counters.committed,
            "uplink_connected": self.view.uplink.status.connected,
            "disk_full": p.disk_full or not self.view.outbox.is_open,
        }
        return not problems, body
