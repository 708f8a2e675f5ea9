"""Import structlog and sqlite-utils without the optional extras they pick up on their own.

structlog imports `rich` (and with it pygments) for pretty console tracebacks when it is
installed, and sqlite-utils imports numpy for its numpy column adapters when numpy is
installed. The agent uses neither (JSON logs; plain Python values in the outbox), yet
either may be installed beside it (rich by any tool in the same environment; OpenCV →
numpy), and together they cost ~25 MiB of resident memory on a box whose budget is
60 MiB (issue 3). So both libraries are imported once here with those optional modules
hidden, then the modules are unhidden: code that really needs numpy (camera video
health) imports it as usual.
"""

from __future__ import annotations

import sys

#: Optional imports of structlog (rich, better_exceptions) and sqlite-utils (numpy).
OPTIONAL = ("rich", "better_exceptions", "numpy")


def load() -> None:
    hidden = [name for name in OPTIONAL if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail
    try:
        import sqlite_utils  # noqa: F401
        import structlog  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


load()
