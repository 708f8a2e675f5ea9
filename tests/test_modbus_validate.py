"""`edge-agent validate` on Modbus devices: every mistake at FILE:LINE:COL, before any I/O."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers.modbus import profile as profile_module
from drivers.modbus.device import ModbusDevice, check_buses
from drivers.modbus.driver import ModbusDriver
from edge_agent.cli import main as cli
from edge_agent.config.loader import ConfigError, load_gateway_config
from tests.modbus_servers import RecordingSink

SAMPLE = Path(__file__).resolve().parents[1] / "drivers" / "modbus" / "sample.yaml"
EDGE_AGENT = str(Path(sys.executable).parent / "edge-agent")
HEADER = """\
gateway: {id: gw-1, district: "371312", street: "371312001", community: "371312001001"}
uplink: {broker: "mqtt://127.0.0.1:1883"}
devices:
"""  # devices start on line 4



def gateway(tmp_path: Path, devices: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(HEADER + devices, "utf-8")
    return path


def validate(path: Path) -> tuple[int, list[str]]:
    """The real CLI in its own process: exit code and the reported lines."""
    done = subprocess.run([EDGE_AGENT, "validate", str(path)], capture_output=True,
                          text=True, timeout=60)
    return done.returncode, done.stderr.splitlines()


def test_the_sample_config_validates() -> None:
    done = subprocess.run([EDGE_AGENT, "validate", str(SAMPLE)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{SAMPLE}: ok: gateway gw-0001, 3 device(s)"
    cfg = load_gateway_config(SAMPLE)
    devices = [d for d in cfg.devices if isinstance(d, ModbusDevice)]
    assert [d.profile for d in devices] == ["gate-controller", "smoke-detector", "smoke-detector"]
    assert check_buses(devices) == []
    ModbusDriver(devices, RecordingSink())  # builds without touching any port


def test_device_mistakes_are_reported_at_their_lines(tmp_path: Path) -> None:
    path = gateway(tmp_path, """\
  - id: smoke-1
    driver: modbus
    profile: smoke-detectr
    tcp: {host: 127.0.0.1}
  - id: gate-1
    driver: modbus
    profile: gate-controller
    tcp: {host: 127.0.0.1}
    limits: {max_registers: 100}
    allow_writes: [door_open, dooropen]
  - id: water-1
    driver: modbus
    profile: water-sensor
    rtu: {port: /dev/ttyUSB0}
    unit_id: 0
    limits:
      max_registers: 1
  - id: water-2
    driver: modbus
    profile: water-sensor
    tcp: {host: 127.0.0.1}
    rtu: {port: /dev/ttyUSB0}
""")
    code, lines = validate(path)
    assert code == 2
    assert lines == [
        f"{path}:6:14: devices.0.profile: device `smoke-1`: unknown profile `smoke-detectr`; "
        "available profiles: booster-pump-de4300, energy-meter-sdm120, gate-controller, "
        "peer-holding-20, smoke-detector, water-sensor; did you mean "
        "`smoke-detector`?",
        f"{path}:12:29: devices.1.limits.max_registers: device `gate-1`: max_registers 100 is "
        "more than the profile's 64; a device may only lower it (profile `gate-controller`)",
        f"{path}:13:20: devices.1.allow_writes.0: device `gate-1`: point `door_open` "
        "(discrete_input 0) is not writable in profile `gate-controller` (writable points: "
        "none)",
        f"{path}:13:31: devices.1.allow_writes.1: device `gate-1`: profile `gate-controller` "
        "has no point `dooropen`; did you mean `door_open`?",
        f"{path}:18:14: devices.2.unit_id: device `water-1`: unit id 0 is the broadcast "
        "address on RTU: no device answers it; use the device's id (1..247)",
        f"{path}:20:22: devices.2.limits.max_registers: device `water-1`: point `level` "
        "(float32, 2 registers) does not fit one read of at most 1 registers (max_registers)",
        f"{path}:20:22: devices.2.limits.max_registers: device `water-1`: point `pressure` "
        "(uint32, 2 registers) does not fit one read of at most 1 registers (max_registers)",
        f"{path}:21:5: devices.3: device `water-2`: give exactly one of `tcp: {{host, port}}` "
        "or `rtu: {port, baudrate}`",
        f"8 problem(s) in {path}; nothing was started.",
    ]


def test_a_tcp_host_that_is_no_address_is_named_as_cameras_are(tmp_path: Path) -> None:
    path = gateway(tmp_path, """\
  - id: smoke-1
    driver: modbus
    profile: smoke-detector
    tcp: {host: "bad host!"}
  - id: smoke-2
    driver: modbus
    profile: smoke-detector
    tcp: {host: "192.168.1.20:502"}
""")
    code, lines = validate(path)
    assert code == 2
    assert lines[:2] == [
        f"{path}:7:17: devices.0.tcp.host: device `smoke-1`: `bad host!` is not an IP "
        "address or a DNS name",
        f"{path}:11:17: devices.1.tcp.host: device `smoke-2`: `192.168.1.20:502` holds a "
        "port; write the port as `port:`"]


BROKEN_PROFILES = {
    "overlap": """\
name: overlap
description: two points on one register
points:
  - {name: flow, table: input_register, address: 10, type: uint32}
  - {name: total, table: input_register, address: 11, type: uint16}
""",
    "far": """\
name: far
description: a point beyond the last address
points:
  - {name: ok, table: holding_register, address: 0, type: uint16}
  - {name: last, table: holding_register, address: 65535, type: float32}
""",
    "misfit": """\
name: misfit
description: a float32 given a register count of its own
points:
  - {name: level, table: input_register, address: 0, type: float32, length: 1}
""",
}


@pytest.fixture
def profile_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "profiles"
    folder.mkdir()
    for name, text in BROKEN_PROFILES.items():
        (folder / f"{name}.yaml").write_text(text, "utf-8")
    monkeypatch.setattr(profile_module, "DEFAULT_SEARCH_PATH", (folder,))
    return folder


def test_broken_profiles_are_reported_at_the_device_and_in_the_profile(
        tmp_path: Path, profile_dir: Path) -> None:
    path = gateway(tmp_path, "".join(f"""\
  - id: dev-{name}
    driver: modbus
    profile: {name}
    tcp: {{host: 127.0.0.1}}
""" for name in BROKEN_PROFILES))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    overlap, far, misfit = (profile_dir / f"{n}.yaml" for n in BROKEN_PROFILES)
    assert result.stderr.splitlines() == [
        f"{path}:6:14: devices.0.profile: device `dev-overlap`: profile `overlap` has 1 "
        "problem(s):",
        f"    {overlap}:5:51: points.1.address: point `total` (input_register 11) overlaps "
        "`flow` (input_register 10..11); only `bit` points may share a register, on distinct "
        "bits",
        f"{path}:10:14: devices.1.profile: device `dev-far`: profile `far` has 1 problem(s):",
        f"    {far}:5:52: points.1.address: float32 at 65535 needs registers 65535..65536, "
        "beyond the last address 65535",
        f"{path}:14:14: devices.2.profile: device `dev-misfit`: profile `misfit` has 1 "
        "problem(s):",
        f"    {misfit}:4:77: points.0.length: `length` applies only to type string; float32 "
        "always takes 2 registers",
        f"3 problem(s) in {path}; nothing was started.",
    ]
    with pytest.raises(ConfigError) as err:
        load_gateway_config(path)
    assert [(i.line, i.key) for i in err.value.issues] == [
        (6, "devices.0.profile"), (10, "devices.1.profile"), (14, "devices.2.profile")]


def _rtu(dev_id: str, port: str, unit: int, **line: object) -> ModbusDevice:
    return ModbusDevice.model_validate({"id": dev_id, "driver": "modbus",
                                        "profile": "smoke-detector", "unit_id": unit,
                                        "rtu": {"port": port, **line}})


def test_devices_that_cannot_share_a_bus() -> None:
    tcp = {"id": "gate-a", "driver": "modbus", "profile": "gate-controller",
           "tcp": {"host": "10.0.0.5"}}
    devices = [
        _rtu("s1", "/dev/ttyUSB0", 3),
        _rtu("s2", "/dev/ttyUSB0", 4, baudrate=19200),
        _rtu("s3", "/dev/ttyUSB0", 3),
        _rtu("s4", "/dev/ttyUSB1", 3),  # another bus: unit 3 again is fine
        _rtu("s5", "/dev/ttyUSB1", 4, pause_ms=20),
        ModbusDevice.model_validate(tcp),
        ModbusDevice.model_validate({**tcp, "id": "gate-b", "tcp": {"host": "10.0.0.5",
                                                                     "port": 502}}),
        ModbusDevice.model_validate({**tcp, "id": "gate-c", "unit_id": 2}),
    ]
    problems = check_buses(devices)
    assert problems == [
        "device s2: serial port /dev/ttyUSB0 is already used by s1 with other line settings "
        "(9600 8N1, here 19200 8N1); one bus, one setting",
        "device s3: unit id 3 on /dev/ttyUSB0 is already s1's; every device on a bus needs "
        "its own unit id",
        "device s5: serial port /dev/ttyUSB1 is already used by s4 with other line settings "
        "(9600 8N1, here 9600 8N1 pause_ms 20); one bus, one setting",
        "device gate-b: unit id 1 on tcp://10.0.0.5:502 is already gate-a's; every device on "
        "a bus needs its own unit id",
    ]
    with pytest.raises(ValueError) as err:
        ModbusDriver(devices, RecordingSink())
    assert str(err.value) == ("modbus: these devices cannot share their bus:\n  "
                              + "\n  ".join(problems))
    assert check_buses([d for d in devices if d.id not in ("s2", "s3", "s5", "gate-b")]) == []
