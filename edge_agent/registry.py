"""Driver discovery through the `edge_agent.drivers` entry-point group."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from edge_agent.driver_api import DriverSpec

GROUP = "edge_agent.drivers"


class DriverLoadError(RuntimeError):
    pass


@cache
def available() -> dict[str, DriverSpec]:
    """All installed drivers by name. A driver that fails to import is an error, not a skip."""
    found: dict[str, DriverSpec] = {}
    for ep in entry_points(group=GROUP):
        try:
            spec = ep.load()
        except Exception as exc:
            raise DriverLoadError(f"driver {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if not isinstance(spec, DriverSpec):
            raise DriverLoadError(f"driver {ep.name!r} ({ep.value}) is not a DriverSpec")
        found[ep.name] = spec
    return found
