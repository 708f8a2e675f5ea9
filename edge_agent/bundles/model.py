"""Plain facts about bundles shared by the verifier, the store and the agent (no crypto
imported here: the agent's runtime reads the store without loading `cryptography`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
VERSION_DIR_RE = re.compile(r"^[0-9A-Za-z.+!_-]{1,64}$")
BUILTIN = "builtin"


def shown(version: str | None) -> str:
    """A version as commands and events show it (`builtin`: the driver shipped with the
    agent)."""
    return BUILTIN if version is None else version


def same_version(a: str, b: str) -> bool:
    """PEP 440 equality (1.1 and 1.1.0 are one version); text equality for what is not
    a PEP 440 version."""
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


@dataclass(frozen=True)
class Installed:
    """What is installed of the driver: its active bundle version (None: the built-in
    driver), the highest metadata_version ever installed, and the built-in driver's version
    (None: the agent ships no such driver): no bundle may be older than it."""

    version: str | None = None
    metadata_version: int = 0
    builtin: str | None = None
