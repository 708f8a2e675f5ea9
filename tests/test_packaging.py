"""The wheel as a box gets it: built from a copy of the checkout, installed into a fresh
venv, and run from a folder where the checkout is not on sys.path.

Offline: the wheel is built without build isolation (the test extra brings setuptools)
and installed with `--no-deps`; the runtime dependencies come from the project's own venv
through a `.pth` line (a full install would fetch ~300 MB of dependencies for every run).
Entry points are read per distribution, the first on sys.path winning, so the fresh
venv's own metadata and packages are the ones used; the test checks that they are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_agent", "collector", "drivers", "edge_fleet")
#: Package data that must be in the wheel: every file of these checkout folders.
DATA_FOLDERS = ("drivers/modbus/profiles", "drivers/modbus/simulator/scenarios",
                "edge_agent/contract/schemas", "edge_agent/contract/static",
                "edge_agent/status/static",
                "edge_agent/status/i18n", "collector/store/migrations/pg",
                "collector/fleet/static")
#: Not part of the checkout that is built: local state, caches, earlier builds.
UNBUILT = shutil.ignore_patterns(".git", ".venv", "var", "build", "dist", "*.egg-info",
                                 "__pycache__", ".mypy_cache", ".ruff_cache",
                                 ".pytest_cache", ".hypothesis", "test-artifacts")

pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy (a build writes build/ and *.egg-info into its source)."""
    setuptools = version("setuptools")
    assert int(setuptools.split(".")[0]) >= 77, (
        f"setuptools {setuptools} in this venv cannot build the wheel; the test extra asks "
        "for >= 77: run ./run test (it reinstalls the venv) or pip install -e '.[test]'")
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=UNBUILT, symlinks=True)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--no-index", "-q", "-w", base / "dist", ".", cwd=source, timeout=300)
    (built,) = (base / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Path:
    """A fresh venv holding the wheel, the project venv's site-packages after its own."""
    where = wheel.parent.parent / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", where, cwd=wheel.parent)
    python = where / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "-q", wheel, cwd=wheel.parent)
    site = run(python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
               cwd=wheel.parent).stdout.strip()
    (Path(site) / "project-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", "utf-8")
    return where


def test_the_wheel_holds_the_packages_and_their_data_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert {n.split("/")[0] for n in names} == {*PACKAGES, dist_info}  # no tests, bench ...
    assert not [n for n in names if "/tests/" in n or n.endswith((".pyc", "demo.py"))]
    assert not [n for n in names if ".data/" in n], "data files: package data instead"
    for folder in DATA_FOLDERS:
        shipped = sorted(p.relative_to(ROOT).as_posix()
                         for p in (ROOT / folder).iterdir() if p.is_file())
        assert shipped, folder
        assert set(shipped) <= set(names), folder
    for package in PACKAGES:
        assert f"{package}/py.typed" in names
        code = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")}
        assert code <= set(names), sorted(code - set(names))
    assert f"{dist_info}/licenses/LICENSE" in names
    assert zipfile.ZipFile(wheel).read(f"{dist_info}/licenses/LICENSE") == \
        (ROOT / "LICENSE").read_bytes()
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata


def test_the_installed_agent_validates_a_shipped_sample_and_offers_simulate(
        venv: Path, tmp_path: Path) -> None:
    """From a folder outside the checkout: the installed code and its package data."""
    shutil.copy(ROOT / "drivers" / "modbus" / "sample.yaml", tmp_path / "sample.yaml")
    python = venv / "bin" / "python"
    probe = run(python, "-I", "-c", """if True:
        import json, edge_agent, collector, drivers
        from drivers.modbus.profile import SHIPPED_PROFILES, available_profiles
        from drivers.modbus.simulator.scenario import SHIPPED_SCENARIOS, available_scenarios
        print(json.dumps({
            "packages": [m.__file__ for m in (edge_agent, collector, drivers)],
            "folders": [str(SHIPPED_PROFILES), str(SHIPPED_SCENARIOS)],
            "profiles": list(available_profiles()), "scenarios": list(available_scenarios())}))
        """, cwd=tmp_path)
    found = json.loads(probe.stdout)
    assert all(path.startswith(f"{venv}/lib/") for path in found["packages"] + found["folders"])
    assert found["profiles"] == sorted(p.stem for p in (ROOT / DATA_FOLDERS[0]).glob("*.yaml"))
    assert found["scenarios"] == sorted(p.stem for p in (ROOT / DATA_FOLDERS[1]).glob("*.yaml"))

    validated = run(venv / "bin" / "edge-agent", "validate", "--skip-secrets", "sample.yaml",
                    cwd=tmp_path)
    assert "sample.yaml: ok" in validated.stdout + validated.stderr
    helped = run(venv / "bin" / "edge-agent", "simulate", "--help", cwd=tmp_path)
    assert "Usage:" in helped.stdout and "simulate" in helped.stdout
