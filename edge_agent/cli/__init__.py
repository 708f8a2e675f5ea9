"""The `edge-agent` command line (console script `edge_agent.cli:main`).

Owns the core commands (`core`: `run`, `validate`, the `discover` group) and the loading
of every other command from the `edge_agent.commands` entry points (`lazy`: listed without
importing, imported when run). May import the agent (`edge_agent.*`) and click; never a
driver: driver commands reach it only through entry points.
"""

from edge_agent.cli.core import main

__all__ = ["main"]
