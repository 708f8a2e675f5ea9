"""What a config mistake is reported as.

`ConfigIssue` and `ConfigError` are public through `edge_agent.contract.settings` (and
`edge_agent.config`); import them from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Where a value sits in the loaded data: mapping keys and list indexes from the top.
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigIssue:
    """One mistake in a config file; `line` and `col` are 1-based."""

    file: str
    line: int
    col: int
    key: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        return self._text("")

    def as_warning(self) -> str:
        """The same line for a warning: `FILE:LINE:COL: key: warning: message (hint: …)`."""
        return self._text("warning: ")

    def _text(self, kind: str) -> str:
        head = f"{self.file}:{self.line}:{self.col}: "
        if self.key:
            head += f"{self.key}: "
        text = head + kind + self.message
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(Exception):
    """All the issues of one config file; `str()` gives one issue per line."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def dotted(path: KeyPath) -> str:
    """`path` as an issue names it: `devices.0.port`."""
    return ".".join(str(p) for p in path)
