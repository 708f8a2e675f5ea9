"""Import structlog without the optional extras it picks up on its own.

structlog imports `rich` (and with it pygments) for pretty console tracebacks when it is
installed. The agent uses none of it (JSON logs), yet rich may be installed beside it (by
any tool in the same environment), and it would cost resident memory on a box whose
budget is 60 MiB (issue 3: with numpy, which sqlite-utils picked up the same way before
the agent stopped using it, the two were ~25 MiB). So structlog is imported once here
with those optional modules hidden, then the modules are unhidden. (The collector's
store hides numpy from sqlite-utils the same way, in collector/store/sqlite.py.)
"""

from __future__ import annotations

import sys

#: Optional imports of structlog (rich, better_exceptions; greenlet, ~1.2 MiB, for
#: context variables under greenlets, which the agent does not use; playwright installs it
#: beside the tests).
OPTIONAL = ("rich", "better_exceptions", "greenlet")


def load() -> None:
    hidden = [name for name in OPTIONAL if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail
    try:
        import structlog  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


load()
