"""The ONVIF driver's command: `edge-agent discover cameras` (registered in pyproject.toml
as `discover.cameras` under the `edge_agent.commands` entry points, imported only when it
is run). The camera simulator's command, `edge-agent simulate-camera`, lives with the
simulator (`simulator/standalone.py`).
"""

from __future__ import annotations

import asyncio
import sys

import click

from edge_agent.contract import logs

from .discovery import DiscoveryError, discover, parse_target, to_yaml


@click.command("cameras")
@click.option("--target", required=True, metavar="HOST:PORT",
              help="where to send the WS-Discovery probe: HOST:PORT, A.B.C.D-E:PORT (one "
                   "probe per address) or, with --multicast, 239.255.255.250:3702")
@click.option("--multicast", is_flag=True, help="allow a multicast group as --target")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 60), default=3.0,
              show_default=True, help="seconds to wait for answers")
@click.option("--username", default="admin", show_default=True, help="user for the YAML")
@click.option("--secrets-dir", default="/etc/edge-agent/secrets", show_default=True,
              help="where the YAML's password files are expected")
@click.option("--bind", default=None, help="local address to send from (default 127.0.0.1 "
              "for a loopback target, else all)")
def cameras(target: str, multicast: bool, timeout_s: float, username: str,
            secrets_dir: str, bind: str | None) -> None:
    """WS-Discovery probe for ONVIF cameras; prints `devices:` YAML on stdout."""
    try:
        parsed = parse_target(target, multicast=multicast)
    except DiscoveryError as err:
        raise click.BadParameter(str(err), param_hint="--target") from None
    logs.configure("warning")  # JSON on stderr: stdout is the YAML
    try:
        found = asyncio.run(discover(parsed, timeout_s, bind=bind))
    except OSError as err:
        click.echo(f"discover: cannot send the probe to {target}: {err.strerror or err}",
                   err=True)
        sys.exit(1)
    click.echo(to_yaml(found, username, secrets_dir), nl=False)
    click.echo(f"{len(found)} camera(s) answered {target}", err=True)
