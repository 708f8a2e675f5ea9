"""Importing a driver from an installed bundle: `drivers.NAME` from `<VERSION>/drivers/NAME`.

The version's `drivers` folder goes first on the `drivers` package's `__path__` (any other
version of the same driver is taken off it), every `drivers.NAME*` module is purged from
`sys.modules`, and `drivers.NAME` is imported afresh: the new code, never a mix.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from edge_agent.sdk.api import DriverSpec


class BundleLoadError(RuntimeError):
    pass


def purge(name: str) -> None:
    prefix = f"drivers.{name}"
    for mod in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[mod]


def load(name: str, name_dir: Path, version_dir: Path | None) -> DriverSpec:
    """The DriverSpec of driver `name` from `version_dir` (an installed version under
    `name_dir`, the driver's store folder; None: the built-in driver)."""
    import drivers

    mine = str(name_dir) + "/"
    kept = [p for p in drivers.__path__ if not p.startswith(mine)]
    if version_dir is not None:
        kept.insert(0, str(version_dir / "drivers"))
    drivers.__path__[:] = kept
    purge(name)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(f"drivers.{name}")
        spec = getattr(module, "DRIVER", None)
    except Exception as exc:
        where = f"bundle {version_dir}" if version_dir else "the built-in driver"
        raise BundleLoadError(f"driver {name!r} from {where} failed to load: {exc}") from exc
    if not isinstance(spec, DriverSpec):
        raise BundleLoadError(f"driver {name!r} from {version_dir}: DRIVER is not a "
                              "DriverSpec")
    return spec
