"""Testing helpers shipped with the agent, for driver authors (httpx-style).

`RecordingSink` is an EventSink that keeps every event a driver emits, turns device
state changes into `device.online`/`device.offline` exactly as the pipeline does, and
checks every event against the published JSON Schema (`invalid` lists the failures).
`running(driver)` runs a driver for the length of an `async with` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from edge_agent.contract.envelope import Event, Hierarchy, Severity, new_event, schema
from edge_agent.pipeline import transition_event
from edge_agent.sdk.api import DeviceState, Driver

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
    events: list[Event] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    states: list[tuple[str, DeviceState, str]] = field(default_factory=list)
    current: dict[str, DeviceState] = field(default_factory=dict)
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

    def of(self, type_: str, device: str | None = None) -> list[Event]:
        return [e for e in self.events
                if e.type == type_ and (device is None or e.subject == device)]

    def types(self, device: str | None = None) -> list[str]:
        return [e.type for e in self.events if device is None or e.subject == device]


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
