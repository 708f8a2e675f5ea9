"""serial_line driver: config validation, sample.yaml, and a real socat pty pair.

The pty tests write panel lines into one end of a `socat` pty pair while the driver
reads the other, and check what reaches the sink: alarms raised and cleared per
zone, garbage in between, the far end going away and coming back (offline, online),
the idle timeout. Every recorded event is minted and stamped like the pipeline does
and validated against the published JSON Schema.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from drivers.serial_line import DRIVER, SerialLineDevice
from drivers.serial_line.driver import SerialLineDriver
from drivers.serial_line.framing import ChecksumKind, checksum_of
from edge_agent.config.loader import ConfigError, load_gateway_config
from edge_agent.contract.envelope import Event, Hierarchy, Severity, new_event, schema
from edge_agent.sdk import registry
from edge_agent.sdk.api import DeviceState
from edge_agent.sdk.testing import NullSink, running
from tests.harness import wait_until
from tests.peers import require_binary, stop_process

SAMPLE = Path(__file__).parent.parent / "drivers" / "serial_line" / "sample.yaml"
HIERARCHY = Hierarchy(district="371312", street="371312001", community="371312001001",
                      gateway="gw-0001")
VALIDATOR = jsonschema.Draft7Validator(schema())

HEAD = """\
gateway:
  id: gw-0001
  district: "371312"
  street: "371312001"
  community: "371312001001"
uplink:
  broker: mqtt://127.0.0.1:1883
devices:
"""  # 8 lines: device entries start on line 9


@pytest.fixture(autouse=True)
def only_this_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry point may not be registered yet: the loader sees this driver only."""
    monkeypatch.setattr(registry, "available", lambda: {"serial_line": DRIVER})


# --------------------------------------------------------------------------- a test sink


@dataclass
class Recorded:
    device: str
    type: str
    data: dict[str, Any]
    severity: Severity | None
    observed_at: float | None


@dataclass
class RecordingSink(NullSink):
    """An EventSink that keeps what it is given; device states become events as in the
    pipeline (`device.offline` on any change to offline, `device.online` after one)."""

    emitted: list[Recorded] = field(default_factory=list)
    states: list[tuple[str, DeviceState, str]] = field(default_factory=list)
    _state: dict[str, tuple[DeviceState, float]] = field(default_factory=dict)

    def emit(self, device: str, type_: str, data: dict[str, Any], *,
             severity: Severity | None = None, observed_at: float | None = None) -> None:
        self.emitted.append(Recorded(device, type_, dict(data), severity, observed_at))

    def device_state(self, device: str, state: DeviceState, reason: str = "") -> None:
        self.states.append((device, state, reason))
        previous, since = self._state.get(device, (DeviceState.UNKNOWN, time.time()))
        if state == previous:
            return
        self._state[device] = (state, time.time())
        if state is DeviceState.ONLINE and previous in (DeviceState.OFFLINE, DeviceState.ERROR):
            self.emit(device, "device.online", {"offline_s": round(time.time() - since, 3),
                                                "reason": reason or "answers again"})
        elif state in (DeviceState.OFFLINE, DeviceState.ERROR):
            self.emit(device, "device.offline", {"reason": reason or str(state)})

    def of(self, type_: str) -> list[Recorded]:
        return [r for r in self.emitted if r.type == type_]

    def state_of(self, device: str) -> DeviceState:
        return self._state.get(device, (DeviceState.UNKNOWN, 0.0))[0]

    def events(self) -> list[Event]:
        """What the pipeline and the outbox would make of the records: stamped events."""
        return [new_event(HIERARCHY, r.device, r.type, r.data, severity=r.severity,
                          observed_at=r.observed_at).stamped("0123456789abcdef", seq)
                for seq, r in enumerate(self.emitted, 1)]

    def assert_valid(self) -> None:
        events = self.events()
        assert events
        for event in events:
            body = event.model_dump(mode="json", exclude_none=True)
            errors = [e.message for e in VALIDATOR.iter_errors(body)]
            assert not errors, (body, errors)



# --------------------------------------------------------------------------- socat ptys


class PtyPair:
    """`socat` joining two ptys: the test writes to `a`, the driver reads `b`.

    `stop()` ends socat (the driver's end hangs up and both links go away);
    `start()` makes a new pair under the same link names.
    """

    def __init__(self, workdir: Path) -> None:
        self.binary = require_binary("socat")
        self.a = workdir / "panel-side"
        self.b = workdir / "gateway-side"
        self.log = workdir / "socat.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._writer: int | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-d", "-d", f"pty,raw,echo=0,link={self.a}",
                 f"pty,raw,echo=0,link={self.b}"], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while not (self.a.exists() and self.b.exists() and self._ready()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"socat did not start: {self.log.read_text()}")
            time.sleep(0.01)
        self._writer = os.open(self.a, os.O_WRONLY | os.O_NOCTTY)

    def _ready(self) -> bool:
        return "starting data transfer loop" in self.log.read_text(errors="replace")

    def write(self, data: bytes | str) -> None:
        assert self._writer is not None, "socat is not running"
        raw = data.encode() if isinstance(data, str) else data
        while raw:
            raw = raw[os.write(self._writer, raw):]

    def stop(self) -> None:
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None
        stop_process(self.proc)
        self.proc = None
        with self.log.open("r+") as fh:  # the next start() looks for its own ready line
            fh.truncate(0)


@pytest.fixture
def ptys(tmp_path: Path) -> Iterator[PtyPair]:
    pair = PtyPair(tmp_path)
    pair.start()
    yield pair
    pair.stop()


def device(yaml_text: str, tmp_path: Path, **replace: str) -> SerialLineDevice:
    """One device entry, loaded through the real config loader."""
    text = textwrap.dedent(yaml_text)
    body = textwrap.indent(text.format(**replace) if replace else text, "  ")
    path = tmp_path / "gw.yaml"
    path.write_text(HEAD + body, encoding="utf-8")
    cfg = load_gateway_config(path)
    (dev,) = cfg.devices
    assert isinstance(dev, SerialLineDevice)
    return dev




FIRE_PANEL = """\
- id: fire-panel
  driver: serial_line
  port: {port}
  baudrate: 9600
  max_line_bytes: 64
  idle_timeout_s: {idle}
  reopen_backoff: {{initial_s: 0.05, max_s: 0.2}}
  frames:
    - name: zone
      match: 'FIRE ZONE (?P<zone>\\d{{2,3}}) (?P<status>ALARM|FAULT|NORMAL)'
      alarms:
        - {{type: smoke.alarm, per: zone, state: status, raise: [ALARM], clear: [NORMAL]}}
        - {{type: smoke.fault, per: zone, state: status, raise: [FAULT], clear: [NORMAL]}}
    - name: reset
      match: 'SYSTEM RESET'
      clears_all: [smoke.alarm, smoke.fault]
    - name: ok
      match: 'SYSTEM OK'
"""


def alarm_events(sink: RecordingSink, type_: str = "smoke.alarm") -> list[tuple[str, str]]:
    return [(r.data["zone"], r.data["state"]) for r in sink.of(type_)]


# --------------------------------------------------------------------------- pty tests


async def test_fire_alarms_raise_and_clear_per_zone_through_garbage(
        ptys: PtyPair, tmp_path: Path) -> None:
    sink = RecordingSink()
    cfg = device(FIRE_PANEL, tmp_path, port=str(ptys.b), idle="0")
    driver = SerialLineDriver([cfg], sink)
    async with running(driver):
        await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.ONLINE, what="online")
        ptys.write("FIRE ZONE 03 ALARM\r\n")
        ptys.write("FIRE ZONE 07 ALARM\r\nFIRE ZONE 12 FAULT\r\n")
        # garbage: noise, bytes that are not ASCII, an overlong line, a half-known line
        ptys.write(b"\x00\xff\xfe~~~\r\nFIRE ZONE 3 ALARM\r\n" + b"#" * 500 + b"\r\n")
        ptys.write("FIRE ZONE 03 ALARM\r\n")  # a panel repeats: no second raise
        ptys.write("SYSTEM OK\r\n\r\n")  # known line, blank line: not bad
        ptys.write("FIRE ZONE 03 NORMAL\r\n")
        ptys.write("FIRE ZONE 07 NORMAL\r\nFIRE ZONE 44 NORMAL\r\n")  # 44 was never raised
        ptys.write("SYSTEM RESET\r\n")  # clears the fault of zone 12
        await wait_until(lambda: len(sink.of("smoke.fault")) == 2, what="the fault cleared")
    assert alarm_events(sink) == [("03", "raised"), ("07", "raised"),
                                  ("03", "cleared"), ("07", "cleared")]
    assert alarm_events(sink, "smoke.fault") == [("12", "raised"), ("12", "cleared")]
    raised = {r.data["zone"]: r.data["alarm_id"] for r in sink.of("smoke.alarm")
              if r.data["state"] == "raised"}
    cleared = {r.data["zone"]: r.data["alarm_id"] for r in sink.of("smoke.alarm")
               if r.data["state"] == "cleared"}
    assert raised == cleared and len(set(raised.values())) == 2  # one id per zone, linked
    assert all(len(alarm_id) <= 64 for alarm_id in raised.values())
    severities = [(r.data["state"], r.severity) for r in sink.of("smoke.alarm")]
    assert severities[0] == ("raised", Severity.CRITICAL)
    assert severities[-1] == ("cleared", Severity.INFO)
    stats = driver.stats()["fire-panel"]
    assert stats["rejected.no_match"] == 2
    assert stats["rejected.too_long"] == 1
    assert stats["blank"] == 1
    assert stats["frame.ok"] == 1
    assert sink.of("device.offline") == []
    sink.assert_valid()


async def test_far_end_closes_and_comes_back(ptys: PtyPair, tmp_path: Path) -> None:
    sink = RecordingSink()
    cfg = device(FIRE_PANEL, tmp_path, port=str(ptys.b), idle="0")
    async with running(SerialLineDriver([cfg], sink)):
        await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.ONLINE, what="online")
        ptys.write("FIRE ZONE 05 ALARM\r\n")
        await wait_until(lambda: len(sink.of("smoke.alarm")) == 1, what="the alarm")
        ptys.stop()  # the panel's cable (socat) goes away
        await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.OFFLINE, what="offline")
        await asyncio.sleep(0.3)  # a few reopen attempts against a missing port
        ptys.start()
        await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.ONLINE, what="online")
        ptys.write("FIRE ZONE 05 NORMAL\r\n")  # the alarm raised before the outage clears
        await wait_until(lambda: len(sink.of("smoke.alarm")) == 2, what="the clear")
    offline = sink.of("device.offline")
    assert len(offline) == 1
    assert "hung up" in offline[0].data["reason"] or "I/O error" in offline[0].data["reason"]
    reasons = [reason for _, state, reason in sink.states if state is DeviceState.OFFLINE]
    assert any("does not exist" in r for r in reasons), reasons  # the reopen attempts
    assert len(sink.of("device.online")) == 1
    first, second = sink.of("smoke.alarm")
    assert first.data["alarm_id"] == second.data["alarm_id"]
    assert second.data["state"] == "cleared"
    sink.assert_valid()


async def test_idle_timeout_turns_the_device_offline_and_a_frame_back_online(
        ptys: PtyPair, tmp_path: Path) -> None:
    sink = RecordingSink()
    cfg = device(FIRE_PANEL, tmp_path, port=str(ptys.b), idle="0.4")
    async with running(SerialLineDriver([cfg], sink)):
        await asyncio.sleep(0.1)
        assert sink.state_of("fire-panel") is DeviceState.UNKNOWN  # open, nothing heard yet
        ptys.write("SYSTEM OK\r\n")
        await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.ONLINE, what="online")
        ptys.write("garbage\r\n")  # a bad line is no sign of a healthy panel
        await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.OFFLINE, what="idle")
        ptys.write("FIRE ZONE 09 ALARM\r\n")
        await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.ONLINE, what="back")
        await wait_until(lambda: len(sink.of("smoke.alarm")) == 1, what="the alarm")
    (offline,) = sink.of("device.offline")
    assert offline.data["reason"].startswith("no valid frame for 0.4 s (1 lines rejected: "
                                             "no_match 1")
    types = [r.type for r in sink.emitted]
    assert types == ["device.offline", "device.online", "smoke.alarm"]  # online before alarm
    sink.assert_valid()


async def test_no_frame_after_opening_is_offline_with_a_hint(ptys: PtyPair,
                                                             tmp_path: Path) -> None:
    sink = RecordingSink()
    cfg = device(FIRE_PANEL, tmp_path, port=str(ptys.b), idle="0.3")
    driver = SerialLineDriver([cfg], sink)
    async with running(driver):
        await wait_until(lambda: driver.stats()["fire-panel"].get("opens") == 1, what="open")
        ptys.write(b"\xf0\x9f\x94\xa5 noise at the wrong baud rate \x80\x81\r\n")
        await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.OFFLINE, what="idle")
    (offline,) = sink.of("device.offline")
    assert offline.data["reason"] == (
        f"no valid frame within 0.3 s of opening {ptys.b} (1 lines rejected: no_match 1; "
        "check baudrate, parity and the frames)")


async def test_port_missing_at_start_then_appears(tmp_path: Path) -> None:
    pair = PtyPair(tmp_path)
    sink = RecordingSink()
    cfg = device(FIRE_PANEL, tmp_path, port=str(pair.b), idle="0")
    try:
        async with running(SerialLineDriver([cfg], sink)):
            await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.OFFLINE,
                        what="offline")
            pair.start()
            await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.ONLINE,
                        what="online")
            pair.write("FIRE ZONE 01 ALARM\r\n")
            await wait_until(lambda: len(sink.of("smoke.alarm")) == 1, what="the alarm")
    finally:
        pair.stop()
    (offline,) = sink.of("device.offline")
    assert offline.data["reason"].startswith(f"cannot open: {pair.b} does not exist")
    sink.assert_valid()


async def test_values_go_through_the_rules_with_a_checksum(ptys: PtyPair,
                                                           tmp_path: Path) -> None:
    sink = RecordingSink()
    cfg = device("""\
        - id: smoke-hub
          driver: serial_line
          port: {port}
          delimiter: '\\n'
          checksum: {{kind: crc16_modbus, pattern: ';(?P<checksum>[0-9A-F]{{4}})$'}}
          frames:
            - match: 'SMK (?P<density>\\d+\\.\\d+) (?P<alarm>[AN])'
              values:
                density: {{point: density_db_m, type: float}}
                alarm: {{type: bool, map: {{A: true, N: false}}}}
          events:
            - {{type: smoke.reading, fields: {{density_db_m: density_db_m}},
               deadband: {{density_db_m: 0.05}}}}
            - {{type: smoke.alarm, when: {{point: alarm}}, data: {{density_db_m: density_db_m}}}}
        """, tmp_path, port=str(ptys.b))

    def line(body: str) -> str:
        return f"{body};{checksum_of(ChecksumKind.CRC16_MODBUS, body.encode()):04X}\n"

    async with running(SerialLineDriver([cfg], sink)):
        await wait_until(lambda: sink.state_of("smoke-hub") is DeviceState.ONLINE, what="online")
        ptys.write(line("SMK 0.010 N") + line("SMK 0.020 N"))  # within the deadband
        ptys.write("SMK 0.900 A;0000\n")  # bad checksum: not an alarm
        ptys.write(line("SMK 0.900 A") + line("SMK 0.012 N"))
        await wait_until(lambda: len(sink.of("smoke.alarm")) == 2, what="raise and clear")
    readings = [r.data["density_db_m"] for r in sink.of("smoke.reading")]
    assert readings == [0.01, 0.9, 0.012]
    raised, cleared = sink.of("smoke.alarm")
    assert raised.data["state"] == "raised" and raised.data["density_db_m"] == 0.9
    assert cleared.data["alarm_id"] == raised.data["alarm_id"]
    sink.assert_valid()


async def test_cancel_closes_the_port(ptys: PtyPair, tmp_path: Path) -> None:
    sink = RecordingSink()
    cfg = device(FIRE_PANEL, tmp_path, port=str(ptys.b), idle="0")
    for _ in range(2):  # the exclusive lock is released: a second run opens it again
        async with running(SerialLineDriver([cfg], sink)) as task:
            await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.ONLINE)
        assert task.cancelled()
        sink._state.clear()
    assert not any(state is DeviceState.OFFLINE for _, state, _ in sink.states)


async def test_two_devices_on_one_port(ptys: PtyPair, tmp_path: Path) -> None:
    sink = RecordingSink()
    first = device(FIRE_PANEL, tmp_path, port=str(ptys.b), idle="0")
    second = first.model_copy(update={"id": "fire-panel-2"})
    async with running(SerialLineDriver([first, second], sink)):
        await wait_until(lambda: sink.state_of("fire-panel") is DeviceState.ONLINE)
        await wait_until(lambda: sink.state_of("fire-panel-2") is DeviceState.OFFLINE)
    (offline,) = sink.of("device.offline")
    assert offline.device == "fire-panel-2"
    assert offline.data["reason"] == (f"port {ptys.b} is already used by device `fire-panel`; "
                                      "not opened")


# --------------------------------------------------------------------------- sample.yaml


def _nmea(body: str) -> bytes:
    return f"${body}*{checksum_of(ChecksumKind.XOR8, body.encode()):02X}\r\n".encode()


SAMPLE_LINES: dict[str, bytes] = {
    "fire-panel-b1": b"FIRE ZONE 03 ALARM\r\nFIRE ZONE 104 FAULT\r\nSYSTEM OK\r\n"
                     b"FIRE ZONE 03 NORMAL\r\nSYSTEM RESET\r\n",
    "smoke-hub-b2": _nmea("SMK,0.012,23.5,87,N") + _nmea("SMK,0.910,24.1,87,A")
                    + _nmea("SMK,0.011,23.9,86,N"),
    "gate-north": "CARD 0012345678 GRANTED IN\nCARD 00ABCDEF DENIED OUT\n".encode("gbk"),
}
SAMPLE_TYPES = {
    "fire-panel-b1": ["smoke.alarm", "smoke.fault", "smoke.alarm", "smoke.fault"],
    "smoke-hub-b2": ["smoke.reading", "smoke.reading", "smoke.alarm", "smoke.reading",
                     "smoke.alarm"],
    "gate-north": ["gate.access", "gate.access"],
}


def test_sample_yaml_loads_and_its_devices_make_valid_events() -> None:
    cfg = load_gateway_config(SAMPLE)
    assert [d.id for d in cfg.devices] == list(SAMPLE_LINES)
    sink = RecordingSink()
    driver = SerialLineDriver(cfg.devices, sink)
    for dev in driver.devices:
        dev.feed(SAMPLE_LINES[dev.cfg.id], 1_795_840_906.123)
        assert [r.type for r in sink.emitted if r.device == dev.cfg.id] \
            == SAMPLE_TYPES[dev.cfg.id], dev.cfg.id
        assert not any(k.startswith("rejected") for k in dev.stats), dev.stats
    access = sink.of("gate.access")
    assert [a.data["result"] for a in access] == ["granted", "denied"]
    assert all(a.data["credential_hash"].startswith("sha256:") for a in access)
    assert "0012345678" not in repr(sink.emitted)
    sink.assert_valid()


def test_credentials_are_not_logged_when_the_prefix_is_zero(
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_gateway_config(SAMPLE)
    gate = next(d for d in SerialLineDriver(cfg.devices, RecordingSink()).devices
                if d.cfg.id == "gate-north")
    gate.feed(b"CARD 99887766 MAYBE IN\n", time.time())
    assert gate.stats["rejected.no_match"] == 1
    out = capsys.readouterr()
    assert "99887766" not in out.out + out.err
    assert "hidden" in out.out + out.err


# --------------------------------------------------------------------------- config errors


def _issues(tmp_path: Path, entry: str) -> list[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(HEAD + textwrap.indent(textwrap.dedent(entry), "  "), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path)
    return [str(i).removeprefix(f"{path}:") for i in info.value.issues]


def test_every_mistake_of_a_device_at_once_with_file_line(tmp_path: Path) -> None:
    issues = _issues(tmp_path, """\
        - id: panel
          driver: serial_line
          port: ttyS0
          stopbits: 3
          encoding: utf-16
          delimiter: '\\q'
          checksum: {kind: sum8, pattern: '\\*(?P<cs>..)$', byte_order: little}
          frames:
            - match: 'FIRE ZONE (?P<zone>\\d+ (?P<status>ALARM|NORMAL)'
            - match: 'FIRE ZONE (?P<zone>\\d+) (?P<status>ALARM|NORMAL)'
              values:
                level: {type: float, map: {A: x}}
              alarms:
                - {type: smoke.reading, per: zon, state: status, raise: [ALARM], clear: [ALARM]}
            - match: 'RESET'
              clears_all: [water.leak]
          events:
            - type: smoke.reading
              fields: {density_db_m: dens}
        """)
    assert issues == [
        "11:11: devices.0.port: device `panel`: give the full path of the port, e.g. /dev/ttyS0",
        "12:15: devices.0.stopbits: device `panel`: stopbits must be 1, 1.5 or 2; got 3",
        "13:15: devices.0.encoding: device `panel`: `utf-16` is not an ASCII-compatible text "
        "encoding (UTF-16/32 and the like cannot be split into lines); e.g. ascii, utf-8, gbk, "
        "latin-1",
        "14:16: devices.0.delimiter: device `panel`: unknown escape `\\q`; use \\r \\n \\t \\0 "
        "\\\\ or \\xHH",
        "15:37: devices.0.checksum.pattern: device `panel`: the pattern needs a group named "
        "`checksum`, e.g. \\*(?P<checksum>[0-9A-F]{2})$",
        "15:66: devices.0.checksum.byte_order: device `panel`: `byte_order` applies to "
        "crc16_modbus only, not sum8",
        "17:16: devices.0.frames.0.match: device `panel`: `match` is not a valid regular "
        "expression: missing ), unterminated subpattern at position 10",
        "20:11: devices.0.frames.1.values.level: device `panel`: `level` is not a named group "
        "of `match`; its groups: status, zone",
        "20:41: devices.0.frames.1.values.level.map.A: device `panel`: `x` is not a number "
        "(the `type` of this value)",
        "22:20: devices.0.frames.1.alarms.0.type: device `panel`: `smoke.reading` is not an "
        "alarm type; alarm types: camera.events_lost, camera.intrusion, camera.motion, "
        "camera.tamper, camera.video_loss, "
        "gate.forced_open, gate.held_open, smoke.alarm, smoke.fault, water.leak",
        "22:35: devices.0.frames.1.alarms.0.per.0: device `panel`: `zon` is not a named group "
        "of `match`; its groups: status, zone",
        "22:76: devices.0.frames.1.alarms.0.clear: device `panel`: 'ALARM' both raises and "
        "clears",
        "24:22: devices.0.frames.2.clears_all.0: device `panel`: no frame raises `water.leak`, "
        "so there is nothing to clear",
        "27:18: devices.0.events.0.fields.density_db_m.point: device `panel`: unknown point "
        "`dens`; the device's points: level",
    ]


@pytest.mark.parametrize(("entry", "expected"), [
    ("frames: [{match: 'X'}]",
     "devices.0.frames: device `p`: no frame has `alarms` and there are no `events`: this "
     "device would emit nothing"),
    ("frames: [{match: '(?P<a>X)', values: {a: {}}}]",
     "devices.0.frames.0.values: device `p`: `values` gives points to the `events:` rules, "
     "but there are none; add rules or remove it"),
    ("frames: [{match: '(?P<s>A|N)', alarms: [{type: water.leak, action: raise, raise: [A]}]}]",
     "devices.0.frames.0.alarms.0.raise: device `p`: `raise` goes with `state`; with `action` "
     "every match of the frame raises (or clears)"),
    ("frames: [{match: '(?P<s>A|N)', alarms: [{type: water.leak}]}]",
     "devices.0.frames.0.alarms.0.state: device `p`: give `state` (the group whose text "
     "raises or clears, with `raise` and `clear`) or `action: raise|clear`"),
    ("frames: [{match: '(?P<s>A|N)', alarms: [{type: water.leak, state: s, raise: [A], "
     "data: {alarm_id: s}}]}]",
     "devices.0.frames.0.alarms.0.data.alarm_id: device `p`: `alarm_id` is set by the driver"),
    ("frames: [{match: 'A((((a+)+)+)+'}]",
     "devices.0.frames.0.match: device `p`: `match` is not a valid regular expression: "
     "missing ), unterminated subpattern at position 1"),
    ("frames: [{match: '(?P<z>(?:[0-9]+)+) ALARM', alarms: [{type: smoke.alarm, per: z, "
     "action: raise}]}]",
     "devices.0.frames.0.match: device `p`: `match` can take exponential time on a bad line: "
     "a repeated group holds only a repeat, like (x+)+; write the inner repeat alone (x+), "
     "or make it possessive (x++) or atomic (?>...)"),
    ("reopen_backoff: {initial_s: 10, max_s: 1}\n"
     "frames: [{match: '(?P<s>A)', alarms: [{type: water.leak, action: raise}]}]",
     "devices.0.reopen_backoff.max_s: device `p`: max_s (1) must not be less than "
     "initial_s (10)"),
    ("encoding: klingon\n"
     "frames: [{match: '(?P<s>A)', alarms: [{type: water.leak, action: raise}]}]",
     "devices.0.encoding: device `p`: unknown encoding `klingon`; e.g. ascii, utf-8, gbk, "
     "gb18030, latin-1"),
    ("frames: [{match: '(?P<s>A)', alarms: [{type: water.leak, action: raise}]}]\n"
     "baud: 9600",
     "devices.0.baud: device `p`: unknown key `baud`; did you mean `baudrate`?"),
])
def test_config_mistakes(tmp_path: Path, entry: str, expected: str) -> None:
    issues = _issues(tmp_path, "- id: p\n  driver: serial_line\n  port: /dev/ttyS0\n"
                     + textwrap.indent(entry, "  ") + "\n")
    assert any(issue.split(": ", 1)[1] == expected for issue in issues), issues


def test_options_defaults(tmp_path: Path) -> None:
    cfg = device("""\
        - id: p
          driver: serial_line
          port: /dev/ttyS0
          frames: [{match: '(?P<s>A|N)', alarms: [{type: water.leak, state: s, raise: [A]}]}]
        """, tmp_path)
    assert (cfg.baudrate, cfg.bytesize, cfg.parity, cfg.stopbits) == (9600, 8, "none", 1)
    assert cfg.encoding == "ascii" and cfg.decode_errors == "replace"
    assert cfg.delimiter_bytes == b"\r\n" and cfg.max_line_bytes == 512
    assert cfg.checksum is None and cfg.idle_timeout_s == 0
    assert (cfg.reopen_backoff.initial_s, cfg.reopen_backoff.max_s) == (1.0, 60.0)
    assert cfg.rules == []


# --------------------------------------------------------------------------- without a port

PANEL_RAISE_CLEAR = """\
- id: {id}
  driver: serial_line
  port: /dev/ttyS0
  frames:
    - name: alarm
      match: 'ALARM LOOP (?P<loop>\\d) DEV (?P<dev>\\d{{3}}) (?P<label>.*)'
      alarms: [{{type: smoke.alarm, per: [loop, dev], action: raise, data: {{label: label}}}}]
    - name: restore
      match: 'RESTORE L(?P<loop>\\d)D(?P<dev>\\d{{3}})'
      alarms: [{{type: smoke.alarm, per: [loop, dev], action: clear}}]
"""


def test_raise_and_clear_in_different_lines_and_long_ids(tmp_path: Path) -> None:
    long_id = "d" * 64
    cfg = device(PANEL_RAISE_CLEAR, tmp_path, id=long_id)
    sink = RecordingSink()
    (dev,) = SerialLineDriver([cfg], sink).devices
    dev.feed(b"ALARM LOOP 1 DEV 004 Lobby 3F\r\nALARM LOOP 2 DEV 004 Stairs\r\n"
             b"RESTORE L1D004\r\nRESTORE L1D004\r\n", time.time())
    raised_1, raised_2, cleared_1 = sink.of("smoke.alarm")
    assert raised_1.data == {"loop": "1", "dev": "004", "label": "Lobby 3F",
                             "state": "raised", "alarm_id": raised_1.data["alarm_id"]}
    assert cleared_1.data == {"loop": "1", "dev": "004", "state": "cleared",
                              "alarm_id": raised_1.data["alarm_id"]}
    assert raised_2.data["alarm_id"] != raised_1.data["alarm_id"]
    assert all(len(r.data["alarm_id"]) <= 64 for r in sink.emitted)
    assert raised_1.data["alarm_id"].startswith("smoke.alarm:1.004:")  # device id left out
    assert dev.alarms.raised() == {"smoke.alarm": [raised_2.data["alarm_id"]]}
    sink.assert_valid()


def test_a_flood_of_zone_numbers_cannot_grow_memory(tmp_path: Path) -> None:
    cfg = device(PANEL_RAISE_CLEAR, tmp_path, id="panel")
    sink = RecordingSink()
    (dev,) = SerialLineDriver([cfg], sink).devices
    dev.alarms.max_active = 50
    dev.feed(b"".join(b"ALARM LOOP %d DEV %03d x\r\n" % (i % 10, i) for i in range(200)),
             time.time())
    assert len(dev.alarms.active) == 50 and dev.alarms.refused == 150
    assert len(sink.of("smoke.alarm")) == 50


def test_bad_lines_are_logged_once_per_interval(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = device(PANEL_RAISE_CLEAR, tmp_path, id="panel")
    now = [1000.0]
    from drivers.serial_line.driver import BAD_LOG_INTERVAL_S, _Device
    dev = _Device(cfg, RecordingSink(), clock=lambda: now[0])
    dev.feed(b"noise %d\r\n" % 0, time.time())
    dev.feed(b"".join(b"noise %d\r\n" % i for i in range(1, 100)) + b"x" * 600 + b"\r\n",
             time.time())
    first = capsys.readouterr().out
    assert first.count("serial_line_bad_line") == 1
    assert "'noise 0'" in first
    now[0] += BAD_LOG_INTERVAL_S
    dev.feed(b"ALARM LOOP 1 DEV 001 \xff\xfe\r\n", time.time())  # fine: replaced, matched
    dev.feed(b"RESTORE L1D01\r\n", time.time())
    summary = capsys.readouterr().out
    assert summary.count("serial_line_bad_line") == 1
    assert "'no_match': 100" in summary and "'too_long': 1" in summary
    assert dev.stats["rejected.no_match"] == 101 and dev.stats["rejected.too_long"] == 1


def test_record_rules_count_the_first_line_after_start_and_after_an_outage(
        tmp_path: Path) -> None:
    cfg = next(d for d in load_gateway_config(SAMPLE).devices if d.id == "gate-north")
    sink = RecordingSink()
    (dev,) = SerialLineDriver([cfg], sink).devices
    dev.feed(b"CARD 0001 GRANTED IN\n", time.time())
    assert len(sink.of("gate.access")) == 1
    dev.go_offline("test: cable cut")  # the rules forget their baselines ...
    dev.feed(b"CARD 0002 GRANTED OUT\n", time.time())
    assert len(sink.of("gate.access")) == 2  # ... and the first line back is still a record
    sink.assert_valid()
