"""WS-Discovery against a loopback responder, `edge-agent discover cameras`, and
`edge-agent validate` on camera entries (discovered YAML, the sample, mistakes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers.onvif.discovery import DiscoveryError, discover, parse_target, to_yaml
from drivers.onvif.simulator import DiscoveryResponder, OnvifSimulator
from drivers.onvif.simulator.services import HOSTILE_BODY
from drivers.onvif.wsdiscovery import build_probe, build_probe_matches, parse_probe_matches
from edge_agent.cli import main as cli
from edge_agent.config.loader import ConfigError, load_gateway_config
from tests.peers import require_binary

EDGE_AGENT = str(Path(sys.executable).parent / "edge-agent")
SAMPLE = Path(__file__).resolve().parents[1] / "drivers" / "onvif" / "sample.yaml"
HEADER = """\
gateway: {id: gw-1, district: "371312", street: "371312001", community: "371312001001"}
uplink: {broker: "mqtt://127.0.0.1:1883"}
"""


def _sims() -> list[OnvifSimulator]:
    return [OnvifSimulator(name="Gate North"), OnvifSimulator(name="Gate North"),
            OnvifSimulator(name="")]


async def test_discovery_finds_the_loopback_cameras_and_its_yaml_validates(
        tmp_path: Path) -> None:
    sims = _sims()
    async with DiscoveryResponder(sims) as responder:
        responder.extra.append(HOSTILE_BODY)  # a hostile answer is refused, not fatal
        found = await discover(parse_target(f"127.0.0.1:{responder.port}"), 1.5)
    assert sorted(m.port for m in found) == sorted(s.port for s in sims)
    assert all(m.host == "127.0.0.1" for m in found)
    text = to_yaml(found, "operator")
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + text)
    cfg = load_gateway_config(path)
    ids = [d.id for d in cfg.devices]
    assert ids.count("gate-north") == 1 and "gate-north-2" in ids
    assert any(i.startswith("cam-127-0-0-1-") for i in ids)
    assert 'password: {file: "/etc/edge-agent/secrets/' in text


def test_the_secrets_folder_is_quoted_in_the_yaml(tmp_path: Path) -> None:
    """`--secrets-dir` is the operator's text: a `#` or `}` in it must not turn into a
    comment or a key of its own."""
    mid, _ = build_probe()
    (match,) = parse_probe_matches(build_probe_matches(
        mid, "urn:uuid:1", "http://127.0.0.1:8080/onvif/device_service",
        ["onvif://www.onvif.org/name/Lobby"]), mid)
    folder = "/srv/cams #1/a, env: X}"
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + to_yaml([match], "viewer", folder))
    (device,) = load_gateway_config(path).devices
    assert str(device.password.file) == f"{folder}/lobby.password"  # type: ignore[attr-defined]


def test_a_probe_that_cannot_be_sent_is_an_error_not_zero_cameras() -> None:
    """In a network namespace of its own (loopback down) nothing can be sent: the command
    says why and exits 1 instead of reporting that no camera answered."""
    # root makes the namespace itself; anyone else inside a user namespace of their own
    isolate = [require_binary("unshare"), "-n" if os.geteuid() == 0 else "-rn"]
    if subprocess.run([*isolate, "true"], capture_output=True).returncode != 0:
        reason = "unshare cannot make a network namespace here (not root, user namespaces off)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    done = subprocess.run([*isolate, EDGE_AGENT, "discover", "cameras", "--target",
                           "127.0.0.1-3:3702", "--timeout", "0.5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot send the probe to 127.0.0.1-3:3702: Network is unreachable" in done.stderr
    assert "answered" not in done.stderr and "Traceback" not in done.stderr


async def test_discover_cameras_cli_prints_yaml(tmp_path: Path) -> None:
    """The real command in its own process (it configures logging for the process)."""
    async with DiscoveryResponder([OnvifSimulator(name="Lobby")]) as responder:
        proc = await asyncio.create_subprocess_exec(
            EDGE_AGENT, "discover", "cameras", "--target", f"127.0.0.1:{responder.port}",
            "--timeout", "1.5", "--username", "viewer",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "id: lobby" in text and 'username: "viewer"' in text
    assert "1 camera(s) answered" in err.decode()
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + text)
    # the password files it names live on the gateway: check the YAML only
    assert CliRunner().invoke(cli, ["validate", "--skip-secrets", str(path)]).exit_code == 0


@pytest.mark.parametrize(("target", "message"), [
    ("239.255.255.250:3702", "add --multicast"),
    ("camera.lan:3702", "not HOST:PORT"),
    ("10.0.0.9-3:3702", "must not go down"),
    ("10.0.0.1:70000", "out of range"),
])
def test_bad_targets_are_refused(target: str, message: str) -> None:
    with pytest.raises(DiscoveryError, match=message):
        parse_target(target)
    result = CliRunner().invoke(cli, ["discover", "cameras", "--target", target])
    assert result.exit_code == 2 and message in result.output


def test_targets_expand_and_multicast_needs_the_flag() -> None:
    assert parse_target("10.1.2.3-5:3702").hosts == ("10.1.2.3", "10.1.2.4", "10.1.2.5")
    assert parse_target("239.255.255.250:3702", multicast=True).is_multicast


def test_probe_matches_are_read_defensively() -> None:
    mid, _ = build_probe()
    good = build_probe_matches(mid, "urn:uuid:1", "http://127.0.0.1:8080/onvif/device_service",
                               ["onvif://www.onvif.org/name/A%20B"])
    assert parse_probe_matches(good, mid)[0].scope("name") == "A B"
    assert parse_probe_matches(good, "uuid:someone-else") == []
    bad_urls = [build_probe_matches(mid, "e", url, []) for url in
                ("ftp://x/", "http://user:pw@127.0.0.1/", "http://[bad/")]
    assert all(parse_probe_matches(b, mid) == [] for b in bad_urls)


def test_discovered_texts_cannot_inject_yaml(tmp_path: Path) -> None:
    from drivers.onvif.wsdiscovery import ProbeMatch

    evil = ProbeMatch("urn:x", "http://127.0.0.1:8080/onvif/device_service", "127.0.0.1", 8080,
                      ("onvif://www.onvif.org/name/Gate%22%0A%20%20%20%20port:%2099%5C",
                       "onvif://www.onvif.org/hardware/X%0Adevices:%20[]"))
    text = to_yaml([evil])
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + text)
    cfg = load_gateway_config(path)
    assert len(cfg.devices) == 1
    cam = cfg.devices[0]
    assert cam.name == 'Gate"     port: 99\\' and cam.model_dump()["port"] == 8080


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CAM_CARPARK_PASSWORD", "x")
    yield


def test_sample_validates(secret_env: None) -> None:
    result = CliRunner().invoke(cli, ["validate", "--skip-secrets", str(SAMPLE)])
    assert result.exit_code == 0, result.output
    cfg = load_gateway_config(SAMPLE)
    assert [d.driver for d in cfg.devices] == ["onvif", "onvif"]


def test_config_errors_fail_validate_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + """\
devices:
  - id: cam-1
    driver: onvif
    host: 192.168.1.300
    username: admin
  - id: cam-2
    driver: onvif
    host: 10.0.0.5
    password: "inline-secret"
""")
    with pytest.raises(ConfigError) as err:
        load_gateway_config(path)
    text = "\n".join(str(i) for i in err.value.issues)
    assert f"{path}:6:11: devices.0.host" in text and "not an IP address" in text
    assert f"{path}:4:5: devices.0.password" in text and "password` is missing" in text
    assert f"{path}:11:15: devices.1.password" in text and "inline-secret" not in text
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
