"""Driver discovery through the `edge_agent.drivers` entry-point group.

Drivers are listed without being imported, and a driver is imported when it is first
asked for: a gateway with Modbus devices only never imports the camera driver (OpenCV,
numpy, zeep: tens of MiB of a 60 MiB budget).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from edge_agent.sdk.api import DriverSpec

GROUP = "edge_agent.drivers"


class DriverLoadError(RuntimeError):
    pass


class Drivers(Mapping[str, DriverSpec]):
    """Installed drivers by name; a driver's module is imported on first lookup.
    A driver that fails to import is an error (DriverLoadError), never a skip."""

    def __init__(self, points: dict[str, EntryPoint]) -> None:
        self._points = points
        self._loaded: dict[str, DriverSpec] = {}

    def __getitem__(self, name: str) -> DriverSpec:
        spec = self._loaded.get(name)
        if spec is None:
            ep = self._points[name]
            try:
                loaded = ep.load()
            except Exception as exc:
                raise DriverLoadError(f"driver {ep.name!r} ({ep.value}) failed to load: "
                                      f"{exc}") from exc
            if not isinstance(loaded, DriverSpec):
                raise DriverLoadError(f"driver {ep.name!r} ({ep.value}) is not a DriverSpec")
            self._loaded[name] = spec = loaded
        return spec

    def __contains__(self, name: object) -> bool:  # Mapping's would import the driver
        return name in self._points

    def __iter__(self) -> Iterator[str]:
        return iter(self._points)

    def __len__(self) -> int:
        return len(self._points)


@cache
def available() -> Drivers:
    """All installed drivers by name (imported lazily, see `Drivers`)."""
    return Drivers({ep.name: ep for ep in entry_points(group=GROUP)})
