"""`edge-agent init`: a commented gateway YAML from options, questions or discovery,
which `edge-agent validate` accepts; bad answers are exit 2 naming the option."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers.onvif.simulator import DiscoveryResponder, OnvifSimulator
from edge_agent.cli import main as cli
from edge_agent.config.loader import load_gateway_config

EDGE_AGENT = str(Path(sys.executable).parent / "edge-agent")
PLACE = ["--id", "gw-qhw-03", "--district", "371312", "--street", "371312001",
         "--community", "371312001003"]


@pytest.fixture
def password(tmp_path: Path) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    return path


def _init(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["init", "--no-ask", *args])
    return result.exit_code, result.output


def test_init_from_options_passes_validate_and_explains_each_key(
        tmp_path: Path, password: Path) -> None:
    out = tmp_path / "gw.yaml"
    code, text = _init("--out", str(out), *PLACE, "--broker", "mqtt://127.0.0.1:1883",
                       "--password-file", str(password), "--outbox", str(tmp_path / "ob.db"),
                       "--device", "id=smoke-b1-01,driver=simulated,kind=smoke,period_s=5",
                       "--device", "id=gate-1,driver=simulated,kind=gate,name=北门")
    assert code == 0, text
    result = subprocess.run([EDGE_AGENT, "validate", str(out)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "ok: gateway gw-qhw-03, 2 device(s)" in result.stdout
    yaml_text = out.read_text()
    for key in ("id:", "district:", "broker:", "password:", "path:"):
        line = next(li for li in yaml_text.splitlines() if li.strip().startswith(key))
        assert "#" in line, f"no comment on {line!r}"
    cfg = load_gateway_config(out)
    assert cfg.uplink.username == "gw-qhw-03" and cfg.gateway.community == "371312001003"
    assert [d.id for d in cfg.devices] == ["smoke-b1-01", "gate-1"]


def test_tls_broker_gets_a_ca_file_and_an_existing_file_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "gw.yaml"
    args = ["--out", str(out), *PLACE, "--broker", "mqtts://mqtt.district.example:8883"]
    assert _init(*args)[0] == 0
    cfg = load_gateway_config(out)
    assert cfg.uplink.tls is not None and str(cfg.uplink.tls.ca_file) == "/etc/edge-agent/ca.pem"
    before = out.read_text()
    code, text = _init(*args[:2], *PLACE, "--broker", "mqtt://127.0.0.1:1883")
    assert code == 2 and "--out" in text and "--force" in text
    assert out.read_text() == before
    assert _init(*args[:2], "--force", *PLACE, "--broker", "mqtt://127.0.0.1:1883")[0] == 0
    assert load_gateway_config(out).uplink.tls is None


@pytest.mark.parametrize(("change", "named"), [
    (["--district", "37131"], "--district"),
    (["--id", "gw/1"], "--id"),
    (["--id", "gw+"], "--id"),
    (["--community", "a#b"], "--community"),
    (["--broker", "http://x:1"], "--broker"),
    (["--broker", "mqtt://user:pw@x:1883"], "--broker"),
    (["--device", "driver=simulated"], "--device"),
    (["--device", "id=x,kind"], "--device"),
    (["--outbox", ""], "--outbox"),
    (["--outbox", "/tmp"], "--outbox"),
])
def test_bad_options_are_exit_2_naming_the_option(tmp_path: Path, change: list[str],
                                                  named: str) -> None:
    args = dict(zip(PLACE[::2], PLACE[1::2], strict=True)) | {"--broker": "mqtt://h:1883"}
    flat = [x for k, v in args.items() if k != change[0] for x in (k, v)]
    code, text = _init("--out", str(tmp_path / "gw.yaml"), *flat, *change)
    assert code == 2, text
    assert named in text and "Traceback" not in text
    assert not (tmp_path / "gw.yaml").exists()


def test_an_out_folder_that_does_not_exist_is_named_before_any_question(
        tmp_path: Path) -> None:
    args = [*PLACE, "--broker", "mqtt://h:1883", "--password-file", str(tmp_path / "pw")]
    code, text = _init("--out", str(tmp_path / "no" / "such" / "gw.yaml"), *args)
    assert code == 2 and "--out: the folder" in text and "mkdir -p" in text, text
    assert "Traceback" not in text
    (tmp_path / "ro").mkdir(mode=0o555)
    if os.geteuid() != 0:  # root writes anywhere
        code, text = _init("--out", str(tmp_path / "ro" / "gw.yaml"), *args)
        assert code == 2 and "--out: cannot write in" in text, text


def test_a_missing_option_without_a_terminal_is_named(tmp_path: Path) -> None:
    code, text = _init("--out", str(tmp_path / "gw.yaml"), *PLACE)
    assert code == 2 and "--broker is missing" in text


def test_interactive_init_asks_again_after_a_bad_answer(tmp_path: Path, password: Path) -> None:
    out = tmp_path / "gw.yaml"
    answers = "\n".join(["gw-ask-1", "37131", "371312", "371312001", "371312001009",
                         "mqtt://127.0.0.1:1883", str(password),
                         "id=water-1,driver=simulated,kind=water", "oops", ""]) + "\n"
    proc = subprocess.run([EDGE_AGENT, "init", "--ask", "--out", str(out), "--outbox",
                           str(tmp_path / "ob.db")], input=answers, capture_output=True,
                          text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not a 6-digit admin code" in proc.stdout + proc.stderr
    assert "is not KEY=VALUE" in proc.stderr
    cfg = load_gateway_config(out)
    assert (cfg.gateway.id, cfg.gateway.district) == ("gw-ask-1", "371312")
    assert [d.id for d in cfg.devices] == ["water-1"]
    assert subprocess.run([EDGE_AGENT, "validate", str(out)], check=False).returncode == 0


def test_on_a_terminal_init_asks_without_the_flag(tmp_path: Path) -> None:
    """stdin a real pty: the questions come without --ask."""
    import pty

    out = tmp_path / "gw.yaml"
    master, slave = pty.openpty()
    proc = subprocess.Popen([EDGE_AGENT, "init", "--out", str(out), *PLACE, "--device",
                             "id=s1,driver=simulated,kind=smoke"], stdin=slave,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.close(slave)
    os.write(master, b"mqtt://127.0.0.1:1883\n\n")  # broker, then the default password file
    try:
        output, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
    assert proc.returncode == 0, output
    assert b"Broker URL" in output
    assert str(load_gateway_config(out).uplink.password.file) == "/etc/edge-agent/mqtt-password"


async def test_init_adds_the_cameras_discovery_finds(tmp_path: Path) -> None:
    out = tmp_path / "gw.yaml"
    async with DiscoveryResponder([OnvifSimulator(name="Lobby")]) as responder:
        proc = await asyncio.create_subprocess_exec(
            EDGE_AGENT, "init", "--no-ask", "--out", str(out), *PLACE,
            "--broker", "mqtt://127.0.0.1:1883", "--discover-cameras",
            f"127.0.0.1:{responder.port}", "--discover-timeout", "1.5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    cfg = load_gateway_config(out)
    assert [(d.id, d.driver) for d in cfg.devices] == [("lobby", "onvif")]


async def test_a_device_id_discovery_also_gives_is_named_not_a_line_of_an_unwritten_file(
        tmp_path: Path) -> None:
    out = tmp_path / "gw.yaml"
    async with DiscoveryResponder([OnvifSimulator(name="Lobby")]) as responder:
        proc = await asyncio.create_subprocess_exec(
            EDGE_AGENT, "init", "--no-ask", "--out", str(out), *PLACE,
            "--broker", "mqtt://127.0.0.1:1883", "--device", "id=lobby,driver=simulated,kind=smoke",
            "--discover-cameras", f"127.0.0.1:{responder.port}", "--discover-timeout", "1.5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    text = stderr.decode()
    assert proc.returncode == 2, text
    assert "--device" in text and "`lobby` is also what discovery calls a camera" in text
    assert not out.exists() and "Traceback" not in text


def test_trusted_keys_from_init_are_the_config_s_and_validate_warns_of_a_bad_key_file(
        tmp_path: Path, password: Path) -> None:
    key = tmp_path / "ops-1"
    made = subprocess.run([EDGE_AGENT, "drivers", "keygen", str(key)], capture_output=True,
                          text=True, check=True)
    assert "keyid" in made.stdout
    not_a_key = tmp_path / "ops-2.pub"
    not_a_key.write_text("hello\n")
    out = tmp_path / "gw.yaml"
    code, text = _init("--out", str(out), *PLACE, "--broker", "mqtt://127.0.0.1:1883",
                       "--password-file", str(password), "--outbox", str(tmp_path / "ob.db"),
                       "--trusted-key", f"{key}.pub", "--trusted-key", str(not_a_key))
    assert code == 0, text
    cfg = load_gateway_config(out)
    assert [k.file for k in cfg.drivers.trusted_keys] == [Path(f"{key}.pub"), not_a_key]
    result = subprocess.run([EDGE_AGENT, "validate", str(out)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and "1 warning(s)" in result.stdout, result
    line = next(n for n, li in enumerate(out.read_text().splitlines(), 1) if "ops-2" in li)
    assert f"gw.yaml:{line}:" in result.stderr and "drivers.trusted_keys.1.file" in \
        result.stderr and "not base64" in result.stderr, result.stderr
    # without keys the section is there, commented out, for the installer to fill in
    code, text = _init("--out", str(out), "--force", *PLACE, "--broker",
                       "mqtt://127.0.0.1:1883", "--password-file", str(password))
    assert code == 0, text
    assert "# drivers:" in out.read_text() and not load_gateway_config(out).drivers.trusted_keys
