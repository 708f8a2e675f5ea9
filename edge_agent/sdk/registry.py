"""Driver discovery through the `edge_agent.drivers` entry-point group.

Drivers are listed without being imported, and a driver is imported when it is first
asked for: a gateway with Modbus devices only never imports the camera driver (OpenCV,
numpy, zeep: tens of MiB of a 60 MiB budget).

Installed driver bundles (`edge_agent.bundles`, under the config's driver store) are merged
over the entry points: a driver whose `<store>/NAME/current` link exists is loaded from that
version (`edge_agent.bundles.loader`), the bundle wins over the built-in driver.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from edge_agent.sdk.api import DriverSpec

GROUP = "edge_agent.drivers"


class DriverLoadError(RuntimeError):
    pass


class Drivers(Mapping[str, DriverSpec]):
    """Installed drivers by name; a driver's module is imported on first lookup.
    A driver that fails to import is an error (DriverLoadError), never a skip."""

    def __init__(self, points: dict[str, EntryPoint],
                 bundles: dict[str, tuple[Path, Path]] | None = None) -> None:
        self._points = points
        #: name -> (the driver's store folder, its active version folder)
        self.bundles = bundles or {}
        self._loaded: dict[str, DriverSpec] = {}

    def __getitem__(self, name: str) -> DriverSpec:
        spec = self._loaded.get(name)
        if spec is None and name in self.bundles:
            from edge_agent.bundles.loader import load

            try:
                self._loaded[name] = spec = load(name, *self.bundles[name])
            except Exception as exc:
                raise DriverLoadError(str(exc)) from exc
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
        return name in self._points or name in self.bundles

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set(self._points) | set(self.bundles)))

    def __len__(self) -> int:
        return len(set(self._points) | set(self.bundles))


_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def active_bundles(store: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (store folder, active version folder) of each installed bundle."""
    found: dict[str, tuple[Path, Path]] = {}
    try:
        names = sorted(os.listdir(store))
    except OSError:
        return found
    for name in names:
        if not _NAME.match(name):
            continue
        try:
            version = os.readlink(store / name / "current")
        except OSError:
            continue
        version_dir = store / name / Path(version).name
        if version_dir.is_dir():
            found[name] = (store / name, version_dir)
    return found


def builtin() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@cache
def available(store: Path | None = None) -> Drivers:
    """All installed drivers by name (imported lazily, see `Drivers`); with `store` (the
    driver bundle store), the active bundles over the built-in drivers."""
    return Drivers(builtin(), active_bundles(store) if store is not None else {})
