"""Testing helpers shipped with the agent, for driver authors (httpx-style).

`RecordingSink` is an EventSink that keeps every event a driver emits, turns device
state changes into `device.online`/`device.offline` exactly as the pipeline does, and
checks every event against the published JSON Schema (`invalid` lists the failures); it
also keeps failed polls (`poll_errors`) and chatter counts, and hands out the alarms put
in `restored`. `NullSink` is a complete EventSink that keeps nothing: a test's own sink
derives from it and overrides what it looks at. `running(driver)` runs a driver for the
length of an `async with` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config.models import ChatterConfig, SnapshotsConfig
from edge_agent.contract.envelope import Event, Hierarchy, Severity, new_event, schema
from edge_agent.pipeline import transition_event
from edge_agent.sdk.api import DeviceState, Driver, EventSink, NullSink, OpenAlarm

TEST_HIERARCHY = Hierarchy(district="371312", street="371312001", community="371312001001",
                           gateway="gw-test")
TEST_EPOCH = "0123456789abcdef"


def _validator() -> Any:
    import jsonschema  # a test dependency, imported only when a sink is made

    return jsonschema.Draft7Validator(schema())


@dataclass
class RecordingSink:
    hierarchy: Hierarchy = TEST_HIERARCHY
    credential_salt: bytes = b"test-salt"
    snapshots: SnapshotsConfig | None = None
    alarm_chatter: ChatterConfig | None = None
    #: alarms open "when the agent last stopped", by device; each handed out once
    restored: dict[str, list[OpenAlarm]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    states: list[tuple[str, DeviceState, str]] = field(default_factory=list)
    current: dict[str, DeviceState] = field(default_factory=dict)
    #: failed polls reported (device, reason)
    poll_errors: list[tuple[str, str]] = field(default_factory=list)
    #: alarm toggles counted by chatter control instead of sent, by device
    toggles_suppressed: dict[str, int] = field(default_factory=dict)
    _since: dict[str, float] = field(default_factory=dict)
    _validator: Any = field(default_factory=_validator)

    def emit(self, device: str, type_: str, data: dict[str, Any], *,
             severity: Severity | None = None, observed_at: float | None = None) -> None:
        event = new_event(self.hierarchy, device, type_, data, severity=severity,
                          observed_at=observed_at).stamped(TEST_EPOCH, len(self.events) + 1)
        errors = [e.message for e in self._validator.iter_errors(json.loads(event.to_json()))]
        if errors:
            self.invalid.append(f"{type_} {data}: {errors}")
        self.events.append(event)

    def device_state(self, device: str, state: DeviceState, reason: str = "") -> None:
        previous = self.current.get(device, DeviceState.UNKNOWN)
        self.states.append((device, state, reason))
        if state == previous:
            return
        now = time.time()
        since = self._since.get(device, now)
        self.current[device], self._since[device] = state, now
        event = transition_event(previous, state, reason, now - since)
        if event is not None:
            self.emit(device, *event)

    def restored_alarms(self, device: str) -> list[OpenAlarm]:
        return self.restored.pop(device, [])

    def poll_error(self, device: str, reason: str) -> None:
        self.poll_errors.append((device, reason))

    def chatter_toggles(self, device: str, suppressed: int) -> None:
        self.toggles_suppressed[device] = self.toggles_suppressed.get(device, 0) + suppressed

    def of(self, type_: str, device: str | None = None) -> list[Event]:
        return [e for e in self.events
                if e.type == type_ and (device is None or e.subject == device)]

    def types(self, device: str | None = None) -> list[str]:
        return [e.type for e in self.events if device is None or e.subject == device]


#: mypy checks here that both are complete EventSinks.
_SINKS: tuple[type[EventSink], ...] = (NullSink, RecordingSink)


@contextlib.asynccontextmanager
async def running(driver: Driver) -> AsyncIterator[asyncio.Task[None]]:
    """Run `driver.run()` in a task for the block; cancel and await it on the way out."""
    task = asyncio.create_task(driver.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
