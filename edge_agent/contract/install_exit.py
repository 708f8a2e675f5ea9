"""The exit codes of `edge-agent drivers install --json`, per outcome: a contract between
the agent on a box and `edge-fleet` on a maintainer's desk, which reads the outcome from
the JSON line and refuses an answer whose exit code contradicts it (docs/fleet-ops.md)."""

from __future__ import annotations

EXIT_REFUSED, EXIT_ROLLED_BACK = 3, 4
#: outcome -> exit code; these are all the outcomes the box itself may report
INSTALL_EXIT: dict[str, int] = {"installed": 0, "already_current": 0, "pending": 0,
                                "refused": EXIT_REFUSED, "rolled_back": EXIT_ROLLED_BACK}
