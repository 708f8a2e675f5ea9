"""Which version a gateway runs, as real `edge-agent drivers` processes: a version names one
content (re-signed other bytes under the same version are refused), PEP 440 equal versions
are the same version, no bundle is older than the built-in driver, a version this gateway
rolled back is not reinstalled by a repeated push, a rollback walks back through every
installed version, and a driver with nothing to go back to is never switched to nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bundle_support import cli, gateway_yaml, install, keygen, pack, simulated_copy


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, Path]:
    keygen(tmp_path / "k1")
    return {"tmp": tmp_path, "src": simulated_copy(tmp_path / "src"),
            "cfg": gateway_yaml(tmp_path, [tmp_path / "k1.pub"])}


def _commit(tmp: Path, name: str = "simulated") -> None:
    """What the agent does after probation (no agent runs in these tests)."""
    state = tmp / "drivers" / name / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "state": "committed"}))


def _rollback(cfg: Path, name: str = "simulated") -> tuple[int, dict[str, object]]:
    res = cli("drivers", "rollback", name, "--config", str(cfg), "--json")
    return res.returncode, json.loads(res.stdout.strip().splitlines()[-1])


def _listed(cfg: Path, name: str) -> dict[str, object] | None:
    listed = json.loads(cli("drivers", "list", "--config", str(cfg), "--json").stdout)
    return next((d for d in listed["drivers"] if d["name"] == name), None)


def test_rolling_back_a_bundle_only_driver_is_refused_and_the_box_still_starts(
        env: dict[str, Path]) -> None:
    tmp = env["tmp"]
    cfg = gateway_yaml(tmp, [tmp / "k1.pub"], devices="\n  - {id: s1, driver: mysim, "
                       "kind: smoke, period_s: 0.05}")
    rc, out = install(pack(env["src"], tmp / "o", "1.0.0", tmp / "k1", name="mysim"), cfg)
    assert (rc, out["outcome"], out["previous"]) == (0, "installed", "builtin"), out
    rc, back = _rollback(cfg, "mysim")
    assert rc == 2 and back["outcome"] == "error", back
    assert "mysim" in str(back["reason"]) and "no built-in mysim driver" in str(back["reason"])
    assert "(hint: install a fixed mysim bundle" in str(back["reason"])
    assert (tmp / "drivers/mysim/current").resolve().name == "1.0.0"
    assert (_listed(cfg, "mysim") or {}).get("version") == "1.0.0"
    assert cli("validate", str(cfg)).returncode == 0


def test_the_same_version_with_other_content_is_refused_not_ignored(
        env: dict[str, Path]) -> None:
    tmp = env["tmp"]
    first = pack(env["src"], tmp / "o", "3.0.0", tmp / "k1", metadata_version=8)
    assert install(first, env["cfg"])[0] == 0
    _commit(tmp)
    other = simulated_copy(tmp / "other", extra="# the fix, signed as 3.0.0 again")
    rc, out = install(pack(other, tmp / "o2", "3.0.0", tmp / "k1", metadata_version=9),
                      env["cfg"])
    assert (rc, out["outcome"]) == (3, "refused"), out
    assert "version 3.0.0 is installed with other content" in str(out["reason"])
    assert "give the fix a new version" in str(out["reason"])
    state = json.loads((tmp / "drivers/simulated/state.json").read_text())
    assert state["metadata_version"] == 8
    # the very same bundle again is still already_current
    assert install(first, env["cfg"])[1]["outcome"] == "already_current"


def test_equal_pep440_versions_are_the_same_version(env: dict[str, Path]) -> None:
    tmp = env["tmp"]
    assert install(pack(env["src"], tmp / "o", "1.1.0", tmp / "k1"), env["cfg"])[0] == 0
    _commit(tmp)
    rc, out = install(pack(env["src"], tmp / "o2", "1.1", tmp / "k1"), env["cfg"])
    assert (rc, out["outcome"]) == (3, "refused"), out
    assert "version 1.1 is installed (as 1.1.0)" in str(out["reason"])
    assert (tmp / "drivers/simulated/current").resolve().name == "1.1.0"
    assert not (tmp / "drivers/simulated/1.1").exists()


def test_a_bundle_older_than_the_built_in_driver_is_a_downgrade(
        env: dict[str, Path]) -> None:
    builtin = str((_listed(env["cfg"], "simulated") or {})["version"])
    assert builtin != "0.0.1"
    rc, out = install(pack(env["src"], env["tmp"] / "o", "0.0.1", env["tmp"] / "k1"),
                      env["cfg"])
    assert (rc, out["outcome"]) == (3, "refused"), out
    assert str(out["reason"]).startswith("downgrade") and \
        f"built-in driver's {builtin}" in str(out["reason"])
    assert not (env["tmp"] / "drivers/simulated/current").exists()


def test_a_rollback_walks_back_through_every_installed_version(
        env: dict[str, Path]) -> None:
    tmp = env["tmp"]
    for i, version in enumerate(("1.0.0", "1.1.0", "3.0.0")):
        rc, _ = install(pack(env["src"], tmp / "o", version, tmp / "k1",
                             metadata_version=i + 1), env["cfg"])
        assert rc == 0
    steps = []
    for _ in range(3):
        rc, back = _rollback(env["cfg"])
        assert rc == 0, back
        listed = _listed(env["cfg"], "simulated") or {}
        steps.append((back["version"], back["previous"], listed["previous"]))
    assert steps == [("1.1.0", "3.0.0", "1.0.0"), ("1.0.0", "1.1.0", "builtin"),
                     ("builtin", "1.0.0", None)]
    rc, back = _rollback(env["cfg"])
    assert rc == 2 and "nothing to roll back" in str(back["reason"])


def test_a_version_this_gateway_rolled_back_is_not_installed_again(
        env: dict[str, Path]) -> None:
    tmp = env["tmp"]
    assert install(pack(env["src"], tmp / "o", "1.0.0", tmp / "k1"), env["cfg"])[0] == 0
    bad = pack(env["src"], tmp / "o", "2.0.0", tmp / "k1", metadata_version=2)
    assert install(bad, env["cfg"])[0] == 0
    assert _rollback(env["cfg"])[0] == 0
    for _ in range(2):  # a repeated push answers the verdict, changes nothing
        rc, out = install(bad, env["cfg"])
        assert (rc, out["outcome"], out["version"]) == (4, "rolled_back", "2.0.0"), out
        assert "was rolled back on this gateway" in str(out["reason"])
        assert "by hand" in str(out["reason"]) and "--force" in str(out["reason"])
        assert (tmp / "drivers/simulated/current").resolve().name == "1.0.0"
    rc, out = install(bad, env["cfg"], "--force")
    assert (rc, out["outcome"], out["previous"]) == (0, "installed", "1.0.0"), out
    assert (tmp / "drivers/simulated/current").resolve().name == "2.0.0"
