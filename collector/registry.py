"""The gateway registry: where each gateway is installed, and what an event may claim.

Until the provisioning tools write a registry, the district keeps it in a YAML file
(`gateways.file` in the collector config), loaded with the strict config loader, so a
mistake is reported as `FILE:LINE:COL: key: message`:

    gateways:
      gw-qhw-01: {district: "371312", street: "371312001", community: "371312001001"}

An event whose district, street or community is not its gateway's registered place is
quarantined (and acked); an unregistered gateway's events are quarantined too, or
accepted with a warning when `gateways.unregistered` is `accept`. The file is read again
when it changes (checked at most once a second) or on SIGHUP; a file that no longer
loads keeps the previous registry in force and says why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from edge_agent.contract.logs import get_logger
from edge_agent.contract.settings import SEGMENT, AdminCode, ConfigError, Strict, load_model

log = get_logger("collector.registry")

Unregistered = Literal["quarantine", "accept"]
GatewayId = Annotated[str, Field(pattern=SEGMENT)]
PLACE_KEYS = ("district", "street", "community")


class Place(Strict):
    district: AdminCode = Field(pattern=r"^[0-9]{6}$", description="6-digit admin code")
    street: AdminCode = Field(pattern=SEGMENT, description="street (township) code")
    community: AdminCode = Field(pattern=SEGMENT, description="community code")


class GatewaysFile(Strict):
    """The YAML file: `gateways:` maps each gateway id to its place."""

    gateways: dict[GatewayId, Place]


@dataclass(frozen=True, slots=True)
class Registry:
    """One loaded registry and the rule for gateways it does not list. Pure."""

    places: Mapping[str, Place]
    unregistered: Unregistered = "quarantine"

    def knows(self, gateway: str) -> bool:
        return gateway in self.places

    def misplaced(self, event: Mapping[str, Any]) -> str | None:
        """Why `event` (schema-valid) may not be stored under its claimed place, or None."""
        gateway = event["gateway"]
        place = self.places.get(gateway)
        if place is None:
            if self.unregistered == "accept":
                return None
            return (f"gateway {gateway!r} is not in the gateway registry "
                    "(gateways.unregistered: quarantine)")
        for key in PLACE_KEYS:
            if event[key] != getattr(place, key):
                return (f"{key} {event[key]!r} is not where gateway {gateway!r} is registered "
                        f"(expected {key} {getattr(place, key)!r})")
        return None


def load_registry(path: Path, unregistered: Unregistered) -> Registry:
    """Raises ConfigError (every issue, with file:line) for a file that cannot be used."""
    return Registry(load_model(path, GatewaysFile).gateways, unregistered)


class RegistryFile:
    """The registry from a file, read again when the file changes or on `request_reload`.

    `current()` is cheap: it looks at the file's stat at most every `check_every_s`.
    Thread-safe (the ingest worker reads it, a signal handler requests reloads).
    """

    def __init__(self, path: Path, unregistered: Unregistered = "quarantine", *,
                 check_every_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.unregistered: Unregistered = unregistered
        self.check_every_s = check_every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._reload_requested = False
        self._checked_at = clock()
        self._stamp = self._stat()
        self._registry = load_registry(path, unregistered)
        log.info("gateway_registry_loaded", path=str(path), gateways=len(self._registry.places),
                 unregistered=unregistered)

    def request_reload(self) -> None:
        """Read the file again at the next `current()` (SIGHUP)."""
        self._reload_requested = True

    def current(self) -> Registry:
        with self._lock:
            now = self.clock()
            if self._reload_requested or now - self._checked_at >= self.check_every_s:
                self._checked_at = now
                stamp = self._stat()
                if self._reload_requested or stamp != self._stamp:
                    self._reload_requested = False
                    self._stamp = stamp
                    self._reload()
            return self._registry

    def _reload(self) -> None:
        try:
            self._registry = load_registry(self.path, self.unregistered)
        except ConfigError as exc:
            # Never held back as a repeat: each reload follows a change of the file or an
            # operator's SIGHUP, and the operator waits for its answer.
            log.error("gateway_registry_reload_failed", path=str(self.path),
                      issues=[str(i) for i in exc.issues[:20]],
                      hint="fix the file; the registry loaded before stays in force",
                      repeat_ok=True)
            return
        log.info("gateway_registry_loaded", path=str(self.path),
                 gateways=len(self._registry.places), unregistered=self.unregistered)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size
