"""`edge-fleet`: push a signed driver bundle, read status and logs, over SSH.

Exit codes: 0 every gateway ok, 1 some gateway not ok (the table and report say which),
2 a usage or config mistake (a message naming the place and a hint, never a traceback;
nothing was touched).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console

from edge_agent.contract import logs
from edge_fleet import __version__
from edge_fleet.errors import BundleError, FleetError
from edge_fleet.inventory import Inventory, load_inventory
from edge_fleet.outcome import clean
from edge_fleet.plan import logs_command
from edge_fleet.push import PushSettings, push
from edge_fleet.report import LiveProgress, push_report, push_table, status_table, write_json
from edge_fleet.ssh import SshFailure, connect, run_bounded
from edge_fleet.status import status_many

EXIT_OK, EXIT_NOT_OK, EXIT_USAGE = 0, 1, 2
DEFAULT_INVENTORY = "/etc/edge-fleet/inventory.yaml"
MAX_LOG_BYTES = 4 * 1024 * 1024
#: what to leave, at least, for connect, upload and start besides the probation wait
WAIT_MARGIN_S = 10.0

inventory_option = click.option(
    "--inventory", "inventory_path", type=click.Path(path_type=Path),
    default=lambda: os.environ.get("EDGE_FLEET_INVENTORY", DEFAULT_INVENTORY),
    show_default=f"$EDGE_FLEET_INVENTORY or {DEFAULT_INVENTORY}",
    help="the inventory YAML (docs/fleet-ops.md)")


def _fail(message: str) -> NoReturn:
    click.echo(f"edge-fleet: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _inventory(path: Path) -> Inventory:
    try:
        return load_inventory(path)
    except FleetError as exc:
        _fail(str(exc))


def _stdout() -> Console:
    """Tables on stdout: the terminal's width, or 160 columns into a file or pipe."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=160)


@click.group()
@click.version_option(__version__, prog_name="edge-fleet")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="error", show_default=True, help="JSON log lines on stderr")
def main(log_level: str) -> None:
    """Push signed driver bundles to gateways over SSH; read their status and logs."""
    logs.configure(log_level)


@main.command("push")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--to", "selector", required=True,
              help="`all`, a gateway id, or a district / street / community code or name")
@click.option("--canary", type=click.IntRange(min=0), default=0, show_default=True,
              help="push to this many gateways first; stop if any is rolled back or refused")
@click.option("--parallel", type=click.IntRange(min=1, max=500), default=20,
              show_default=True, help="gateways pushed at once")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0, max=3600), default=60.0,
              show_default=True, help="seconds each box waits for the driver's probation")
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="write the machine-readable JSON report here")
@inventory_option
def push_command(bundle: Path, selector: str, canary: int, parallel: int, wait_s: float,
                 report_path: Path | None, inventory_path: Path) -> None:
    """Upload BUNDLE to each selected gateway and install it there."""
    inv = _inventory(inventory_path)
    try:
        if not bundle.is_file():
            raise BundleError(f"{bundle}: no such bundle file (hint: build it with "
                              "edge-agent drivers pack)")
        gateways = inv.select(selector)
    except FleetError as exc:
        _fail(str(exc))
    if wait_s >= inv.ssh.gateway_timeout_s:
        _fail(f"--wait {wait_s:g} leaves no time for the upload within ssh.gateway_timeout_s="
              f"{inv.ssh.gateway_timeout_s:g} of {inv.path} (hint: lower --wait or raise "
              f"gateway_timeout_s to at least --wait + {WAIT_MARGIN_S:g})")
    if report_path is not None and not report_path.parent.is_dir():
        _fail(f"--report {report_path}: folder {report_path.parent} does not exist")
    settings = PushSettings(bundle=bundle, wait_s=wait_s, parallel=parallel, canary=canary,
                            ssh=inv.ssh)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    shown = LiveProgress(len(gateways))
    try:
        results = asyncio.run(push(gateways, settings, lambda: shown))
    finally:
        shown.close()
    wall = time.monotonic() - t0
    push_table(results, _stdout())
    report = push_report(bundle, selector, gateways, results, started_at=started, wall_s=wall,
                         parallel=parallel, canary=canary, wait_s=wait_s)
    if report_path is not None:
        write_json(report_path, report)
    sys.exit(EXIT_OK if report["ok"] else EXIT_NOT_OK)


@main.command("status")
@click.argument("selector")
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
@click.option("--parallel", type=click.IntRange(min=1, max=500), default=20, show_default=True)
@inventory_option
def status_command(selector: str, as_json: bool, parallel: int, inventory_path: Path) -> None:
    """Each selected box's /api/status, through its SSH connection."""
    inv = _inventory(inventory_path)
    try:
        gateways = inv.select(selector)
    except FleetError as exc:
        _fail(str(exc))
    results = asyncio.run(status_many(gateways, inv.ssh, parallel))
    if as_json:
        click.echo(json.dumps({"gateways": [r.as_json() for r in results]},
                              ensure_ascii=False))
    else:
        status_table(results, _stdout())
    sys.exit(EXIT_OK if all(r.ok for r in results) else EXIT_NOT_OK)


@main.command("logs")
@click.argument("gateway")
@click.option("-n", "--lines", type=click.IntRange(min=1, max=100_000), default=100,
              show_default=True)
@inventory_option
def logs_cmd(gateway: str, lines: int, inventory_path: Path) -> None:
    """The agent's last log lines on GATEWAY (the inventory's `ssh.logs_command`)."""
    inv = _inventory(inventory_path)
    try:
        gw = inv.gateway(gateway)
    except FleetError as exc:
        _fail(str(exc))

    async def run() -> tuple[bytes, bytes, int | None, bool]:
        async with asyncio.timeout(inv.ssh.gateway_timeout_s):
            conn = await connect(gw, inv.ssh)
            async with conn:
                ran = await run_bounded(conn, logs_command(inv.ssh.logs_command, lines),
                                        limit=MAX_LOG_BYTES)
        return ran.stdout, ran.stderr, ran.exit_status, ran.truncated

    try:
        out, err, status, truncated = asyncio.run(run())
    except SshFailure as exc:
        click.echo(f"edge-fleet: {exc}", err=True)
        sys.exit(EXIT_NOT_OK)
    except TimeoutError:
        click.echo(f"edge-fleet: {gw.id}: no answer within {inv.ssh.gateway_timeout_s:g}s",
                   err=True)
        sys.exit(EXIT_NOT_OK)
    for line in out.decode("utf-8", "replace").splitlines():
        click.echo(clean(line, 10_000))
    if truncated:
        click.echo(f"edge-fleet: output cut at {MAX_LOG_BYTES} bytes", err=True)
    if status != 0 and not truncated:
        click.echo(f"edge-fleet: {gw.id}: logs command exited {status}: "
                   f"{clean(err.decode('utf-8', 'replace'))}", err=True)
        sys.exit(EXIT_NOT_OK)
