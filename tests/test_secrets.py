"""Secrets: `edge-agent validate` and start-up check the files a config names as secrets
(exist, regular file, size cap, readable, not group/world-readable) at the file:line of
their key, and reading one at run time is bounded (a directory, /dev/zero, a FIFO)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_agent.cli import main
from edge_agent.config.loader import check_secrets, load_gateway_config
from edge_agent.config.models import SecretError, SecretRef, TlsConfig
from edge_agent.contract.mqtt import tls_context
from edge_agent.contract.settings._secret_files import MAX_SECRET_BYTES
from tests.unprivileged import as_unprivileged


def gateway(tmp_path: Path, password: str, *, tls: str = "", extra: str = "") -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(f"""\
gateway:
  id: gw-1
  district: "371312"
  street: "371312001"
  community: "371312001001"
uplink:
  broker: mqtts://127.0.0.1:8883
  username: gw-1
  password: {password}
{tls}{extra}""", "utf-8")
    return path


def secret(tmp_path: Path, text: str = "s3cret\n", mode: int = 0o600) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text(text, "utf-8")
    path.chmod(mode)
    return path


def validate(path: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["validate", str(path)])
    return result.exit_code, result.stderr.splitlines()


@pytest.mark.parametrize(("target", "needle", "hint"), [
    ("missing", "does not exist", "create it"),
    ("folder", "is a directory, not a regular file", "give the file inside it"),
    ("/dev/zero", "is a character device, not a regular file", "a secret is read from"),
    ("big", f"more than the {MAX_SECRET_BYTES // 1024} KiB", "is this the right file"),
])
def test_validate_names_an_unusable_secret_file_at_its_key(
        tmp_path: Path, target: str, needle: str, hint: str) -> None:
    if target == "folder":
        file = tmp_path / "secrets"
        file.mkdir()
    elif target == "big":
        file = secret(tmp_path, "x" * (MAX_SECRET_BYTES + 1))
    elif target == "missing":
        file = tmp_path / "nowhere" / "mqtt-password"
    else:
        file = Path(target)
    path = gateway(tmp_path, f"{{file: {file}}}")
    code, lines = validate(path)
    assert code == 2
    assert lines[0].startswith(f"{path}:9:20: uplink.password.file: secret file {file} ")
    assert needle in lines[0] and f"(hint: {hint}" in lines[0]
    assert "nothing was started" in lines[-1]


def test_validate_names_a_secret_this_user_cannot_read(tmp_path: Path) -> None:
    file = secret(tmp_path, mode=0o000)
    path = gateway(tmp_path, f"{{file: {file}}}")
    code, lines = as_unprivileged(lambda: validate(path))  # root reads every file
    assert code == 2 and "cannot be read by this user" in lines[0] and "chmod 600" in lines[0]


def test_a_group_or_world_readable_secret_is_a_warning(tmp_path: Path) -> None:
    file = secret(tmp_path, mode=0o644)
    path = gateway(tmp_path, f"{{file: {file}}}")
    code, lines = validate(path)
    assert code == 0
    assert lines[0] == (f"{path}:9:20: uplink.password.file: warning: secret file {file} "
                        f"may be read by group and others (mode 0644) (hint: chmod 600 {file}; "
                        "only the service's user needs it)")
    file.chmod(0o600)
    assert validate(path) == (0, [])


def test_insecure_skip_verify_and_an_unset_variable_are_warned_about(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_TEST_PASSWORD", raising=False)
    path = gateway(tmp_path, "{env: GW_TEST_PASSWORD}",
                   tls="  tls: {insecure_skip_verify: true}\n")
    code, lines = validate(path)
    assert code == 0
    assert lines[0].startswith(f"{path}:9:19: uplink.password.env: warning: environment "
                               "variable GW_TEST_PASSWORD is not set here")
    assert lines[1].startswith(f"{path}:10:31: uplink.tls.insecure_skip_verify: warning: TLS "
                               "certificate checks are OFF")


def test_tls_files_are_checked_too(tmp_path: Path) -> None:
    file = secret(tmp_path)
    path = gateway(tmp_path, f"{{file: {file}}}", tls="  tls: {ca_file: /dev/zero}\n")
    code, lines = validate(path)
    assert code == 2
    assert lines[0].startswith(f"{path}:10:18: uplink.tls.ca_file: certificate file "
                               "/dev/zero is a character device")
    with pytest.raises(SecretError, match=r"tls\.ca_file: /dev/zero is a character device"):
        tls_context(TlsConfig(ca_file=Path("/dev/zero")))


def test_run_refuses_to_start_with_an_unusable_secret(tmp_path: Path) -> None:
    path = gateway(tmp_path, f"{{file: {tmp_path}}}")
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 2
    assert f"{path}:9:20: uplink.password.file: secret file {tmp_path} is a directory" \
        in result.stderr


def test_validate_never_shows_a_secret(tmp_path: Path) -> None:
    file = secret(tmp_path, "the-secret-value\n")
    path = gateway(tmp_path, f"{{file: {file}}}")
    cfg = load_gateway_config(path)
    assert check_secrets(path, cfg) == ([], [])
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert "the-secret-value" not in result.output + result.stderr


@pytest.mark.parametrize("target", ["folder", "/dev/zero", "fifo", "big"])
def test_reading_a_secret_is_bounded(tmp_path: Path, target: str) -> None:
    if target == "folder":
        file = tmp_path
    elif target == "fifo":
        file = tmp_path / "pipe"
        os.mkfifo(file)
    elif target == "big":
        file = secret(tmp_path, "x" * (10 * MAX_SECRET_BYTES))
    else:
        file = Path(target)
    started = time.monotonic()
    with pytest.raises(SecretError) as err:
        SecretRef(file=file).reveal()
    assert str(file) in str(err.value)
    assert time.monotonic() - started < 30, "never a hang on a FIFO"


def test_a_good_secret_is_read_stripped(tmp_path: Path) -> None:
    assert SecretRef(file=secret(tmp_path, "  s3cret \n")).reveal().get_secret_value() == "s3cret"
