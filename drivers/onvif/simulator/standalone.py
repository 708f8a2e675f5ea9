"""One simulated ONVIF camera until Ctrl-C: `edge-agent simulate-camera`, also run as
`python -m drivers.onvif.simulator` (same options).

    edge-agent simulate-camera --port 18090 --password-file var/demo/secrets/cam.pw \\
        --discovery-port 13702 --scenario

`--open` asks no credentials, `--no-events` has no events service, `--basic-snapshots`
puts the snapshot behind HTTP Basic. `--scenario` plays motion (raised 5 s every 20 s)
and a tamper alarm (10 s every 60 s) in a loop. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import click

from edge_agent.contract import logs

from .app import OnvifSimulator
from .discovery import DiscoveryResponder


async def _scenario(sim: OnvifSimulator) -> None:
    tick = 0
    while True:
        await asyncio.sleep(1)
        tick += 1
        if tick % 20 == 5:
            sim.motion(True)
        elif tick % 20 == 10:
            sim.motion(False)
        if tick % 60 == 30:
            sim.tamper(True)
        elif tick % 60 == 40:
            sim.tamper(False)


async def serve(sim: OnvifSimulator, *, discovery_port: int = 0,
                scenario: bool = False) -> None:
    """Serve `sim` (and answer WS-Discovery probes on `discovery_port`, if not 0) until
    cancelled; with `scenario`, play the motion/tamper loop."""
    await sim.start()
    responder = None
    if discovery_port:
        responder = DiscoveryResponder([sim], discovery_port)
        await responder.start()
    task = asyncio.create_task(_scenario(sim)) if scenario else None
    try:
        await asyncio.Event().wait()
    finally:
        if task is not None:
            task.cancel()
        if responder is not None:
            await responder.stop()
        await sim.stop()


@click.command("simulate-camera")
@click.option("--port", type=click.IntRange(0, 65535), default=18090, show_default=True,
              help="HTTP port on 127.0.0.1 (0: a free one)")
@click.option("--username", default="admin", show_default=True, help="the user it asks for")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="file holding the password (default: sim-password)")
@click.option("--skew", type=float, default=0.0, show_default=True,
              help="camera clock offset, s")
@click.option("--name", default="sim-camera", show_default=True,
              help="its name (device information, WS-Discovery scope)")
@click.option("--discovery-port", type=click.IntRange(0, 65535), default=0,
              help="answer WS-Discovery probes on this UDP port (127.0.0.1)")
@click.option("--scenario", is_flag=True, help="play motion/tamper events")
@click.option("--open", "open_", is_flag=True,
              help="ask no credentials anywhere (a camera as many ship)")
@click.option("--no-events", is_flag=True,
              help="no events service (GetServices/GetCapabilities list none)")
@click.option("--basic-snapshots", is_flag=True,
              help="the snapshot URI challenges with HTTP Basic only")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def simulate_camera(port: int, username: str, password_file: Path | None, skew: float,
                    name: str, discovery_port: int, scenario: bool, open_: bool,
                    no_events: bool, basic_snapshots: bool, log_level: str) -> None:
    """Run one simulated ONVIF camera on 127.0.0.1 until Ctrl-C (tests, the demo).

    \b
    edge-agent simulate-camera --port 18090 --scenario
    edge-agent simulate-camera --open --discovery-port 13702
    """
    logs.configure(log_level)
    password = (password_file.read_text("utf-8").strip() if password_file is not None
                else "sim-password")
    sim = OnvifSimulator(port=port, username=None if open_ else username, password=password,
                         clock_skew_s=skew, name=name)
    sim.switches.no_events = no_events
    sim.switches.basic_snapshots = basic_snapshots
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(sim, discovery_port=discovery_port, scenario=scenario))
    except OSError as err:
        udp = f" or UDP 127.0.0.1:{discovery_port}" if discovery_port else ""
        click.echo(f"simulate-camera: cannot listen on 127.0.0.1:{sim.port}{udp}: "
                   f"{err.strerror or err}", err=True)
        sys.exit(1)


def main() -> None:
    """`python -m drivers.onvif.simulator`."""
    simulate_camera(prog_name="python -m drivers.onvif.simulator")
