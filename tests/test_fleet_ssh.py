"""edge-fleet against a real OpenSSH server (tests/sshd.py): what does not need bundles.

A hostile box (garbage, partial, huge or contradicting answers; a missing edge-agent)
is an error for that gateway only, and the upload is removed; an unreachable gateway is
reported and does not stop the others; an unknown or changed host key refuses the
connection with a message naming the gateway and the fix, and nothing runs on the box;
the inventory is checked before any connection (FILE:LINE:COL, exit 2); /api/status of a
running agent comes through the SSH connection; logs come back with control characters
escaped. The box's edge-agent is a script here: what a hostile box would print.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edge_fleet.cli import main
from edge_fleet.inventory import load_inventory
from tests import harness
from tests.peers import Mosquitto, free_port, wait_port
from tests.sshd import Sshd, inventory, keygen, require_sshd

OK_ANSWER = ('{"gateway": "%s", "driver": "simulated", "version": "1.2.0", '
             '"previous": "1.1.0", "outcome": "installed", "reason": ""}')


@dataclass
class Box:
    sshd: Sshd
    key: Path
    known_hosts: Path
    root: Path

    def script(self, name: str, body: str) -> str:
        """A stand-in edge-agent on the box: a shell script; it also leaves a mark."""
        path = self.root / name
        path.write_text(f"#!/bin/sh\ntouch {self.root}/ran-{name}\n{body}\n")
        path.chmod(0o755)
        return str(path)

    def gateway(self, gid: str, **extra: object) -> dict[str, object]:
        return {"id": gid, "host": "127.0.0.1", "port": self.sshd.port, **extra}

    def inventory(self, gateways: list[dict[str, object]], **ssh: object) -> Path:
        tmp = self.root / "box-tmp"
        tmp.mkdir(exist_ok=True)
        return inventory(self.root / "inventory.yaml", gateways, client_key=self.key,
                         known_hosts=self.known_hosts, defaults={"temp_dir": str(tmp)}, **ssh)


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    binary = require_sshd()
    key = keygen(tmp_path / "maintainer")
    server = Sshd(tmp_path / "sshd", [(tmp_path / "maintainer.pub").read_text()],
                  binary=binary).start()
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line())
    yield Box(server, key, known, tmp_path)
    server.stop()


def fleet(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def push(box: Box, inv: Path, *extra: str) -> tuple[int, dict[str, dict[str, object]], str]:
    bundle = box.root / "simulated-1.2.0.edgebundle"
    bundle.write_bytes(b"not really a bundle: the box is a script")
    report = box.root / "report.json"
    code, out, err = fleet("push", bundle, "--to", "all", "--inventory", inv,
                           "--report", report, *extra)
    doc = json.loads(report.read_text())
    return code, {g["gateway"]: g for g in doc["gateways"]}, out + err


def test_a_hostile_box_is_an_error_for_itself_only(box: Box) -> None:
    good = box.script("good", f"echo '{OK_ANSWER % 'gw-good'}'")
    gateways = [
        box.gateway("gw-good", edge_agent=good),
        box.gateway("gw-garbage", edge_agent=box.script("garbage", "echo 'Segmentation fault'")),
        box.gateway("gw-partial", edge_agent=box.script(
            "partial", "printf '{\"outcome\": \"installed\", \"rea'")),
        box.gateway("gw-huge", edge_agent=box.script(
            "huge", "head -c 20000000 /dev/zero | tr '\\0' x")),
        box.gateway("gw-lies", edge_agent=box.script(
            "lies", f"echo '{OK_ANSWER % 'gw-lies'}'; exit 3")),
        box.gateway("gw-two", edge_agent=box.script(
            "two", f"echo '{OK_ANSWER % 'gw-two'}'; echo '{OK_ANSWER % 'gw-two'}'")),
        box.gateway("gw-escape", edge_agent=box.script(
            "escape", "printf '{\"outcome\": \"refused\", \"reason\": \"\\\\u001b[2Jbad\"}\\n'; "
                      "exit 3")),
        box.gateway("gw-missing", edge_agent="/nonexistent/bin/edge-agent"),
        box.gateway("gw-hangs", edge_agent=box.script("hangs", "exec sleep 60")),
    ]
    code, by_id, _ = push(box, box.inventory(gateways, gateway_timeout_s=2), "--wait", "0")
    assert code == 1
    assert by_id["gw-good"]["outcome"] == "installed"
    assert by_id["gw-good"]["version"] == "1.2.0"
    for gid in ("gw-garbage", "gw-partial", "gw-huge", "gw-lies", "gw-two", "gw-missing",
                "gw-hangs"):
        assert by_id[gid]["outcome"] == "error", by_id[gid]
    assert "not JSON" in str(by_id["gw-garbage"]["reason"])
    assert "more than" in str(by_id["gw-huge"]["reason"])
    assert "contradicts" in str(by_id["gw-lies"]["reason"])
    assert "one JSON line" in str(by_id["gw-two"]["reason"])
    assert "edge_agent" in str(by_id["gw-missing"]["reason"])
    assert "gateway_timeout_s=2s" in str(by_id["gw-hangs"]["reason"])
    assert by_id["gw-escape"]["outcome"] == "refused"
    assert "\x1b" not in str(by_id["gw-escape"]["reason"])
    assert "\\x1b" in str(by_id["gw-escape"]["reason"])
    assert list((box.root / "box-tmp").iterdir()) == [], "uploads left on the box"


def test_an_unreachable_gateway_is_reported_and_the_others_go_on(box: Box) -> None:
    good = box.script("good", f"echo '{OK_ANSWER % 'gw-a'}'")
    closed = free_port()
    gateways = [box.gateway("gw-a", edge_agent=good),
                {"id": "gw-down", "host": "127.0.0.1", "port": closed},
                box.gateway("gw-b", edge_agent=good)]
    code, by_id, _ = push(box, box.inventory(gateways), "--parallel", "1")
    assert code == 1
    assert by_id["gw-a"]["outcome"] == by_id["gw-b"]["outcome"] == "installed"
    assert by_id["gw-down"]["outcome"] == "unreachable"
    assert str(closed) in str(by_id["gw-down"]["reason"])


@pytest.mark.parametrize("known", ["missing", "changed"])
def test_an_unknown_or_changed_host_key_refuses_the_connection(box: Box, known: str) -> None:
    if known == "missing":
        box.known_hosts.write_text("")
    else:
        other = keygen(box.root / "other-host")
        kind, key = Path(f"{other}.pub").read_text().split()[:2]
        box.known_hosts.write_text(f"[127.0.0.1]:{box.sshd.port} {kind} {key}\n")
    agent = box.script("agent", f"echo '{OK_ANSWER % 'gw-a'}'")
    code, by_id, text = push(box, box.inventory([box.gateway("gw-a", edge_agent=agent)]))
    assert code == 1 and "host key" in text
    reason = str(by_id["gw-a"]["reason"])
    assert by_id["gw-a"]["outcome"] == "error"
    assert "gw-a" in reason and str(box.known_hosts) in reason and "refused" in reason
    assert ("unknown" in reason and "ssh-keyscan" in reason) if known == "missing" \
        else ("differs" in reason and "fingerprint" in reason)
    assert not (box.root / "ran-agent").exists(), "a command ran on an unverified box"


def test_a_refused_canary_leaves_the_others_untouched(box: Box) -> None:
    refused = box.script("canary", "echo '{\"gateway\": \"gw-1\", \"driver\": \"simulated\", "
                         "\"version\": \"1.0.0\", \"previous\": \"1.1.0\", \"outcome\": "
                         "\"refused\", \"reason\": \"downgrade: 1.0.0 < 1.1.0\"}'; exit 3")
    others = [box.gateway(f"gw-{i}", edge_agent=box.script(f"other{i}", "exit 0"))
              for i in (2, 3)]
    inv = box.inventory([box.gateway("gw-1", edge_agent=refused), *others])
    code, by_id, _ = push(box, inv, "--canary", "1")
    assert code == 1
    assert by_id["gw-1"]["outcome"] == "refused"
    for gid in ("gw-2", "gw-3"):
        assert by_id[gid]["outcome"] == "skipped"
        assert "canary gw-1 refused: downgrade" in str(by_id[gid]["reason"])
    assert not list(box.root.glob("ran-other*")), "the canary rule pushed anyway"


def test_canaries_that_were_all_unreachable_prove_nothing() -> None:
    from edge_fleet.outcome import GatewayResult, Outcome
    from edge_fleet.plan import canary_stop

    down = GatewayResult("gw-1", "a", Outcome.UNREACHABLE, "refused")
    up = GatewayResult("gw-2", "b", Outcome.INSTALLED)
    assert canary_stop([down, up]) is None
    assert "no canary gateway confirmed" in str(canary_stop([down]))
    assert "rolled_back" in str(canary_stop([up, GatewayResult("gw-3", "c",
                                                              Outcome.ROLLED_BACK, "crashed")]))


def test_the_inventory_is_checked_before_any_connection(box: Box) -> None:
    with socket.socket() as listener:  # counts connection attempts: there must be none
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        inv = box.inventory([{"id": "gw-a", "host": "127.0.0.1", "port": port},
                             {"id": "gw-a", "host": "127.0.0.1", "port": port}])
        doc = yaml.safe_load(inv.read_text())
        doc["districts"][0]["streets"][0]["communities"][0]["code"] = "999999001001"
        doc["districts"][0]["streets"][0]["communities"][0]["gateways"][1]["prot"] = 22
        inv.write_text(yaml.safe_dump(doc, sort_keys=False))
        code, out, err = fleet("push", inv, "--to", "all", "--inventory", inv)
        assert code == 2
        assert f"{inv}:" in err and "did you mean `port`" in err
        assert "Traceback" not in out + err
        del doc["districts"][0]["streets"][0]["communities"][0]["gateways"][1]["prot"]
        inv.write_text(yaml.safe_dump(doc, sort_keys=False))
        code, out, err = fleet("push", inv, "--to", "all", "--inventory", inv)
        assert code == 2 and f"{inv}:" in err and "not in street 371312001" in err
        doc["districts"][0]["streets"][0]["communities"][0]["code"] = "371312001001"
        inv.write_text(yaml.safe_dump(doc, sort_keys=False))
        code, out, err = fleet("push", inv, "--to", "all", "--inventory", inv)
        assert code == 2 and "gateway id 'gw-a' is used twice" in err
        with pytest.raises(BlockingIOError):
            listener.accept()
    good = box.inventory([box.gateway("gw-a")])
    code, _, err = fleet("status", "nowhere", "--inventory", good)
    assert code == 2 and "names no gateway" in err and "371312001001" in err
    code, _, err = fleet("push", box.root / "nope.edgebundle", "--to", "all", "--inventory", good)
    assert code == 2 and "no such bundle file" in err
    code, _, err = fleet("push", good, "--to", "all", "--inventory", good,
                         "--report", box.root / "no" / "r.json")
    assert code == 2 and "does not exist" in err
    code, _, err = fleet("push", good, "--to", "all", "--inventory", good, "--wait", "300")
    assert code == 2 and "gateway_timeout_s" in err
    box.key.unlink()
    code, _, err = fleet("status", "all", "--inventory", good)
    assert code == 2 and "client_key" in err and "ssh-keygen" in err
    code, _, err = fleet("status", "all", "--inventory", box.root / "missing.yaml")
    assert code == 2 and "missing.yaml:1:1: file not found" in err


def test_groups_select_by_code_name_or_id(box: Box) -> None:
    inv = load_inventory(box.inventory([box.gateway("gw-a"), box.gateway("gw-b")]))
    assert [g.id for g in inv.select("all")] == ["gw-a", "gw-b"]
    assert [g.id for g in inv.select("qinghe")] == ["gw-a", "gw-b"]
    assert [g.id for g in inv.select("371312001")] == ["gw-a", "gw-b"]
    assert [g.id for g in inv.select("gw-b")] == ["gw-b"]
    assert inv.gateways[0].edge_agent == "/opt/community-data/bin/edge-agent"
    assert inv.gateways[0].config == "/etc/edge-agent/gateway.yaml"


def test_status_comes_through_the_ssh_connection(box: Box, mosquitto: Mosquitto) -> None:
    port = free_port()
    cfg = harness.gateway_yaml("gw-st", mosquitto.url, box.root / "outbox.db",
                               devices=harness.sim_devices(2, period_s=0.5))
    cfg["status_page"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
    agent = harness.agent(harness.write_yaml(box.root / "gw.yaml", cfg),
                          box.root / "agent.log").start()
    try:
        wait_port(port, 30)
        inv = box.inventory([box.gateway("gw-st", status_port=port),
                             box.gateway("gw-nopage", status_port=free_port())])
        code, out, _ = fleet("status", "all", "--json", "--inventory", inv)
        by_id = {g["gateway"]: g for g in json.loads(out)["gateways"]}
        assert code == 1
        assert by_id["gw-st"]["ok"] and by_id["gw-st"]["status"]["gateway"]["id"] == "gw-st"
        assert not by_id["gw-nopage"]["ok"] and "status_port" in by_id["gw-nopage"]["error"]
        code, out, _ = fleet("status", "gw-st", "--inventory", inv)
        assert code == 0 and "gw-st" in out
    finally:
        agent.stop()


def test_logs_run_the_configured_command_and_escape_control_characters(box: Box) -> None:
    log = box.root / "agent.log"
    log.write_text("".join(f'{{"event": "line {i}"}}\n' for i in range(50)) + "evil \x1b[2J\n")
    inv = box.inventory([box.gateway("gw-a")], logs_command=f"tail -n {{lines}} {log}")
    code, out, _ = fleet("logs", "gw-a", "-n", "3", "--inventory", inv)
    assert code == 0
    assert out.splitlines() == ['{"event": "line 48"}', '{"event": "line 49"}', "evil \\x1b[2J"]
    code, _, err = fleet("logs", "gw-zz", "--inventory", inv)
    assert code == 2 and "gw-zz" in err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
