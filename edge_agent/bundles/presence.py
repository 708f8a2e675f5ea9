"""Whether an agent runs on this store: it writes `agent.json` (its pid) while it runs.

`edge-agent drivers install --wait` waits for a probation verdict only when one will come.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.contract.files import write_atomic

AGENT_FILE = "agent.json"


def mark_agent(root: Path, pid: int | None) -> None:
    """The running agent says so (pid) or that it stopped (None)."""
    root.mkdir(parents=True, exist_ok=True)
    if pid is None:
        (root / AGENT_FILE).unlink(missing_ok=True)
    else:
        write_atomic(root / AGENT_FILE, json.dumps({"pid": pid}).encode())


def agent_running(root: Path) -> bool:
    try:
        pid = int(json.loads((root / AGENT_FILE).read_text())["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return b"edge" in cmdline
