"""Commands a driver brings to `edge-agent`: the entry-point group and its conventions.

A driver (or any installed package) adds a command by naming a click command in the
`edge_agent.commands` entry-point group of its distribution:

    [project.entry-points."edge_agent.commands"]
    simulate = "drivers.modbus.commands:simulate"          # edge-agent simulate
    "discover.cameras" = "drivers.onvif.commands:cameras"  # edge-agent discover cameras

A dotted name adds a subcommand to a group of the core (`discover`). `edge-agent --help`
lists every command without importing any driver; a command's module is imported only
when it is run or its own `--help` is asked, so one that fails to import fails alone,
with an error naming its entry point.

Exit codes, as for the core commands: 0 done, 1 failed at run time, 2 a mistake in the
options or a config file (`EXIT_CONFIG`), reported as `FILE:LINE:COL: key: message`.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from edge_agent.contract.settings import ConfigError

__all__ = ["EXIT_CONFIG", "GROUP", "exit_config_error"]

#: the entry-point group `edge-agent` reads its commands from
GROUP = "edge_agent.commands"
#: the exit status for a mistake in the options or in a config file
EXIT_CONFIG = 2


def exit_config_error(err: ConfigError, where: str = "") -> NoReturn:
    """Print every issue of `err` on stderr, one a line, then exit with `EXIT_CONFIG`."""
    for issue in err.issues:
        click.echo(str(issue), err=True)
    place = f" in {where}" if where else ""
    click.echo(f"{len(err.issues)} problem(s){place}; nothing was started.", err=True)
    sys.exit(EXIT_CONFIG)
