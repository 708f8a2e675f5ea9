"""Edge agent for community gateways."""

from edge_agent import _lean_imports as _lean_imports  # first: keeps ~25 MiB out of the agent

__version__ = "0.1.0"
