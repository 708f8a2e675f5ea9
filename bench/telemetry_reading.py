"""What a `sensor.reading` costs on the box: event bytes and rules-engine CPU per poll.

The peer workload's device (`peer-holding-20`: 20 holding registers, `report:
every_poll`) polled N times through the real rules engine (`DeviceRules.update`) into a
sink that mints each event and serializes it (`new_event(...).to_json()`, as the
pipeline does). Compared with the old way of running that workload, a register map
pretending to be a smoke detector (`smoke.reading`, 3 of the 20 values, heartbeat
shorter than the poll period). Prints one JSON line per case and a summary; nothing is
sent anywhere (wire bytes with compression: the uplink benches).

    .venv/bin/python bench/telemetry_reading.py [--polls 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench._common import emit, summary  # noqa: E402
from drivers.modbus.profile import load_profile  # noqa: E402
from edge_agent.contract.envelope import Severity, new_event  # noqa: E402
from edge_agent.rules import DeviceRules  # noqa: E402
from edge_agent.sdk.testing import TEST_HIERARCHY  # noqa: E402


class SizingSink:
    """An EventSink that mints and serializes each event and counts its bytes."""

    alarm_chatter = None
    credential_salt = b""

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0

    def emit(self, device: str, type_: str, data: dict[str, Any], *,
             severity: Severity | None = None, observed_at: float | None = None) -> None:
        event = new_event(TEST_HIERARCHY, device, type_, data, severity=severity,
                          observed_at=observed_at).stamped("0123456789abcdef", self.events + 1)
        self.events += 1
        self.bytes += len(event.to_json().encode())

    def restored_alarms(self, device: str) -> list[Any]:
        return []

    def chatter_toggles(self, device: str, suppressed: int) -> None:
        pass


def run(case: str, rules: DeviceRules, sink: SizingSink, values: list[dict[str, Any]],
        datapoints: int) -> dict[str, Any]:
    start = time.perf_counter()
    for poll in values:
        rules.update(poll)
    seconds = time.perf_counter() - start
    row = {"case": case, "polls": len(values), "events": sink.events,
           "bytes_per_event": round(sink.bytes / max(1, sink.events), 1),
           "datapoints_per_event": datapoints,
           "bytes_per_datapoint": round(sink.bytes / max(1, sink.events) / datapoints, 1),
           "us_per_poll": round(seconds / len(values) * 1e6, 1)}
    emit(row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--polls", type=int, default=20000)
    args = parser.parse_args()
    peer = load_profile("peer-holding-20")
    polls = [{p.name: (i * 7 + k) % 65536 for k, p in enumerate(peer.points)}
             for i in range(args.polls)]
    sink = SizingSink()
    rules = DeviceRules("dev-001", peer.events, sink, kind=peer.device_kind, units=peer.units())
    new = run("sensor.reading, 20 quantities, every poll", rules, sink, polls, 20)

    smoke = load_profile("smoke-detector")
    trick = smoke.events[0].model_copy(update={"heartbeat_s": 1e-9})
    old_sink = SizingSink()
    old_rules = DeviceRules("dev-001", [trick], old_sink)
    old_polls = [{"density": (i % 1000) * 0.001, "temperature": 20.0 + i % 10,
                  "battery": 90} for i in range(args.polls)]
    old = run("smoke.reading trick, 3 values, heartbeat < period", old_rules, old_sink,
              old_polls, 3)
    summary({"bench": "telemetry_reading", "polls": args.polls,
             "sensor_reading_bytes_per_event": new["bytes_per_event"],
             "sensor_reading_bytes_per_datapoint": new["bytes_per_datapoint"],
             "sensor_reading_us_per_poll": new["us_per_poll"],
             "smoke_trick_bytes_per_datapoint": old["bytes_per_datapoint"],
             "smoke_trick_us_per_poll": old["us_per_poll"]})


if __name__ == "__main__":
    main()
