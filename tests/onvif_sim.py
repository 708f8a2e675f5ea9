"""Helpers for the ONVIF tests: a camera entry for a simulator, waiting for events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.onvif.driver import OnvifDriver
from drivers.onvif.host import CameraHost
from drivers.onvif.options import OnvifCamera
from drivers.onvif.simulator import OnvifSimulator
from edge_agent.config.models import SnapshotsConfig
from edge_agent.sdk.testing import RecordingSink

PASSWORD_ENV = "ONVIF_TEST_PASSWORD"


def camera(sim: OnvifSimulator, secret: Path, *, device: str = "cam-1", password: str | None = None,
           **options: Any) -> OnvifCamera:
    """A validated camera entry for `sim`, its password in the file `secret` (an open
    simulator, `username=None`, gets an entry without credentials)."""
    login: dict[str, Any] = {}
    if sim.users:
        secret.write_text((password or sim.users[next(iter(sim.users))]) + "\n")
        login = {"username": next(iter(sim.users)), "password": {"file": str(secret)}}
    events = {"pull_timeout_s": 1, "liveness_s": 5, "termination_s": 60, "renew_margin_s": 10,
              **options.pop("events", {})}
    entry: dict[str, Any] = {
        "id": device, "driver": "onvif", "host": "127.0.0.1", "port": sim.port,
        **login,
        "timeout_s": 3, "offline_after": 2,
        "backoff": {"initial_s": 0.1, "max_s": 0.5},
        "events": events,
        "snapshots": {"min_interval_s": 0, **options.pop("snapshots", {})},
        "video": {"enabled": False, **options.pop("video", {})},
        **options,
    }
    return OnvifCamera.model_validate(entry)


def driver(cams: list[OnvifCamera], sink: RecordingSink, tmp: Path,
           max_files: int = 50) -> CameraHost:
    """The driver as the agent runs it: the cameras in a worker process."""
    return CameraHost(cams, sink, snapshots=SnapshotsConfig(dir=tmp / "snapshots",
                                                            max_files=max_files))


def in_process(cams: list[OnvifCamera], sink: RecordingSink, tmp: Path,
               max_files: int = 50) -> OnvifDriver:
    """The cameras in this process (what a worker runs), for tests that look inside."""
    return OnvifDriver(cams, sink, snapshots=SnapshotsConfig(dir=tmp / "snapshots",
                                                             max_files=max_files))


async def wait_for(predicate: Callable[[], Any], limit_s: float = 20.0,
                   what: str = "condition") -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {limit_s}s waiting for {what}")


def data_of(sink: RecordingSink, type_: str) -> list[dict[str, Any]]:
    return [e.data for e in sink.of(type_)]
