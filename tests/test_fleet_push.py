"""edge-fleet push against real OpenSSH and the real `edge-agent drivers install`.

One sshd serves three gateway directories (each its own gateway YAML trusting the test's
signing key, its own driver store); bundles are packed and signed with the real
`edge-agent drivers pack` (tests/bundle_support.py). Must hold (issue 13): a signed
bundle installs on all three; again, it is already current; a tampered one is refused by
all; an older one is refused (no downgrade); an unreachable gateway is reported and does
not stop the others; with running agents, a bundle whose driver crashes on start is
rolled back and reported, and `--canary 1` then leaves the other gateways untouched.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge_fleet.cli import main
from tests import harness
from tests.bundle_support import CRASHING, EDGE_AGENT, cli, keygen, pack, simulated_copy
from tests.peers import Mosquitto, free_port
from tests.sshd import Sshd, inventory, require_sshd
from tests.sshd import keygen as ssh_keygen

GATEWAYS = ("gw-f1", "gw-f2", "gw-f3")


@dataclass
class Fleet:
    root: Path
    sshd: Sshd
    inventory: Path
    configs: dict[str, Path]
    src: Path
    signing: Path

    def push(self, bundle: Path, *extra: str) -> tuple[int, dict[str, dict[str, Any]]]:
        report = self.root / "report.json"
        result = CliRunner().invoke(main, ["push", str(bundle), "--inventory",
                                           str(self.inventory), "--report", str(report),
                                           *extra], catch_exceptions=False)
        doc = json.loads(report.read_text())
        assert doc["gateways_selected"] == len(doc["gateways"])
        return result.exit_code, {g["gateway"]: g for g in doc["gateways"]}

    def active(self, gid: str) -> tuple[str, str]:
        listed = cli("drivers", "list", "--config", str(self.configs[gid]), "--json")
        sim = next(d for d in json.loads(listed.stdout)["drivers"] if d["name"] == "simulated")
        return sim["version"], sim["source"]

    def uploads_left(self) -> list[Path]:
        return list((self.root / "box-tmp").iterdir())


def gateway_config(root: Path, gid: str, signing_pub: Path, broker: str,
                   devices: list[dict[str, Any]] | None = None) -> Path:
    box = root / gid
    box.mkdir()
    cfg = harness.gateway_yaml(gid, broker, box / "outbox.db", devices=devices)
    cfg["drivers"] = {"trusted_keys": [{"file": str(signing_pub)}], "probation_s": 2}
    return harness.write_yaml(box / "gateway.yaml", cfg)


def make_fleet(root: Path, broker: str, devices: list[dict[str, Any]] | None = None,
               extra_gateways: list[dict[str, object]] | None = None) -> Fleet:
    key = ssh_keygen(root / "maintainer")
    server = Sshd(root / "sshd", [(root / "maintainer.pub").read_text()],
                  binary=require_sshd()).start()
    known = root / "known_hosts"
    known.write_text(server.known_hosts_line())
    keygen(root / "signing")
    configs = {gid: gateway_config(root, gid, root / "signing.pub", broker, devices)
               for gid in GATEWAYS}
    (root / "box-tmp").mkdir()
    inv = inventory(root / "inventory.yaml", [
        {"id": gid, "host": "127.0.0.1", "port": server.port, "config": str(cfg),
         "edge_agent": EDGE_AGENT} for gid, cfg in configs.items()] + (extra_gateways or []),
        client_key=key, known_hosts=known, defaults={"temp_dir": str(root / "box-tmp")})
    return Fleet(root, server, inv, configs, simulated_copy(root / "src"), root / "signing")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    closed = {"id": "gw-down", "host": "127.0.0.1", "port": free_port()}
    f = make_fleet(tmp_path, "mqtt://127.0.0.1:9", extra_gateways=[closed])
    yield f
    f.sshd.stop()


def tampered(bundle: Path, dest: Path) -> Path:
    """The bundle with one byte of its driver wheel flipped, signatures kept."""
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(".whl"):
                data = data[:-30] + bytes([data[-30] ^ 0xFF]) + data[-29:]
            zout.writestr(info, data)
    return dest


def test_signed_installs_on_all_tampered_and_older_are_refused_by_all(fleet: Fleet) -> None:
    new = pack(fleet.src, fleet.root / "out", "1.2.0", fleet.signing, metadata_version=2)
    code, by_id = fleet.push(new, "--to", "371312001001", "--wait", "0")
    assert code == 1  # gw-down
    for gid in GATEWAYS:
        assert (by_id[gid]["outcome"], by_id[gid]["version"], by_id[gid]["previous"]) == \
            ("installed", "1.2.0", "builtin"), by_id[gid]
        assert fleet.active(gid) == ("1.2.0", "bundle")
    assert by_id["gw-down"]["outcome"] == "unreachable"

    bad = tampered(pack(fleet.src, fleet.root / "out3", "1.3.0", fleet.signing,
                        metadata_version=3), fleet.root / "simulated-1.3.0.edgebundle")
    code, by_id = fleet.push(bad, "--to", "Qinghe", "--wait", "0")
    assert code == 1
    for gid in GATEWAYS:
        assert by_id[gid]["outcome"] == "refused" and \
            by_id[gid]["reason"].startswith("tampered"), by_id[gid]
        assert fleet.active(gid) == ("1.2.0", "bundle")

    old = pack(fleet.src, fleet.root / "out1", "1.1.0", fleet.signing, metadata_version=1)
    code, by_id = fleet.push(old, "--to", "all", "--wait", "0", "--parallel", "2")
    assert code == 1
    for gid in GATEWAYS:
        assert by_id[gid]["outcome"] == "refused" and \
            by_id[gid]["reason"].startswith("downgrade"), by_id[gid]
        assert fleet.active(gid) == ("1.2.0", "bundle")
    assert fleet.uploads_left() == []


def test_a_crashing_driver_is_rolled_back_and_the_canary_stops_the_push(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    f = make_fleet(tmp_path, mosquitto.url,
                   devices=harness.sim_devices(2, period_s=0.1))
    agents = [harness.agent(cfg, tmp_path / f"{gid}.log").start()
              for gid, cfg in f.configs.items()]
    try:
        for gid in GATEWAYS:  # each agent has said it runs (the installer waits for it)
            harness.wait_for(lambda g=gid: (f.root / g / "drivers" / "agent.json").exists(),
                             30, f"{gid}'s agent")
        crashing = simulated_copy(tmp_path / "crashing", extra=CRASHING)
        bundle = pack(crashing, tmp_path / "out", "2.0.0", f.signing)
        code, by_id = f.push(bundle, "--to", "all", "--canary", "1", "--wait", "30")
        assert code == 1
        first, *rest = GATEWAYS
        assert by_id[first]["outcome"] == "rolled_back", by_id[first]
        assert "crash" in by_id[first]["reason"], by_id[first]
        assert f.active(first)[1] == "builtin"
        for gid in rest:
            assert by_id[gid]["outcome"] == "skipped"
            assert f"canary {first} rolled_back" in by_id[gid]["reason"]
            assert f.active(gid)[1] == "builtin"
            assert not (f.root / gid / "drivers" / "simulated").exists()
        assert all(a.alive() for a in agents)
    finally:
        for a in agents:
            a.stop()
        f.sshd.stop()


def test_the_report_is_what_the_docs_say(fleet: Fleet) -> None:
    new = pack(fleet.src, fleet.root / "out", "1.2.0", fleet.signing)
    fleet.push(new, "--to", "gw-f1", "--wait", "0")
    doc = json.loads((fleet.root / "report.json").read_text())
    assert set(doc) == {"report_version", "command", "bundle", "to", "gateways_selected",
                        "started_at", "wall_s", "parallel", "canary", "wait_s", "ok",
                        "counts", "gateways"}
    assert doc["ok"] and doc["counts"]["installed"] == 1 and doc["bundle"]["file"] == new.name
    assert set(doc["gateways"][0]) == {"gateway", "address", "outcome", "reason", "seconds",
                                       "driver", "version", "previous"}
    docs = (Path(__file__).parent.parent / "docs" / "fleet-ops.md").read_text()
    assert all(f'"{k}"' in docs for k in [*doc, *doc["gateways"][0]])
