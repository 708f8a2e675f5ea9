"""What a maintainer sees and keeps: live progress, the final table, the JSON report.

Progress goes to stderr: a rich progress bar on a terminal, one plain line per finished
gateway otherwise (logs, CI). The table goes to stdout. The JSON report (`--report`) is
written atomically (temp file + rename) and has a stable shape, `report_version` 1:
the bundle (name, bytes, sha256), the selector, timings, counts per outcome, and one
object per gateway (gateway, address, outcome, reason, seconds, driver, version,
previous). Text that came from a box is already cleaned (`outcome.clean`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edge_agent.contract.files import write_atomic
from edge_fleet.inventory import Gateway
from edge_fleet.outcome import GatewayResult, Outcome, clean
from edge_fleet.push import Progress as PushProgress
from edge_fleet.status import StatusResult

STYLE = {Outcome.INSTALLED: "green", Outcome.ALREADY_CURRENT: "green",
         Outcome.PENDING: "yellow", Outcome.REFUSED: "red", Outcome.ROLLED_BACK: "red",
         Outcome.UNREACHABLE: "magenta", Outcome.ERROR: "red", Outcome.SKIPPED: "dim"}


class LiveProgress(PushProgress):
    """A rich progress bar on a TTY, plain lines otherwise (both on `stream`)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream, highlight=False)
        self.rich = self.console.is_terminal
        self.done = 0
        self.total = total
        self.bar: Progress | None = None
        if self.rich:
            self.bar = Progress(TextColumn("push"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.description}"), TimeElapsedColumn(),
                                console=self.console, transient=True)
            self.task = self.bar.add_task("", total=total)
            self.bar.start()

    def finished(self, result: GatewayResult) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1,
                            description=f"{result.gateway} {result.outcome.value}")
        else:
            self.stream.write(f"[{self.done}/{self.total}] {result.gateway} "
                              f"{result.outcome.value} {result.seconds:.1f}s"
                              f"{' ' + result.reason if result.reason else ''}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def counts(results: Sequence[GatewayResult]) -> dict[str, int]:
    c = Counter(r.outcome.value for r in results)
    return {o.value: c.get(o.value, 0) for o in Outcome}


def push_table(results: Sequence[GatewayResult], console: Console) -> None:
    table = Table(title="edge-fleet push", title_justify="left")
    for col in ("gateway", "address", "outcome", "version", "reason", "s"):
        table.add_column(col, justify="right" if col == "s" else "left",
                         overflow="fold")
    for r in results:
        version = f"{r.previous or '-'} → {r.version}" if r.version else ""
        table.add_row(r.gateway, r.address, f"[{STYLE[r.outcome]}]{r.outcome.value}[/]",
                      escape(version), escape(r.reason), f"{r.seconds:.1f}")
    console.print(table)
    summary = ", ".join(f"{k} {v}" for k, v in counts(results).items() if v)
    console.print(f"{len(results)} gateway(s): {summary}")


def bundle_facts(bundle: Path) -> dict[str, Any]:
    data = bundle.read_bytes()
    return {"file": bundle.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def push_report(bundle: Path, selector: str, gateways: Sequence[Gateway],
                results: Sequence[GatewayResult], *, started_at: str, wall_s: float,
                parallel: int, canary: int, wait_s: float) -> dict[str, Any]:
    return {
        "report_version": 1, "command": "push", "bundle": bundle_facts(bundle),
        "to": selector, "gateways_selected": len(gateways), "started_at": started_at,
        "wall_s": round(wall_s, 3), "parallel": parallel, "canary": canary, "wait_s": wait_s,
        "ok": all(r.ok for r in results), "counts": counts(results),
        "gateways": [r.as_json() for r in results],
    }


def write_json(path: Path, report: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(report, ensure_ascii=False, indent=2) + "\n")


def status_table(results: Sequence[StatusResult], console: Console) -> None:
    table = Table(title="edge-fleet status", title_justify="left")
    for col in ("gateway", "version", "uplink", "devices", "online", "alarms", "outbox",
                "uptime", "error"):
        table.add_column(col, overflow="fold")
    for r in results:
        if not r.ok:
            table.add_row(r.gateway, "", "", "", "", "", "", "", f"[red]{escape(r.error)}[/]")
            continue
        s = r.summary()
        up = {True: "[green]up[/]", False: "[red]down[/]"}.get(s["uplink"], "?")
        uptime = f"{s['uptime_s'] / 3600:.1f}h" if isinstance(s["uptime_s"], int | float) else ""
        cells = [s["version"] or "", s["devices"] or 0, s["online"] or 0, s["open_alarms"] or 0,
                 s["outbox_events"] or 0]
        version, devices, online, alarms, outbox = (escape(clean(str(c), 40)) for c in cells)
        table.add_row(r.gateway, version, up, devices, online, alarms, outbox, uptime, "")
    console.print(table)
