"""Bad input and failing I/O around `edge-agent drivers` (real CLI processes, real keys):
a crafted metadata.json, a full disk (RLIMIT_FSIZE stands in for it), a kill after the
switch, a wheel that cannot be unpacked, a path that is not a regular file, a bad
state.json. Each answers one JSON line with a clear reason and leaves nothing half done."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bundles.keys import read_private
from edge_agent.bundles.pack import sign
from tests.bundle_support import (
    EDGE_AGENT,
    cli,
    gateway_yaml,
    install,
    keygen,
    pack,
    simulated_copy,
)
from tests.harness import wait_for
from tests.peers import free_port


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, Any]:
    k1 = keygen(tmp_path / "k1")
    src = simulated_copy(tmp_path / "src")
    return {"tmp": tmp_path, "src": src, "out": tmp_path / "out", "k1": k1,
            "cfg": gateway_yaml(tmp_path, [tmp_path / "k1.pub"]),
            "store": tmp_path / "drivers"}


def _entries(store: Path) -> list[dict[str, Any]]:
    path = store / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines()]


def _events(store: Path) -> list[tuple[str, str]]:
    return [(e["event"], e.get("version", "")) for e in _entries(store)
            if e["event"] != "pad"]


def _limited_install(bundle: Path, cfg: Path, max_bytes: int) -> tuple[int, dict[str, Any]]:
    """`install --json` with files capped at `max_bytes` (as `ulimit -f`: a full disk)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    res = subprocess.run([EDGE_AGENT, "drivers", "install", str(bundle), "--config", str(cfg),
                          "--json"], capture_output=True, text=True, timeout=60, check=False,
                         preexec_fn=cap)
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, (res.stdout, res.stderr)
    return res.returncode, dict(json.loads(lines[0]))


def _tiny_driver(dest: Path) -> Path:
    dest.mkdir()
    (dest / "__init__.py").write_text("DRIVER = None\n")
    return dest


def test_a_lone_surrogate_or_an_infinite_number_in_signed_is_refused_as_malformed(
        env: dict[str, Any]) -> None:
    tmp, store = env["tmp"], env["store"]
    sig = '"signatures": [{"keyid": "' + "ab" * 32 + '", "sig": "AAAA"}]'
    for label, value in (("surrogate", '"\\ud800"'), ("inf", "1e400")):
        bundle = tmp / f"simulated-{label}.edgebundle"
        with zipfile.ZipFile(bundle, "w") as zf:
            zf.writestr("metadata.json", '{"signed": {"name": "simulated", "version": '
                        f'"5.0.0", "x": {value}}}, {sig}}}')
        rc, out = install(bundle, env["cfg"])
        assert (rc, out["outcome"]) == (3, "refused"), out
        assert out["reason"].startswith("malformed") and "hint:" in out["reason"]
    assert [e["event"] for e in _entries(store)] == ["refused", "refused"]


def test_an_install_whose_journal_cannot_be_written_says_so_and_journals_it_later(
        env: dict[str, Any]) -> None:
    tmp, store, cfg = env["tmp"], env["store"], env["cfg"]
    src = _tiny_driver(tmp / "tiny")
    b1 = pack(src, env["out"], "1.1.0", tmp / "k1")
    b2 = pack(src, env["out"], "1.2.0", tmp / "k1")
    store.mkdir()
    (store / "journal.jsonl").write_text(json.dumps({"event": "pad", "pad": "x" * 3000}) + "\n")
    rc, out = _limited_install(b1, cfg, 2048)
    assert (rc, out["outcome"], out["version"]) == (0, "installed", "1.1.0"), out
    assert "journal.jsonl could not be written" in out["reason"]
    assert (store / "simulated/current").resolve().name == "1.1.0"
    assert _events(store) == []
    # the next install writes the lost entry first, then its own
    rc, out = install(b2, cfg)
    assert (rc, out["outcome"]) == (0, "installed")
    assert _events(store) == [("installed", "1.1.0"), ("installed", "1.2.0")]
    assert [e.get("late") for e in _entries(store)[1:]] == [True, None]
    assert _entries(store)[1]["keyids"] == [env["k1"]["keyid"]]


@pytest.mark.parametrize("point", ["switched", "state_written"])
def test_a_kill_after_the_switch_loses_no_journal_entry(env: dict[str, Any],
                                                        point: str) -> None:
    tmp, store, cfg = env["tmp"], env["store"], env["cfg"]
    b1 = pack(env["src"], env["out"], "1.1.0", tmp / "k1")
    res = cli("drivers", "install", str(b1), "--config", str(cfg), "--json",
              env={**os.environ, "EDGE_AGENT_TEST_CRASH_AT": point})
    assert res.returncode == -9
    assert (store / "simulated/current").resolve().name == "1.1.0"
    assert _events(store) == []
    # installing it again: already active, and now journaled (once)
    rc, out = install(b1, cfg)
    assert (rc, out["outcome"]) == (0, "installed"), out
    rc, out = install(b1, cfg)
    assert _events(store) == [("installed", "1.1.0")]
    assert _entries(store)[0]["previous"] == "builtin"


def test_a_full_disk_while_unpacking_is_an_error_and_leaves_nothing(
        env: dict[str, Any]) -> None:
    tmp, store = env["tmp"], env["store"]
    b1 = pack(env["src"], env["out"], "1.1.0", tmp / "k1")  # __init__.py is over 2 KiB
    rc, out = _limited_install(b1, env["cfg"], 2048)
    assert (rc, out["outcome"]) == (2, "error"), out
    assert "cannot unpack" in out["reason"] and "hint:" in out["reason"]
    assert not (store / "simulated/current").exists()
    assert sorted(p.name for p in (store / "simulated").iterdir()) == []


def _clashing_bundle(tmp: Path, key: Path) -> Path:
    """A trusted-signed wheel holding both drivers/simulated/a and drivers/simulated/a/b.py."""
    info = "edge_driver_simulated-1.1.0.dist-info"
    files = [("drivers/simulated/__init__.py", b"DRIVER = None\n"),
             ("drivers/simulated/a", b"a file\n"), ("drivers/simulated/a/b.py", b"x = 1\n"),
             (f"{info}/METADATA", b"Metadata-Version: 2.1\nName: edge_driver_simulated\n"
                                  b"Version: 1.1.0\n"),
             (f"{info}/entry_points.txt",
              b"[edge_agent.drivers]\nsimulated = drivers.simulated:DRIVER\n")]
    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = [f"{n},sha256={digest(d)},{len(d)}" for n, d in files]
    files.append((f"{info}/RECORD", ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in files:
            zf.writestr(n, d)
    wheel, wheel_name = buf.getvalue(), "edge_driver_simulated-1.1.0-py3-none-any.whl"
    signed = {"_type": "driver-bundle", "spec_version": "1.0", "name": "simulated",
              "version": "1.1.0", "metadata_version": 1, "expires": "2099-01-01T00:00:00Z",
              "requires_agent": ">=0",
              "files": {wheel_name: {"length": len(wheel),
                                     "sha256": hashlib.sha256(wheel).hexdigest()}}}
    bundle = tmp / "simulated-1.1.0.edgebundle"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.writestr("metadata.json", json.dumps(sign(signed, [read_private(key)])))
        zf.writestr(wheel_name, wheel)
    return bundle


def test_a_wheel_with_a_file_and_a_folder_of_one_name_is_refused(env: dict[str, Any]) -> None:
    tmp, store = env["tmp"], env["store"]
    rc, out = install(_clashing_bundle(tmp, tmp / "k1"), env["cfg"])
    assert (rc, out["outcome"]) == (3, "refused"), out
    assert "both as a file and as the folder" in out["reason"]
    assert not (store / "simulated/current").exists()
    assert not list((store / "simulated").glob(".tmp-*"))


@pytest.mark.parametrize("bad_name", ["map:v1.json", "two\nlines.txt"])
def test_pack_refuses_a_file_name_install_would_refuse(env: dict[str, Any],
                                                       bad_name: str) -> None:
    (env["src"] / bad_name).write_text("{}")
    res = cli("drivers", "pack", str(env["src"]), "--name", "simulated", "--version", "1.1.0",
              "--key", str(env["tmp"] / "k1"), "--out", str(env["out"]))
    assert res.returncode == 2, res.stdout
    assert repr(bad_name)[1:-1] in res.stderr and "rename the file" in res.stderr
    assert not env["out"].exists() or not list(env["out"].iterdir())


def test_a_bundle_path_that_is_not_a_regular_file_is_not_read(env: dict[str, Any]) -> None:
    fifo = env["tmp"] / "simulated-1.1.0.edgebundle"
    os.mkfifo(fifo)
    for path in (Path("/dev/zero"), fifo):
        rc, out = install(path, env["cfg"])
        assert (rc, out["outcome"]) == (2, "error"), out
        assert "not a regular file" in out["reason"] and "hint:" in out["reason"]
    big = env["tmp"] / "big-1.edgebundle"
    with open(big, "wb") as fh:
        fh.truncate(32 * 1024 * 1024 + 1)
    rc, out = install(big, env["cfg"])
    assert (rc, out["outcome"]) == (3, "refused")
    assert out["reason"].startswith("malformed") and "(hint: a bundle is at most 32 MiB" in \
        out["reason"]


def test_the_same_key_listed_twice_does_not_make_a_threshold_of_two(
        env: dict[str, Any]) -> None:
    tmp = env["tmp"]
    cfg = gateway_yaml(tmp, [tmp / "k1.pub", tmp / "k1.pub"], threshold=2)
    res = cli("validate", str(cfg), "--skip-secrets")
    assert res.returncode == 2 and "1 distinct trusted key" in res.stderr + res.stdout
    # a copy of the same key under another name: validate warns (key ids)
    (tmp / "copy.pub").write_text((tmp / "k1.pub").read_text())
    cfg = gateway_yaml(tmp, [tmp / "k1.pub", tmp / "copy.pub"], threshold=2)
    res = cli("validate", str(cfg))
    assert "1 distinct trusted key(s) (key ids)" in res.stderr + res.stdout


@pytest.mark.parametrize("content", ["[1]", '{"name": "simulated", "metadata_version": "x"}',
                                     '{"name": "simulated", "state": "weird"}'])
def test_a_bad_state_json_is_an_error_naming_the_file(env: dict[str, Any],
                                                      content: str) -> None:
    tmp, store = env["tmp"], env["store"]
    (store / "simulated").mkdir(parents=True)
    (store / "simulated/state.json").write_text(content)
    res = cli("drivers", "list", "--config", str(env["cfg"]))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "simulated/state.json" in res.stderr and "hint:" in res.stderr
    b1 = pack(env["src"], env["out"], "1.1.0", tmp / "k1")
    rc, out = install(b1, env["cfg"])
    assert (rc, out["outcome"]) == (2, "error")
    assert "state.json" in out["reason"]


def test_list_shows_the_signing_key_ids_and_rollback_knows_no_unknown_driver(
        env: dict[str, Any]) -> None:
    tmp, cfg = env["tmp"], env["cfg"]
    install(pack(env["src"], env["out"], "1.1.0", tmp / "k1"), cfg)
    listed = json.loads(cli("drivers", "list", "--config", str(cfg), "--json").stdout)
    sim = next(d for d in listed["drivers"] if d["name"] == "simulated")
    assert sim["keyids"] == [env["k1"]["keyid"]]
    assert env["k1"]["keyid"] in cli("drivers", "list", "--config", str(cfg)).stdout
    res = cli("drivers", "rollback", "nosuch", "--config", str(cfg), "--json")
    assert res.returncode == 2
    assert "no driver named 'nosuch'" in json.loads(res.stdout)["reason"]


def test_the_agent_writes_an_install_entry_lost_to_a_kill(env: dict[str, Any]) -> None:
    tmp, store = env["tmp"], env["store"]
    cfg = gateway_yaml(tmp, [tmp / "k1.pub"], broker=f"mqtt://127.0.0.1:{free_port()}")
    b1 = pack(env["src"], env["out"], "1.1.0", tmp / "k1")
    res = cli("drivers", "install", str(b1), "--config", str(cfg), "--json",
              env={**os.environ, "EDGE_AGENT_TEST_CRASH_AT": "switched"})
    assert res.returncode == -9 and _events(store) == []
    proc = subprocess.Popen([EDGE_AGENT, "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _events(store) == [("installed", "1.1.0")], 30,
                 "the agent's late journal entry")
        assert _entries(store)[0]["late"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
