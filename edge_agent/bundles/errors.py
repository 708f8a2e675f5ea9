"""The exceptions of `edge_agent.bundles`: one base, precise subclasses."""

from __future__ import annotations


class BundleError(Exception):
    """Anything about driver bundles that went wrong (with a hint for the user)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class StoreError(BundleError):
    """The driver store under the state directory cannot be read or changed."""


class NoPreviousVersion(StoreError):
    """A rollback has nothing to go back to: no earlier version on disk and no built-in
    driver of that name."""


class KeyError_(BundleError):
    """A signing or trusted key cannot be read."""


class PackError(BundleError):
    """A driver folder cannot be packed into a bundle."""
