"""`edge-agent`: the command line (the console script is `edge_agent.cli:main`)."""

from edge_agent.cli.core import main

__all__ = ["main"]
