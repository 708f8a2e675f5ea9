"""`edge-agent drivers keygen|pack|install|list|rollback` as real processes, real keys:
every refusal of the contract with edge-fleet, its exit codes and its one-line JSON."""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.bundles.keys import read_private
from edge_agent.bundles.pack import pack as pack_bundle
from tests.bundle_support import CRASHING, cli, gateway_yaml, install, keygen, pack, simulated_copy


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, Path]:
    keygen(tmp_path / "k1")
    keygen(tmp_path / "k2")
    keygen(tmp_path / "stranger")
    src = simulated_copy(tmp_path / "src")
    out = tmp_path / "out"
    return {"tmp": tmp_path, "src": src, "out": out,
            "cfg": gateway_yaml(tmp_path, [tmp_path / "k1.pub", tmp_path / "k2.pub"])}


def test_keygen_writes_a_private_key_0600_and_never_overwrites(tmp_path: Path) -> None:
    info = keygen(tmp_path / "key")
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    assert len(info["keyid"]) == 64 and (tmp_path / "key.pub").read_text().strip() == \
        info["public_key"]
    again = cli("drivers", "keygen", str(tmp_path / "key"))
    assert again.returncode == 2 and "never overwritten" in again.stderr
    # as docs/drivers-updates.md types it: `keygen ~/keys/ops-1` on a fresh machine
    keygen(tmp_path / "keys" / "ops-1")
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "keys" / "ops-1").stat().st_mode & 0o777 == 0o600


def test_install_list_already_current_and_rollback(env: dict[str, Path]) -> None:
    b1 = pack(env["src"], env["out"], "1.1.0", env["tmp"] / "k1")
    rc, out = install(b1, env["cfg"])
    assert (rc, out["outcome"], out["version"], out["previous"]) == \
        (0, "installed", "1.1.0", "builtin")
    assert out["gateway"] == "gw-b1"
    b2 = pack(env["src"], env["out"], "1.2.0", env["tmp"] / "k1", metadata_version=2)
    rc, out = install(b2, env["cfg"])
    assert (rc, out["outcome"], out["previous"]) == (0, "installed", "1.1.0")
    listed = json.loads(cli("drivers", "list", "--config", str(env["cfg"]), "--json").stdout)
    sim = next(d for d in listed["drivers"] if d["name"] == "simulated")
    assert (sim["version"], sim["source"], sim["previous"]) == ("1.2.0", "bundle", "1.1.0")
    assert next(d for d in listed["drivers"] if d["name"] == "modbus")["source"] == "builtin"
    # the old version is refused now: no downgrade, rollback is the only way back
    rc, out = install(b1, env["cfg"])
    assert (rc, out["outcome"]) == (3, "refused") and out["reason"].startswith("downgrade")
    back = cli("drivers", "rollback", "simulated", "--config", str(env["cfg"]), "--json")
    assert back.returncode == 0 and json.loads(back.stdout)["version"] == "1.1.0"
    assert (env["tmp"] / "drivers/simulated/current").resolve().name == "1.1.0"
    # the journal holds every step for the agent's events
    lines = (env["tmp"] / "drivers/journal.jsonl").read_text().splitlines()
    assert [json.loads(x)["event"] for x in lines] == \
        ["installed", "installed", "refused", "rolled_back"]


def test_the_same_version_twice_is_already_current_once_committed(
        env: dict[str, Path]) -> None:
    b1 = pack(env["src"], env["out"], "1.1.0", env["tmp"] / "k1")
    install(b1, env["cfg"])
    state = env["tmp"] / "drivers/simulated/state.json"
    st = json.loads(state.read_text())
    state.write_text(json.dumps({**st, "state": "committed"}))
    rc, out = install(b1, env["cfg"])
    assert (rc, out["outcome"]) == (0, "already_current")


def _rezip(bundle: Path, dest: Path, change: dict[str, bytes | None]) -> Path:
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = change.get(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info, data)
    return dest


def _reason(env: dict[str, Path], bundle: Path) -> str:
    rc, out = install(bundle, env["cfg"])
    assert (rc, out["outcome"]) == (3, "refused"), out
    assert not (env["tmp"] / "drivers/simulated/current").exists()
    assert "hint:" in out["reason"]
    return str(out["reason"])


def test_every_refusal_names_its_reason(env: dict[str, Path]) -> None:
    tmp, out = env["tmp"], env["out"]
    good = pack(env["src"], out, "1.1.0", tmp / "k1")
    meta = json.loads(zipfile.ZipFile(good).read("metadata.json"))
    wheel = next(n for n in zipfile.ZipFile(good).namelist() if n.endswith(".whl"))

    unsigned = _rezip(good, tmp / "unsigned.edgebundle", {"metadata.json": json.dumps(
        {"signed": meta["signed"], "signatures": []}).encode()})
    assert _reason(env, unsigned).startswith("unsigned")

    forged = dict(meta["signed"], version="9.9.9")
    tampered_meta = _rezip(good, tmp / "t1.edgebundle", {"metadata.json": json.dumps(
        {"signed": forged, "signatures": meta["signatures"]}).encode()})
    assert _reason(env, tampered_meta).startswith("tampered")

    whl = bytearray(zipfile.ZipFile(good).read(wheel))
    whl[-30] ^= 0xFF
    tampered_wheel = _rezip(good, tmp / "t2.edgebundle", {wheel: bytes(whl)})
    assert _reason(env, tampered_wheel).startswith("tampered")

    stranger = pack(env["src"], tmp / "o2", "1.1.0", tmp / "stranger")
    assert _reason(env, stranger).startswith("untrusted_key")

    # signed a day ago, expired an hour ago (`pack`'s clock is injectable; a bundle
    # expiring a second after packing was a race with the install)
    name, data = pack_bundle(env["src"], name="simulated", version="1.1.0",
                             keys=[read_private(tmp / "k1")], expires_days=23 / 24,
                             metadata_version=1, requires_agent=">=0",
                             now=datetime.now(UTC) - timedelta(days=1))
    expired = tmp / name
    expired.write_bytes(data)
    assert _reason(env, expired).startswith("expired")

    incompatible = pack(env["src"], tmp / "o4", "1.1.0", tmp / "k1", requires=">=99")
    assert _reason(env, incompatible).startswith("incompatible")

    garbage = tmp / "garbage.edgebundle"
    garbage.write_bytes(b"not a zip at all")
    assert _reason(env, garbage).startswith("malformed")


def test_a_threshold_counts_distinct_keys(env: dict[str, Path]) -> None:
    tmp = env["tmp"]
    cfg = gateway_yaml(tmp, [tmp / "k1.pub", tmp / "k2.pub"], threshold=2)
    once = pack(env["src"], tmp / "a", "1.1.0", tmp / "k1")
    twice_same = pack(env["src"], tmp / "b", "1.1.0", tmp / "k1", tmp / "k1")
    both = pack(env["src"], tmp / "c", "1.1.0", tmp / "k1", tmp / "k2")
    for bundle in (once, twice_same):
        rc, out = install(bundle, cfg)
        assert (rc, out["outcome"]) == (3, "refused")
        assert out["reason"].startswith("below_threshold")
    rc, out = install(both, cfg)
    assert (rc, out["outcome"]) == (0, "installed")


def test_validate_uses_the_active_bundle_options(env: dict[str, Path]) -> None:
    """A bundle may add options: the config is checked against the ACTIVE version."""
    tmp = env["tmp"]
    src = simulated_copy(tmp / "src2", extra=(
        "class SimulatedDeviceV2(SimulatedDevice):\n    color: str = 'red'\n\n\n"
        "DRIVER = DriverSpec(name='simulated', options=SimulatedDeviceV2,\n"
        "                    build=SimulatedDriver)\n"))
    text = env["cfg"].read_text().replace("kind: smoke,", "kind: smoke, color: blue,")
    env["cfg"].write_text(text)
    before = cli("validate", str(env["cfg"]), "--skip-secrets")
    assert before.returncode == 2 and "color" in before.stderr
    rc, out = install(pack(src, tmp / "o", "2.0.0", tmp / "k1"), env["cfg"])
    assert rc == 0, out
    after = cli("validate", str(env["cfg"]), "--skip-secrets")
    assert after.returncode == 0, after.stderr


def test_json_errors_for_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: x}\n")
    res = cli("drivers", "install", str(tmp_path / "none"), "--config", str(bad), "--json")
    assert res.returncode == 2 and json.loads(res.stdout)["outcome"] == "error"


def test_crashing_bundle_installs_without_an_agent(env: dict[str, Path]) -> None:
    """Without a running agent an install is `installed`; the agent's probation judges it."""
    src = simulated_copy(env["tmp"] / "crash", extra=CRASHING)
    rc, out = install(pack(src, env["out"], "1.3.0", env["tmp"] / "k1"), env["cfg"])
    assert (rc, out["outcome"]) == (0, "installed")


def test_mistakes_are_exit_2_with_a_hint_never_a_traceback(env: dict[str, Path]) -> None:
    res = cli("drivers", "rollback", "simulated", "--config", str(env["cfg"]), "--json")
    assert res.returncode == 2 and "built-in driver is active" in json.loads(
        res.stdout)["reason"]
    missing = gateway_yaml(env["tmp"], [env["tmp"] / "nope.pub"])
    b1 = pack(env["src"], env["out"], "1.1.0", env["tmp"] / "k1")
    res = cli("drivers", "install", str(b1), "--config", str(missing), "--json")
    assert res.returncode == 2 and "nope.pub" in json.loads(res.stdout)["reason"]
    assert "hint" in res.stderr and "Traceback" not in res.stderr
    res = cli("drivers", "pack", str(env["tmp"]), "--name", "simulated", "--version", "1",
              "--key", str(env["tmp"] / "k1"))
    assert res.returncode == 2 and "no __init__.py" in res.stderr


def test_the_wait_reports_the_rollbacks_reason_not_a_half_written_state(
        env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's rollback switches the `current` symlink, then writes state.json with
    the reason, under the store's lock. `install --wait` read the state without the lock
    and, between the two steps, reported "builtin is active now" instead of the crash (a
    CI run of the fleet's canary test did). Here the rollback is held between its two
    steps while the wait reads."""
    import threading

    from edge_agent.bundles import service
    from edge_agent.bundles.store import Store
    from edge_agent.config.loader import load_gateway_config

    b1 = pack(env["src"], env["out"], "1.1.0", env["tmp"] / "k1")
    cfg = load_gateway_config(env["cfg"], devices=False)
    first = service.install(b1, cfg)
    assert first.outcome == "installed"
    store = service.store_for(cfg)
    half_done, release = threading.Event(), threading.Event()
    write_state = Store._write_state

    def slow_write(self: Store, st: service.DriverState) -> None:
        half_done.set()  # the symlink already points at the built-in driver
        release.wait(10)
        write_state(self, st)

    monkeypatch.setattr(Store, "_write_state", slow_write)
    monkeypatch.setattr(service, "agent_running", lambda root: True)

    def agent_rolls_back() -> None:
        with store.locked():
            store.switch_back("simulated", "crashed within probation: RuntimeError: boom",
                              builtin=True)

    agent = threading.Thread(target=agent_rolls_back)
    agent.start()
    assert half_done.wait(10)
    threading.Timer(0.3, release.set).start()
    out = service.wait_outcome(cfg, first, 10)
    agent.join(10)
    assert (out.outcome, out.reason) == \
        ("rolled_back", "crashed within probation: RuntimeError: boom")
