"""The strict YAML config loader: positions, every issue at once, YAML traps, secrets."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.config import ConfigError, ConfigIssue, load_gateway_config, load_model
from edge_agent.config.loader import MAX_FILE_BYTES
from edge_agent.config.models import DeviceConfig, GatewayConfig, SecretRef
from edge_agent.sdk import registry
from edge_agent.sdk.api import Driver, DriverSpec, EventSink
from tests.unprivileged import as_unprivileged

DATA = Path(__file__).parent / "data" / "config"
ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "configs" / "gateway.example.yaml"

HEAD = """\
gateway:
  id: gw-01
  district: "371312"
  street: "371312001"
  community: "371312001001"
uplink:
  broker: mqtt://broker.local:1883
"""  # 7 lines: text appended below starts on line 8


class FakeDevice(DeviceConfig):
    period_s: float = Field(default=5.0, gt=0)
    token: SecretRef | None = None


def _build(devices: Sequence[DeviceConfig], sink: EventSink) -> Driver:
    raise NotImplementedError


FAKE = DriverSpec(name="fake", options=FakeDevice, build=_build, summary="test driver")


@pytest.fixture
def fake_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "available", lambda: {"fake": FAKE})


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str], Path]:
    def _write(text: str) -> Path:
        path = tmp_path / "gw.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write


def _issues(path: Path, loader: Callable[[Path], Any] = load_gateway_config) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loader(path)
    err = info.value
    assert str(err) == "\n".join(str(i) for i in err.issues)
    return [str(i) for i in err.issues]


def _strip(lines: list[str], path: Path) -> list[str]:
    return [line.removeprefix(f"{path}:") for line in lines]


# --------------------------------------------------------------------------- issue format


def test_issue_str_format() -> None:
    issue = ConfigIssue("gw.yaml", 3, 5, "uplink.broker", "required key missing", "add it")
    assert str(issue) == "gw.yaml:3:5: uplink.broker: required key missing (hint: add it)"
    assert str(ConfigIssue("gw.yaml", 1, 1, "", "file not found")) == "gw.yaml:1:1: file not found"
    err = ConfigError([issue, ConfigIssue("gw.yaml", 4, 1, "a", "b")])
    assert str(err).splitlines() == [str(issue), "gw.yaml:4:1: a: b"]


# --------------------------------------------------------------------------- good files


@pytest.mark.usefixtures("fake_drivers")
def test_minimal_file_loads_with_defaults() -> None:
    cfg = load_gateway_config(DATA / "valid_minimal.yaml")
    assert cfg.gateway.id == "gw-01"
    assert cfg.uplink.keepalive_s == 30 and cfg.outbox.max_bytes == 256 * 1024 * 1024
    assert cfg.devices == []
    assert cfg.log_level == "info"


def test_example_config_loads_cleanly() -> None:
    drivers = registry.available()
    assert "simulated" in drivers
    cfg = load_gateway_config(EXAMPLE)
    assert cfg.gateway.community == "371312001001"
    assert cfg.uplink.password == SecretRef(file=Path("/etc/edge-agent/mqtt-password"))
    assert [d.id for d in cfg.devices][:1] == ["smoke-b1-01"]
    assert all(type(d) is drivers["simulated"].options for d in cfg.devices)


@pytest.mark.usefixtures("fake_drivers")
def test_devices_are_driver_models(write: Callable[[str], Path]) -> None:
    path = write(HEAD + "devices:\n  - {id: s1, driver: fake, period_s: 2.5}\n")
    cfg = load_gateway_config(path)
    assert isinstance(cfg, GatewayConfig)
    (dev,) = cfg.devices
    assert isinstance(dev, FakeDevice)
    assert dev.period_s == 2.5


@pytest.mark.usefixtures("fake_drivers")
@pytest.mark.parametrize(
    ("text", "check"),
    [
        # YAML 1.2 core booleans, any case
        ("status_page:\n  enabled: FALSE\n", lambda c: c.status_page.enabled is False),
        ("status_page:\n  enabled: True\n", lambda c: c.status_page.enabled is True),
        # 0o and 0x integers, plain decimal, floats with a dot or exponent
        ("heartbeat_s: 0x3c\n", lambda c: c.heartbeat_s == 60),
        ("heartbeat_s: 0o74\n", lambda c: c.heartbeat_s == 60),
        ("heartbeat_s: 6e1\n", lambda c: c.heartbeat_s == 60),
        # !!str forces text; a plain leading-zero code stays text (not 755)
        ("gateway:\n  id: gw-01\n  district: '371312'\n  street: !!str 12\n  community: 0755\n",
         lambda c: (c.gateway.street, c.gateway.community) == ("12", "0755")),
        # a YAML 1.1 boolean word is just text where text is expected
        ("gateway:\n  id: gw-01\n  district: '371312'\n  street: s\n  community: c\n"
         "  name: no\n", lambda c: c.gateway.name == "no"),
        # sizes with units; null leaves the default
        ("outbox:\n  max_bytes: 64MiB\n", lambda c: c.outbox.max_bytes == 64 * 1024**2),
        ("uplink:\n  broker: mqtt://b\n  password: ~\n", lambda c: c.uplink.password is None),
    ],
)
def test_values_resolved_as_yaml_1_2(
    write: Callable[[str], Path], text: str, check: Callable[[GatewayConfig], bool]
) -> None:
    overrides = _top_keys(text)
    base = "".join(block for key, block in _blocks(HEAD) if key not in overrides)
    cfg = load_gateway_config(write(base + text))
    assert check(cfg)


def _blocks(text: str) -> list[tuple[str, str]]:
    blocks: list[tuple[str, str]] = []
    for line in text.splitlines(keepends=True):
        if line[:1].isalpha():
            blocks.append((line.split(":")[0], line))
        else:
            key, body = blocks[-1]
            blocks[-1] = (key, body + line)
    return blocks


def _top_keys(text: str) -> set[str]:
    return {key for key, _ in _blocks(text)}


# --------------------------------------------------------------------------- one mistake each

CASES: list[tuple[str, str, list[str]]] = [
    (
        "unknown key with suggestion",
        HEAD + "heartbeat: 30\n",
        ["8:1: heartbeat: unknown key `heartbeat`; did you mean `heartbeat_s`?"],
    ),
    (
        "unknown nested key",
        HEAD + "outbox:\n  pathh: /tmp/x.db\n",
        ["9:3: outbox.pathh: unknown key `pathh`; did you mean `path`?"],
    ),
    (
        "unknown key without close match lists allowed keys",
        HEAD + "outbox:\n  zzz: 1\n",
        ["9:3: outbox.zzz: unknown key `zzz` (hint: allowed keys: path, max_bytes, "
         "commit_batch_max, commit_linger_ms, loss_report_interval_s)"],
    ),
    (
        "missing key points at the parent mapping",
        "gateway:\n  id: gw-01\n  district: '371312'\n  street: s1\nuplink:\n  keepalive_s: 30\n",
        ["1:1: gateway.community: required key missing",
         "5:1: uplink.broker: required key missing"],
    ),
    (
        "missing top-level key points at the top mapping",
        "# a comment\n\nuplink:\n  broker: mqtt://b\n",
        ["3:1: gateway: required key missing"],
    ),
    (
        "yaml 1.1 boolean word",
        HEAD + "status_page:\n  enabled: no\n",
        ["9:12: status_page.enabled: `no` is a YAML 1.1 boolean word; write true or false"],
    ),
    (
        "on is not a boolean",
        HEAD + "status_page: {enabled: on}\n",
        ["8:24: status_page.enabled: `on` is a YAML 1.1 boolean word; write true or false"],
    ),
    (
        "old octal is not a number",
        HEAD + "outbox:\n  commit_batch_max: 0755\n",
        ["9:21: outbox.commit_batch_max: `0755` has a leading zero (a YAML 1.1 octal); "
         "write 0o755 for octal or the number without leading zeros"],
    ),
    (
        "sexagesimal is not a number",
        HEAD + "heartbeat_s: 1:30\n",
        ["8:14: heartbeat_s: `1:30` is a YAML 1.1 base-60 number"],
    ),
    (
        "quoted number",
        HEAD + "heartbeat_s: '60'\n",
        ["8:14: heartbeat_s: expected a number; got `60` (hint: remove the quotes)"],
    ),
    (
        "number where text is expected",
        HEAD + "status_page:\n  listen: 8080\n",
        ['9:11: status_page.listen: expected text; got `8080` (hint: quote the value: "8080")'],
    ),
    (
        "literal needing quotes",
        HEAD.replace("broker.local:1883\n", "broker.local:1883\n  protocol: 5\n"),
        ["8:13: uplink.protocol: expected one of 'auto', '5' or '3.1.1'; got `5` "
         '(hint: quote the value: "5")'],
    ),
    (
        "enum-like choice",
        HEAD + "log_level: verbose\n",
        ["8:12: log_level: expected one of 'debug', 'info', 'warning' or 'error'; got `verbose`"],
    ),
    (
        "empty section",
        HEAD + "outbox:\n",
        ["8:1: outbox: has no value; expected a mapping of `key: value` lines "
         "(hint: fill it in, or remove the key to use the defaults)"],
    ),
    (
        "model validator error at the section",
        HEAD + "  tls: {cert_file: /a.pem}\n",
        ["8:3: uplink.tls: cert_file and key_file go together"],
    ),
    (
        "field validator error at the value",
        HEAD.replace("mqtt://broker.local:1883", "mqtt://u:p@broker.local"),
        ["7:11: uplink.broker: put no credentials in the URL"],
    ),
    (
        "duplicate key names both lines",
        HEAD + "heartbeat_s: 30\nlog_level: info\nheartbeat_s: 40\n",
        ["10:1: heartbeat_s: duplicate key `heartbeat_s`: first on line 8, again on line 10"],
    ),
    (
        "duplicate nested key",
        HEAD + "  keepalive_s: 30\n  keepalive_s: 40\n",
        ["9:3: uplink.keepalive_s: duplicate key `keepalive_s`: first on line 8, again on line 9"],
    ),
    (
        "tab indentation",
        "gateway:\n\tid: gw-01\n",
        ["2:1: YAML syntax error: found character that cannot start any token",
         "(hint: indent with spaces, not tabs)"],
    ),
    (
        "unclosed quote",
        HEAD + "log_level: 'info\n",
        ["YAML syntax error: found unexpected end of stream"],
    ),
    (
        "colon in a plain value",
        HEAD + "  username: a: b\n",
        ["8:14: YAML syntax error: mapping values are not allowed"],
    ),
    (
        "python tag",
        HEAD + "log_level: !!python/name:os.system info\n",
        ["8:12: log_level: the tag !!python/name:os.system is not allowed"],
    ),
    (
        "local tag on a mapping",
        HEAD + "outbox: !custom {path: /x}\n",
        ["8:9: outbox: the tag !custom is not allowed"],
    ),
    (
        "explicit int tag that does not fit",
        HEAD + "heartbeat_s: !!int 1:30\n",
        ["8:14: heartbeat_s: `1:30` is not a valid !!int"],
    ),
    (
        "merge key",
        HEAD + "base: &b {enabled: true}\nstatus_page:\n  <<: *b\n",
        ["8:1: base: unknown key `base`",
         "10:3: status_page.<<: merge keys (`<<`) are not supported"],
    ),
    (
        "collection as a key",
        HEAD + "? [a, b]\n: 1\n",
        ["8:3: a key must be plain text, not a list, mapping or alias"],
    ),
    (
        "recursive alias",
        HEAD + "outbox: &o {path: *o}\n",
        ["8:19: outbox.path: alias `*o` refers to itself"],
    ),
    (
        "undefined alias",
        HEAD + "log_level: *nope\n",
        ["8:12: log_level: alias `*nope` has no anchor `&nope` before it"],
    ),
    (
        "second document",
        HEAD + "---\nlog_level: info\n",
        ["8:1: a second YAML document (`---`) was found"],
    ),
    (
        "top level must be a mapping",
        "- gateway\n- uplink\n",
        ["1:1: the top level must be a mapping of `key: value` lines, not a list"],
    ),
    (
        "resend back-off cap below the ack timeout",
        HEAD + "  ack_timeout_s: 10\n  ack_timeout_max_s: 5\n",
        ["6:1: uplink: ack_timeout_max_s (5) is below ack_timeout_s (10)"],
    ),
    (
        "broker port out of range",
        HEAD.replace("broker.local:1883", "broker.local:99999"),
        ["7:11: uplink.broker: expected mqtt://host:port or mqtts://host:port "
         "(Port out of range 0-65535)"],
    ),
    (
        "broker url with a path",
        HEAD.replace("broker.local:1883", "broker.local:1883/x?y=1"),
        ["7:11: uplink.broker: expected mqtt://host:port or mqtts://host:port, nothing after"],
    ),
    (
        "status page port out of range",
        HEAD + "status_page:\n  listen: 127.0.0.1:99999\n",
        ["9:11: status_page.listen: the port must be 1-65535"],
    ),
    (
        "a number out of range hides no other mistake",
        HEAD + "outbox: {max_bytes: 1e400}\nhearbeat_s: 3\n",
        ["8:21: outbox.max_bytes: a number out of range (inf or nan)",
         "9:1: hearbeat_s: unknown key `hearbeat_s`; did you mean `heartbeat_s`?"],
    ),
    (
        "outbox path is a folder",
        HEAD + "outbox:\n  path: /tmp\n",
        ["9:9: outbox.path: /tmp is a folder; give the database file inside it"],
    ),
    (
        "outbox path is empty",
        HEAD + "outbox:\n  path: ''\n",
        ["9:3: outbox.path: the outbox is a database file"],
    ),
    (
        "an environment variable name no service can set",
        HEAD + "  username: gw-01\n  password: {env: 'bad name=1'}\n",
        ["9:3: uplink.password: `env` is not an environment variable name"],
    ),
    (
        "a tab after a list dash",
        HEAD + "devices:\n-\t{id: a, driver: simulated}\n",
        ["9:2: YAML syntax error", "(hint: indent with spaces, not tabs)"],
    ),
    (
        "empty file",
        "",
        ["1:1: the file holds no settings (it is empty)"],
    ),
    (
        "only comments",
        "# nothing here yet\n",
        ["1:1: the file holds no settings (it is empty)"],
    ),
]


@pytest.mark.usefixtures("fake_drivers")
@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_mistake(write: Callable[[str], Path], text: str, expected: list[str]) -> None:
    path = write(text)
    issues = _strip(_issues(path), path)
    assert len(issues) == len([e for e in expected if not e.startswith("(hint")]), issues
    joined = "\n".join(issues)
    for fragment in expected:
        assert fragment in joined, joined
    for issue in issues:  # every line is "LINE:COL: ..." with 1-based numbers
        line, col, _ = issue.split(":", 2)
        assert int(line) >= 1 and int(col) >= 1


def test_deep_nesting_is_refused_not_a_crash(write: Callable[[str], Path]) -> None:
    """Our depth cap, or libyaml's own (PyYAML >= 6.0.4 stops at 1,000 levels first)."""
    path = write(HEAD + "outbox: " + "[" * 100_000 + "]" * 100_000 + "\n")
    issues = _strip(_issues(path), path)
    assert len(issues) == 1, issues
    assert ("nested deeper than 64 levels" in issues[0]
            or "maximum nesting depth" in issues[0]), issues


# --------------------------------------------------------------------------- files on disk


@pytest.mark.usefixtures("fake_drivers")
def test_many_errors_at_once_in_file_order() -> None:
    path = DATA / "many_errors.yaml"
    issues = _strip(_issues(path), path)
    assert [i.split(": ", 2)[:2] for i in issues] == [
        ["1:1", "gateway.community"],
        ["3:13", "gateway.district"],
        ["5:3", "gateway.comunity"],
        ["7:11", "uplink.broker"],
        ["8:13", "uplink.password"],
        ["9:16", "uplink.keepalive_s"],
        ["11:12", "status_page.enabled"],
        ["12:14", "heartbeat_s"],
        ["13:12", "log_level"],
    ]
    assert "did you mean `community`?" in issues[2]
    assert "hunter2" not in "\n".join(issues)


@pytest.mark.usefixtures("fake_drivers")
def test_tabs_file() -> None:
    path = DATA / "tabs.yaml"
    (issue,) = _issues(path)
    assert issue.startswith(f"{path}:3:1: YAML syntax error: ")
    assert issue.endswith("(hint: indent with spaces, not tabs)")


def test_python_tag_is_never_constructed() -> None:
    path = DATA / "python_tag.yaml"
    (issue,) = _issues(path)
    assert issue.startswith(f"{path}:1:10: gateway: the tag !!python/object/apply:os.system ")


def test_alias_bomb_is_refused_cheaply() -> None:
    path = DATA / "alias_bomb.yaml"
    (issue,) = _issues(path)
    assert "expands to more than" in issue


def test_alias_count_is_capped(write: Callable[[str], Path]) -> None:
    path = write("a: &a x\nb: [" + ", ".join(["*a"] * 101) + "]\n")
    (issue,) = _issues(path)
    assert "more than 100 aliases" in issue


def test_small_aliases_still_work(write: Callable[[str], Path]) -> None:
    class Pair(BaseModel):
        model_config = ConfigDict(extra="forbid")
        a: list[int]
        b: list[int]

    assert load_model(write("a: &x [1, 2]\nb: *x\n"), Pair) == Pair(a=[1, 2], b=[1, 2])


# --------------------------------------------------------------------------- unreadable files


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p, "1:1: file not found (hint: check the path)"),
        (lambda p: (p.mkdir(), p)[1], "1:1: this is a directory, not a config file"),
        (lambda p: (p.write_bytes(b"a: 1\n" * (MAX_FILE_BYTES // 5 + 1)), p)[1],
         "1:1: the file is larger than 1048576 bytes"),
        (lambda p: (p.write_bytes(b"gateway:\n  name: \xff\xfe\n"), p)[1],
         "2:9: the file is not valid UTF-8 text"),
        # a FIFO nobody writes to: an answer, not a hang
        (lambda p: (os.mkfifo(p), p)[1], "1:1: this is not a regular file (a pipe, socket"),
    ],
    ids=["missing", "directory", "too big", "not utf-8", "fifo"],
)
def test_unreadable_file(tmp_path: Path, make: Callable[[Path], Path], fragment: str) -> None:
    path = make(tmp_path / "gw.yaml")
    (issue,) = _issues(path)
    assert issue == f"{path}:{fragment}" or issue.startswith(f"{path}:{fragment}")


def test_unreadable_permissions(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(HEAD)
    path.chmod(0)
    (issue,) = as_unprivileged(lambda: _issues(path))  # root reads any file
    assert issue.startswith(f"{path}:1:1: cannot read the file: permission denied")


def test_utf8_bom_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "available", lambda: {})
    path = tmp_path / "gw.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + HEAD.encode())
    assert load_gateway_config(path).gateway.id == "gw-01"


# --------------------------------------------------------------------------- secrets

SECRET = "hunter2-Zq9"


@pytest.mark.usefixtures("fake_drivers")
@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (HEAD + f"  password: {SECRET}\n",
         "8:13: uplink.password: do not write secrets inline; use password: "
         "{file: /etc/edge-agent/mqtt-password} or {env: EDGE_MQTT_PASSWORD}"),
        (HEAD + f"  password: '{SECRET}'\n", "8:13: uplink.password: do not write secrets inline"),
        (HEAD + f"  password: 0{SECRET}\n", "8:13: uplink.password: do not write secrets inline"),
        (HEAD + f"  password: {{file: /run/pw, value: {SECRET}}}\n",
         "8:29: uplink.password.value: unknown key `value`"),
        (HEAD + f"  password: {{file: /run/pw, env: {SECRET}}}\n",
         "8:3: uplink.password: give exactly one of `file` or `env`"),
        (HEAD + f"  password: [{SECRET}]\n", "8:3: uplink.password: expected a mapping"),
        (HEAD + f"  password_file: {SECRET}\n",
         "8:3: uplink.password_file: unknown key `password_file`; did you mean `password`? "
         "(hint: write password: {file: ...})"),
        (HEAD + f"devices:\n  - {{id: d1, driver: fake, token: {SECRET}}}\n",
         "9:35: devices.0.token: device `d1`: do not write secrets inline; use token: "
         "{file: /etc/edge-agent/token} or {env: EDGE_TOKEN}"),
    ],
    ids=["plain", "quoted", "trap-looking", "extra key", "two sources", "list", "_file key",
         "driver option"],
)
def test_secret_is_never_echoed(write: Callable[[str], Path], text: str, fragment: str) -> None:
    path = write(text)
    issues = _strip(_issues(path), path)
    joined = "\n".join(issues)
    assert fragment in joined
    assert SECRET not in joined


# --------------------------------------------------------------------------- devices


@pytest.mark.usefixtures("fake_drivers")
def test_device_errors() -> None:
    path = DATA / "devices.yaml"
    assert _strip(_issues(path), path) == [
        "14:15: devices.1.period_s: device `smoke-02`: must be greater than 0; got `0`",
        "16:13: devices.2.driver: device `smoke-03`: unknown driver `fkae`; installed drivers: "
        "fake (hint: did you mean `fake`?)",
        "19:5: devices.3.perod_s: device `smoke-04`: unknown key `perod_s`; "
        "did you mean `period_s`?",
        "20:9: devices.4.id: device id `smoke-01` is used twice: first on line 9, "
        "again on line 20 (hint: every device needs its own id)",
        "22:14: devices.4.enabled: device `smoke-01`: `off` is a YAML 1.1 boolean word; "
        "write true or false",
    ]


@pytest.mark.usefixtures("fake_drivers")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("devices:\n", ["8:1: devices: has no value; expected a list of device entries"]),
        ("devices: {id: a}\n", ["8:1: devices: must be a list"]),
        ("devices:\n  - just-a-name\n", ["9:5: devices.0: a device entry must be a mapping"]),
        ("devices:\n  - id: a\n", ["9:5: devices.0.driver: device `a`: required key missing"]),
        ("devices:\n  - {id: 'bad id', driver: nope}\n",
         ["9:28: devices.0.driver: device `bad id`: unknown driver `nope`; installed drivers: fake",
          "9:10: devices.0.id: device `bad id`: must match pattern"]),
        ("devices:\n  - {id: a, driver: fake, period_s: fast}\n",
         ["9:37: devices.0.period_s: device `a`: expected a number; got `fast`"]),
    ],
)
def test_device_entry_shapes(
    write: Callable[[str], Path], text: str, expected: list[str]
) -> None:
    path = write(HEAD + text)
    joined = "\n".join(_strip(_issues(path), path))
    for fragment in expected:
        assert fragment in joined


def test_no_drivers_installed(write: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
                              ) -> None:
    monkeypatch.setattr(registry, "available", lambda: {})
    path = write(HEAD + "devices:\n  - {id: a, driver: simulated}\n")
    (issue,) = _strip(_issues(path), path)
    assert issue == ("9:21: devices.0.driver: device `a`: unknown driver `simulated`; "
                     "installed drivers: none")


def test_broken_driver_is_an_issue_at_the_device(write: Callable[[str], Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    broken = EntryPoint(name="x", value="no_such_driver_module:DRIVER", group=registry.GROUP)
    monkeypatch.setattr(registry, "available", lambda: registry.Drivers({"x": broken}))
    path = write(HEAD + "devices:\n  - {id: a, driver: x}\n")
    (issue,) = _strip(_issues(path), path)
    assert issue.startswith("9:21: devices.0.driver: device `a`: driver 'x' "
                            "(no_such_driver_module:DRIVER) failed to load: No module named")
    assert issue.endswith("(hint: reinstall the agent or the broken driver package)")


# --------------------------------------------------------------------------- generic loader


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    sizes: dict[str, int] = {}
    ratio: float = 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: a\nsizes: {x: 1, y: two}\n", ["2:18: sizes.y: expected a whole number; got `two`"]),
        ("name: a\nratio: .inf\n", ["2:8: ratio: expected a number; got `.inf`"]),
        ("name: a\nratio: 1e999\n", ["2:8: ratio: a number out of range (inf or nan)"]),
        ("nmae: a\n", ["1:1: nmae: unknown key `nmae`; did you mean `name`?",
                       "1:1: name: required key missing"]),
    ],
)
def test_load_model(write: Callable[[str], Path], text: str, expected: list[str]) -> None:
    path = write(text)
    joined = "\n".join(_strip(_issues(path, lambda p: load_model(p, Limits)), path))
    for fragment in expected:
        assert fragment in joined


def test_load_model_ok(write: Callable[[str], Path]) -> None:
    got = load_model(write("name: a\nsizes: {x: 0x10}\nratio: 2\n"), Limits)
    assert got == Limits(name="a", sizes={"x": 16}, ratio=2.0)


# --------------------------------------------------------------------------- the CLI contract


@pytest.mark.usefixtures("fake_drivers")
def test_validate_cli_reports_every_issue_and_exits_2() -> None:
    from edge_agent.cli import main

    path = DATA / "many_errors.yaml"
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert sum(line.startswith(f"{path}:") for line in lines) == 9
    assert "hunter2" not in result.output + result.stderr


@pytest.mark.usefixtures("fake_drivers")
def test_validate_cli_ok() -> None:
    from edge_agent.cli import main

    result = CliRunner().invoke(main, ["validate", str(DATA / "valid_minimal.yaml")])
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- robustness


def test_control_character_is_located(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("a: b\nc: \x00\n")
    (issue,) = _issues(path)
    assert issue.startswith(f"{path}:2:4: the character U+0000 is not allowed in YAML")


@pytest.mark.usefixtures("fake_drivers")
@pytest.mark.parametrize("name", ["many_errors.yaml", "devices.yaml", "python_tag.yaml",
                                  "alias_bomb.yaml", "valid_minimal.yaml"])
def test_pure_python_parser_agrees(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from edge_agent.contract.settings import loader

    def outcome() -> list[str]:
        try:
            load_gateway_config(DATA / name)
        except ConfigError as err:
            return [str(i) for i in err.issues]
        return []

    with_libyaml = outcome()
    monkeypatch.setattr(loader, "_EventParser", None)
    assert outcome() == with_libyaml


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000),
                                st.sampled_from(list(":-[]{}&*!|>'\"#%@`,?\t\n x0"))),
                      min_size=1, max_size=6))
def test_mangled_example_raises_only_config_error(
    tmp_path: Path, edits: list[tuple[int, str]]
) -> None:
    text = EXAMPLE.read_text("utf-8")
    for at, char in edits:
        at %= len(text)
        text = text[:at] + char + text[at:]
    path = tmp_path / "mangled.yaml"
    path.write_text(text, "utf-8")
    try:
        load_gateway_config(path)
    except ConfigError as err:
        assert err.issues
        assert all(i.line >= 1 and i.col >= 1 for i in err.issues)
