"""Where the files shipped beside the code live: device profiles, simulator scenarios.

In a checkout (and an editable install) they are the repository's `configs/<name>/`;
an installed wheel carries them as data files under `<prefix>/share/edge-agent/<name>/`
(pyproject.toml, `[tool.setuptools.data-files]`), `<prefix>` being the virtualenv or
Python installation the agent runs from.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["shipped_dir"]

_REPOSITORY = Path(__file__).resolve().parents[2] / "configs"


def shipped_dir(name: str) -> Path:
    """The folder of shipped `name` files (`profiles`, `scenarios`); the checkout's when
    there is one, else the installed data files' (which may not exist: callers report
    a missing file by name, with the search path)."""
    checkout = _REPOSITORY / name
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "edge-agent" / name
