"""The shipped systemd units: `systemd-analyze verify` passes, and their
`systemd-analyze security` exposure is no worse than docs/deploy.md records.

`verify` checks that ExecStart binaries exist: it runs on copies of the units with
/opt/community-data/bin/ rewritten to this venv's entry points.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import require_binary

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("edge-agent.service", "edge-collector.service")
INSTALLED_BIN = "/opt/community-data/bin/"


def _copies(tmp_path: Path) -> list[Path]:
    venv_bin = Path(sys.executable).parent
    for tool in ("edge-agent", "edge-collector"):
        if not (venv_bin / tool).exists():
            reason = f"{venv_bin / tool} missing: run the tests from the venv ./run makes"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
    out = []
    for name in UNITS:
        text = (ROOT / "systemd" / name).read_text()
        assert INSTALLED_BIN in text
        copy = tmp_path / name
        copy.write_text(text.replace(INSTALLED_BIN, f"{venv_bin}/"))
        out.append(copy)
    return out


def test_units_verify_clean(tmp_path: Path) -> None:
    tool = require_binary("systemd-analyze")
    run = subprocess.run([tool, "verify", *map(str, _copies(tmp_path))],
                         capture_output=True, text=True, timeout=60, check=False)
    # an unknown key or a bad value is only a warning (exit 0): no output is allowed either
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    tool = require_binary("systemd-analyze")
    unit = _copies(tmp_path)[0]
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    run = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert "Unknown key" in run.stderr


@pytest.mark.parametrize("name", UNITS)
def test_units_are_notify_with_a_watchdog(name: str) -> None:
    keys = [line.strip() for line in (ROOT / "systemd" / name).read_text().splitlines()]
    for wanted in ("Type=notify", "NotifyAccess=main", "Restart=always",
                   "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert wanted in keys, f"{name}: {wanted}"
    watchdog = next(k for k in keys if k.startswith("WatchdogSec="))
    assert int(watchdog.removeprefix("WatchdogSec=").removesuffix("s")) >= 10


def recorded_exposure() -> dict[str, float]:
    """The table of docs/deploy.md: `| unit | before | now |`."""
    rows = re.findall(r"^\| `(edge-[a-z]+\.service)` \| [0-9.]+ \| ([0-9.]+) \|",
                      (ROOT / "docs" / "deploy.md").read_text(), re.MULTILINE)
    return {unit: float(score) for unit, score in rows}


@pytest.mark.parametrize("name", UNITS)
def test_exposure_no_worse_than_recorded(name: str) -> None:
    tool = require_binary("systemd-analyze")
    run = subprocess.run([tool, "security", "--offline=yes", str(ROOT / "systemd" / name)],
                         capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", run.stdout)
    assert found, run.stdout[-500:] + run.stderr
    recorded = recorded_exposure()
    assert name in recorded, "docs/deploy.md records no exposure for it"
    assert float(found.group(1)) <= recorded[name], (
        f"{name}: exposure {found.group(1)} is worse than the {recorded[name]} recorded in "
        "docs/deploy.md (systemd-analyze security --offline=yes shows which setting)")
