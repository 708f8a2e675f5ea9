"""`edge-collector`: run as a real process (managed Mosquitto), then inspect the store."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from aiomqtt import ProtocolVersion
from click.testing import CliRunner

from collector.cli import main
from edge_agent.contract.wire import Ack
from tests.harness import wait_for
from tests.peers import Mosquitto, free_port, require_binary, wait_port
from tests.test_collector_mqtt import acks_until
from tests.test_collector_support import (
    as_dict,
    batch,
    data_loss,
    dumps,
    new_epoch,
    reading,
    topics,
)


def write_config(tmp: Path, port: int, **overrides: Any) -> Path:
    (tmp / "gw-a.password").write_text("secret-a\n")
    cfg: dict[str, Any] = {
        "collector": {"id": "t1"},
        "store": f"sqlite:///{tmp / 'var' / 'district.db'}",
        "broker": "managed",
        "managed_broker": {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp / "broker"),
                           "users": [{"username": "gw-a",
                                      "password": {"file": str(tmp / "gw-a.password")}}]},
        "log_level": "info",
        **overrides,
    }
    path = tmp / "collector.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "collector", "run", "--config", str(config)],
                                stdout=out, stderr=out)


async def publish_and_wait(port: int, payloads: list[bytes], seqs: set[int]) -> list[Ack]:
    async with aiomqtt.Client("127.0.0.1", port, identifier="gw-a", username="gw-a",
                              password="secret-a", protocol=ProtocolVersion.V311) as gw:
        await gw.subscribe(topics("gw-a").ack, qos=1)
        for p in payloads:
            await gw.publish(topics("gw-a").events, p, qos=1)
        return await acks_until(gw, seqs)


def test_run_ingests_and_the_inspection_commands_report(tmp_path: Path, store_url: str) -> None:
    """On both stores: `run` ingests, `stats`, `gaps` and `quarantine` report it."""
    require_binary("mosquitto")
    port = free_port()
    config = write_config(tmp_path, port, store=store_url)
    log = tmp_path / "collector.log"
    proc = start(config, log)
    try:
        wait_port(port)
        # The broker listens a moment before the collector has subscribed; Mosquitto drops
        # what nobody subscribed to yet (a real gateway would resend after its ack timeout).
        deadline = time.monotonic() + 10
        while "broker_connected" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        epoch = new_epoch()
        events = [reading("gw-a", epoch, s) for s in (1, 2, 3, 6, 7)]
        events.append(data_loss("gw-a", epoch, 8, [[4, 4]]))
        bad = as_dict(reading("gw-a", epoch, 9))
        bad["severity"] = "apocalyptic"
        asyncio.run(publish_and_wait(port, [batch(events), b"not json", dumps([bad])],
                                     {1, 2, 3, 6, 7, 8, 9}))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    assert code == 0, log.read_text()
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    names = [r["event"] for r in records]
    for expected in ("managed_broker_started", "broker_connected", "payload_quarantined",
                     "collector_stopped", "managed_broker_stopped"):
        assert expected in names, names
    stopped = next(r for r in records if r["event"] == "collector_stopped")
    assert (stopped["inserted"], stopped["quarantined"]) == (6, 2)

    url = store_url
    runner = CliRunner()
    stats = runner.invoke(main, ["stats", "--store", url])
    assert stats.exit_code == 0, stats.output
    assert "events: 6" in stats.output and "quarantined: 2" in stats.output
    assert "high 8\treceived 6\tcontiguous 3\tmissing 2" in stats.output
    gaps = runner.invoke(main, ["gaps", "--store", url, "--gateway", "gw-a"])
    assert gaps.exit_code == 0, gaps.output
    assert f"gw-a\t{epoch}\t4-4\t1 events\texplained (outbox_full)" in gaps.output
    assert f"gw-a\t{epoch}\t5-5\t1 events\tUNEXPLAINED" in gaps.output
    assert "total: 1 unexplained, 1 explained" in gaps.output
    quarantine = runner.invoke(main, ["quarantine", "--store", url, "--limit", "5"])
    assert quarantine.exit_code == 0, quarantine.output
    lines = quarantine.output.splitlines()
    assert len(lines) == 2 and "severity must be one of" in lines[0]
    assert "payload is not JSON" in lines[1] and "\tgw-a\t8 bytes\t" in lines[1]


def test_config_mistakes_are_listed_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("collector: {id: c1}\nstore: mysql://x\n"
                    "broker: {url: mqtt://h, share_grup: a}\n")
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{path}:2:") and "store" in line for line in lines), lines
    assert any(line.startswith(f"{path}:3:") and "share_grup" in line for line in lines), lines
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("text", "named"), [
    ("broker: {url: 'mqtt://h:99999'}\n", "broker.url: expected mqtt://host:port"),
    ("broker: {url: 'mqtt://[::1'}\n", "broker.url: expected mqtt://host:port"),
    ("broker: managed\nmanaged_broker: {listen: '127.0.0.1:70000', state_dir: b}\n",
     "managed_broker.listen: the port must be 1-65535"),
    ("broker: {url: 'mqtt://h:1883'}\napi: {listen: '127.0.0.1:99999', "
     "cursor_key: {env: K}}\n", "api.listen: the port must be 1-65535"),
])
def test_a_port_no_socket_can_have_is_a_config_mistake(
        tmp_path: Path, text: str, named: str) -> None:
    """Caught by validate, not by a traceback from the socket layer at `run`."""
    path = tmp_path / "c.yaml"
    path.write_text("collector: {id: c1}\nstore: sqlite:///x.db\n" + text)
    for command in ("validate", "run"):
        args = [command, str(path)] if command == "validate" else [command, "--config", str(path)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert named in result.stderr and f"{path}:" in result.stderr
        assert "Traceback" not in result.output


def test_operator_errors_exit_2_without_a_traceback(tmp_path: Path) -> None:
    require_binary("mosquitto")
    port = free_port()
    cases = {
        "postgres": (write_config(tmp_path, port, store="postgresql://c@127.0.0.1:1/d"),
                     "hint: is the server up"),
    }
    for _name, (config, message) in cases.items():
        result = subprocess.run([sys.executable, "-m", "collector", "run", "--config",
                                 str(config)], capture_output=True, timeout=30)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr.decode() and b"Traceback" not in result.stderr
    # A missing password file, and a port already taken.
    config = write_config(tmp_path, port)
    (tmp_path / "gw-a.password").unlink()
    result = subprocess.run([sys.executable, "-m", "collector", "run", "--config", str(config)],
                            capture_output=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert b"gw-a.password does not exist" in result.stderr, result.stderr
    config = write_config(tmp_path, port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = subprocess.run([sys.executable, "-m", "collector", "run", "--config",
                                 str(config)], capture_output=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert b"managed broker (mosquitto) did not start on 127.0.0.1:" in result.stderr
    assert b"Address already in use" in result.stderr and b"Traceback" not in result.stderr
    # No mosquitto installed: `run` and `validate` name the key and the package.
    config = write_config(tmp_path, port, managed_broker={
        **yaml.safe_load(config.read_text())["managed_broker"], "binary": "no-such-mosquitto"})
    for argv in (["run", "--config", str(config)], ["validate", str(config)]):
        result = subprocess.run([sys.executable, "-m", "collector", *argv],
                                capture_output=True, timeout=30)
        assert result.returncode == 2, result.stderr
        assert b"managed_broker.binary: 'no-such-mosquitto' not found" in result.stderr
        assert b"apt-get install mosquitto" in result.stderr and b"Traceback" not in result.stderr


def test_inspection_commands_need_an_existing_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["stats", "--store", f"sqlite:///{tmp_path / 'no.db'}"])
    assert result.exit_code == 2 and "no store at" in result.output
    assert not (tmp_path / "no.db").exists()


def test_a_missing_tls_file_is_an_operator_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), broker={
        "url": "mqtts://127.0.0.1:8883", "tls": {"ca_file": str(tmp_path / "no-ca.pem")}})
    text = yaml.safe_load(config.read_text())
    del text["managed_broker"]
    config.write_text(yaml.safe_dump(text))
    result = subprocess.run([sys.executable, "-m", "collector", "run", "--config", str(config)],
                            capture_output=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert b"broker TLS settings:" in result.stderr and b"Traceback" not in result.stderr


def _validate(config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["validate", str(config)])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_validate_refuses_what_run_would_refuse(tmp_path: Path) -> None:
    """`validate` said ok to configs `run` then refused: each is named at its place."""
    require_binary("mosquitto")
    port = free_port()
    config = write_config(tmp_path, port)
    code, out = _validate(config)  # gw-a.password is 0644
    assert code == 0 and out.endswith(f"{config}: ok, 1 warning(s)\n")
    assert "warning: " in out and "may be read by group and others" in out
    (tmp_path / "gw-a.password").chmod(0o600)
    assert _validate(config) == (0, f"{config}: ok\n")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"gateways": {"file": str(tmp_path / "none.yaml")}},
         f"gateways.file: {tmp_path / 'none.yaml'}:1:1: file not found"),
        ({"managed_broker": {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "b"),
                             "users": [{"username": "gw-a",
                                        "password": {"file": str(tmp_path / "none.pw")}}]}},
         "managed_broker.users.0.password.file: secret file"),
        ({"api": {"cursor_key": {"file": str(tmp_path / "short.key")}}},
         "api.cursor_key: at least 16 characters"),
    ]
    (tmp_path / "short.key").write_text("0123456789\n")
    (tmp_path / "short.key").chmod(0o600)
    (tmp_path / "dup.yaml").write_text(
        "gateways:\n  gw-a: {district: '371312', street: s, community: c}\n"
        "  gw-a: {district: '371312', street: s, community: c}\n")
    cases.append(({"gateways": {"file": str(tmp_path / "dup.yaml")}},
                  f"gateways.file: {tmp_path / 'dup.yaml'}:3:3: gateways.gw-a: duplicate key"))
    for overrides, named in cases:
        write_config(tmp_path, port, **overrides)
        code, out = _validate(config)
        assert code == 2 and named in out and "nothing was started" in out, (overrides, out)
    ca = tmp_path / "no-ca.pem"
    text = yaml.safe_load(write_config(tmp_path, port).read_text())
    del text["managed_broker"]
    text["broker"] = {"url": "mqtts://127.0.0.1:8883", "tls": {"ca_file": str(ca)}}
    config.write_text(yaml.safe_dump(text))
    code, out = _validate(config)
    assert code == 2 and f"broker.tls.ca_file: certificate file {ca} does not exist" in out
    assert "a PEM file" in out and "one line" not in out  # not a secret's hint


def test_shipped_collector_configs_validate() -> None:
    require_binary("mosquitto")
    root = Path(__file__).resolve().parent.parent
    for name in ("collector.demo.yaml", "collector.example.yaml"):
        # their secrets are made by `./run demo` / the installer, not shipped
        result = CliRunner().invoke(main, ["validate", "--skip-secrets",
                                           str(root / "configs" / name)])
        assert result.exit_code == 0, result.output


def test_the_removed_embedded_broker_is_named_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("collector: {id: c1}\nstore: sqlite:///x.db\nbroker: embedded\n"
                    "embedded_broker: {listen: '127.0.0.1:1883'}\n")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{path}:3:9: broker: the embedded broker (amqtt) was removed; "
                               "use `broker: managed`"), lines
    assert lines[1].startswith(f"{path}:4:1: embedded_broker: unknown key"), lines
    assert "did you mean `managed_broker`" in lines[1]


def test_a_broker_outage_logs_a_few_lines_not_one_per_attempt(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Reconnect attempts every ≤ 0.2 s for the whole outage; the warnings are counted by
    RepeatLimiter, and the reconnect says how many attempts it took."""
    config = tmp_path / "collector.yaml"
    config.write_text(yaml.safe_dump({
        "collector": {"id": "t1"}, "store": f"sqlite:///{tmp_path / 'district.db'}",
        "broker": {"url": mosquitto.url}, "reconnect": {"initial_s": 0.05, "max_s": 0.2},
        "log_level": "info"}))
    log = tmp_path / "collector.log"
    proc = start(config, log)

    def events() -> list[dict[str, Any]]:
        return [json.loads(line) for line in log.read_text().splitlines()
                if line.startswith("{")]

    def named(name: str) -> list[dict[str, Any]]:
        return [e for e in events() if e["event"] == name]

    try:
        wait_for(lambda: named("broker_connected"), 15, "the collector connected")
        mosquitto.stop()
        wait_for(lambda: named("broker_connect_failed"), 15, "a failed reconnect")
        time.sleep(3)  # the outage: ~15-60 attempts at 0.05-0.2 s
        mosquitto.start()
        reconnected = wait_for(lambda: named("broker_reconnected"), 15, "the reconnect")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    assert code == 0, log.read_text()
    assert reconnected[0]["attempts"] >= 10, reconnected
    loud = [e for e in events() if e["level"] in ("warning", "error")
            and e["event"] != "gateway_registry_missing"]
    assert [e["event"] for e in loud] == ["broker_lost", "broker_connect_failed"], loud
    assert len(log.read_text().splitlines()) < 12, log.read_text()
