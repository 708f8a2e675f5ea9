"""The one exception base of edge-fleet and its precise kinds.

A `FleetError` is a user's or a config's mistake: the CLI prints it (no traceback) and
exits 2. What goes wrong with one gateway is never raised past that gateway: it becomes
its outcome in the report.
"""

from __future__ import annotations


class FleetError(Exception):
    """A mistake the maintainer can fix; `str()` says where and how."""


class InventoryError(FleetError):
    """The inventory file cannot be used (every issue as FILE:LINE:COL: key: message)."""


class SelectorError(FleetError):
    """`--to` / GATEWAY names nothing in the inventory."""


class BundleError(FleetError):
    """The bundle file given on the command line cannot be read."""
