"""The agent's side of driver bundles: live reload, probation, the journal's events.

`DriverRuntime` owns one task per driver (all of that driver's devices). Every `POLL_S` it
reads the store: a driver whose active version changed (an install or rollback by the CLI)
is stopped and built again from the new code with the same devices; the pipeline, outbox
and uplink never stop, and what a driver emitted is already in the pipeline's queue.

Probation (Mender's install → health check → commit): for `probation_s` after a switch, a
driver that raises (import, options, build or run) is rolled back at once; one that reported
nothing (no event, no device online from any of its devices) by the deadline is rolled back;
otherwise the version is committed. An agent stopped during probation continues it on start,
counting attempts; the third start in probation rolls back. A driver with nothing to go back
to (no earlier version, no built-in driver) is never switched to nothing: its version stays,
marked failed, and its devices are not run but reported in error until a new version comes.

Journal → events: each journal entry (written by whoever acted) becomes one
`gateway.driver_installed|_rolled_back|_refused` event committed to the outbox, and only then
the journal offset moves. The event's id is a ULID derived from the entry (its time, and a
hash of the gateway and the entry), so a kill between the commit and the offset write sends
the same id again, which the collector stores once (its primary key is the id).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edge_agent.bundles import journal, loader
from edge_agent.bundles.errors import BundleError, NoPreviousVersion
from edge_agent.bundles.model import shown
from edge_agent.bundles.presence import mark_agent
from edge_agent.bundles.store import DriverState, Store
from edge_agent.config.models import ChatterConfig, DeviceConfig, DriversConfig, SnapshotsConfig
from edge_agent.contract.backoff import Backoff
from edge_agent.contract.envelope import Event, Hierarchy, Severity, encode_ulid, new_event
from edge_agent.contract.logs import get_logger
from edge_agent.sdk.api import DeviceState, Driver, DriverSpec, EventSink, OpenAlarm
from edge_agent.sdk.registry import available, builtin
from edge_agent.sdk.supervise import RESTART_MAX_S, RESTART_MIN_S

log = get_logger("edge_agent.bundles.runtime")

POLL_S = 1.0
#: a rolled_back event's `version` when nothing could be made active
NONE = "none"
#: starts in probation before the version is rolled back without a verdict
MAX_ATTEMPTS = 2
_TYPES = {"installed": "gateway.driver_installed", "rolled_back": "gateway.driver_rolled_back",
          "refused": "gateway.driver_refused"}
_FIELDS = ("driver", "version", "previous", "reason", "hint", "keyids", "metadata_version",
           "entry_id")



def _cause(exc: BaseException) -> str:
    """`Type: message` of what really failed (the first leaf of an exception group: a
    driver's TaskGroup wraps its devices' errors)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:300]

def entry_ulid(gateway: str, entry: dict[str, Any]) -> str:
    """A ULID for a journal entry, the same on every reading: the entry's time in ms and
    80 bits of sha256(gateway, entry_id)."""
    ms = int(float(entry.get("time", 0)) * 1000) & ((1 << 48) - 1)
    digest = hashlib.sha256(f"{gateway}:{entry.get('entry_id', '')}".encode()).digest()
    return encode_ulid(ms, int.from_bytes(digest[:10], "big"))


class _Watch:
    """The pipeline as the driver's EventSink, noting that the driver produced something."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink
        self.produced = False

    @property
    def credential_salt(self) -> bytes:
        return self.sink.credential_salt

    @property
    def snapshots(self) -> SnapshotsConfig | None:
        return self.sink.snapshots

    @property
    def alarm_chatter(self) -> ChatterConfig | None:
        return self.sink.alarm_chatter

    def emit(self, device: str, type_: str, data: dict[str, Any], *,
             severity: Severity | None = None, observed_at: float | None = None) -> None:
        self.produced = True
        self.sink.emit(device, type_, data, severity=severity, observed_at=observed_at)

    def device_state(self, device: str, state: DeviceState, reason: str = "") -> None:
        if state == DeviceState.ONLINE:
            self.produced = True
        self.sink.device_state(device, state, reason)

    def restored_alarms(self, device: str) -> list[OpenAlarm]:
        return self.sink.restored_alarms(device)

    def poll_error(self, device: str, reason: str) -> None:
        self.sink.poll_error(device, reason)

    def chatter_toggles(self, device: str, suppressed: int) -> None:
        self.sink.chatter_toggles(device, suppressed)


@dataclass
class _Slot:
    name: str
    devices: list[DeviceConfig]
    version: str | None = None
    watch: _Watch | None = None
    task: asyncio.Task[None] | None = None
    failure: str = ""
    probation_until: float | None = None
    driver: Driver | None = None  # built before the task starts (first start only)
    halted: bool = False  # its version failed with nothing to go back to: not run


class DriverRuntime:
    def __init__(self, cfg: DriversConfig, store: Store, devices: Sequence[DeviceConfig],
                 sink: EventSink, hierarchy: Hierarchy,
                 commit: Callable[[list[Event]], Awaitable[None]]) -> None:
        self.cfg = cfg
        self.store = store
        self.sink = sink
        self.hierarchy = hierarchy
        self.commit = commit
        #: where the journal's unsent entries start: read from disk once, then kept here
        #: (only this process writes it)
        self._journal_offset: int | None = None
        self._journal_failing = False  # logged once until the journal is writable again
        #: drivers whose state (read by this tick's `_check`) says an install's journal
        #: entry is still to be written
        self._unjournaled: set[str] = set()
        self.slots: dict[str, _Slot] = {}
        for dev in devices:
            if dev.enabled:
                self.slots.setdefault(dev.driver, _Slot(dev.driver, [])).devices.append(dev)

    # ------------------------------------------------------------------ building
    def _spec(self, name: str, first: bool = False) -> tuple[str | None, DriverSpec]:
        version_dir = self.store.active_dir(name)
        if first:  # the modules config validation imported (no second copy in memory)
            root = self.store.root
            drivers = available(root) if root.is_dir() else available()
            seen = drivers.bundles.get(name)
            if name in drivers and (seen[1] if seen else None) == version_dir:
                return (None if version_dir is None else version_dir.name), drivers[name]
        point = builtin().get(name)
        if version_dir is None and point is not None and not point.value.startswith(
                f"drivers.{name}:"):
            spec = point.load()
            if not isinstance(spec, DriverSpec):
                raise loader.BundleLoadError(f"driver {name!r} is not a DriverSpec")
            return None, spec
        return (None if version_dir is None else version_dir.name,
                loader.load(name, self.store.root / name, version_dir))

    def _build(self, slot: _Slot, first: bool = False) -> Driver:
        slot.version, spec = self._spec(slot.name, first)
        devices = [d if isinstance(d, spec.options) else spec.options.model_validate(
            d.model_dump()) for d in slot.devices]
        slot.watch = _Watch(self.sink)
        return spec.build(devices, slot.watch)

    def build_all(self) -> None:
        """Build every driver before the agent runs (errors raise, as before bundles),
        continuing an unfinished probation; a driver in probation that cannot be built is
        rolled back here."""
        for name in sorted(set(self.store.names()) | set(self.slots)):
            st = self._state(name)
            if st is None or st.state != "probation":
                continue
            attempts = st.attempts + 1
            if attempts > MAX_ATTEMPTS:
                self._rollback(name, f"probation interrupted {st.attempts} times (the agent "
                               "stopped before the verdict)")
            else:
                self._update(name, attempts=attempts,
                             deadline=time.time() + self.cfg.probation_s)
        for slot in self.slots.values():
            st = self._state(slot.name)
            if st is not None and st.state == "failed":
                self._halt(slot, st)
                continue
            probation = st is not None and st.state == "probation"
            try:
                slot.driver = self._build(slot, first=True)
            except Exception as exc:
                if not probation:
                    raise
                self._rollback(slot.name, f"crashed: {_cause(exc)}")
                st = self._state(slot.name)
                if st is not None and st.state == "failed":
                    self._halt(slot, st)
                    continue
                slot.driver = self._build(slot)
                probation = False
            slot.probation_until = (time.monotonic() + self.cfg.probation_s
                                    if probation else None)

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        try:
            mark_agent(self.store.root, os.getpid())
        except OSError as exc:  # drivers run anyway; `install --wait` will not wait
            log.warning("driver_store_not_writable", path=str(self.store.root),
                        error=str(exc), hint="check drivers.state_dir")
        try:
            for slot in self.slots.values():
                if not slot.halted and (slot.task is None or slot.task.done()):
                    slot.task = asyncio.create_task(self._drive(slot), name=f"driver:{slot.name}")
            while True:
                await self.tick()
                await asyncio.sleep(POLL_S)
        finally:
            for slot in self.slots.values():
                if slot.task is not None:
                    slot.task.cancel()
            for slot in self.slots.values():
                if slot.task is not None:
                    with contextlib.suppress(BaseException):
                        await slot.task
                    slot.task = None
            with contextlib.suppress(OSError):
                mark_agent(self.store.root, None)

    async def _drive(self, slot: _Slot) -> None:
        backoff = Backoff(RESTART_MIN_S, RESTART_MAX_S)
        while True:
            started = time.monotonic()
            try:
                driver, slot.driver = slot.driver, None
                if driver is None:
                    driver = self._build(slot)
                await driver.run()
                raise RuntimeError("the driver's run() returned")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("task_crashed", task=f"driver:{slot.name}", error=str(exc),
                              version=shown(slot.version))
                if slot.probation_until is not None:
                    slot.failure = f"crashed: {_cause(exc)}"
                    return
            if time.monotonic() - started > 10 * RESTART_MAX_S:
                backoff.reset()
            await backoff.sleep()

    async def tick(self) -> None:
        """One look at the store and the journal (every POLL_S)."""
        self._unjournaled.clear()
        for name in sorted(set(self.store.names()) | set(self.slots)):
            try:
                await self._check(name)
            except BundleError as exc:
                log.error("driver_store_error", driver=name, error=str(exc), hint=exc.hint)
        if self._unjournaled:
            self._journal_missing()
        await self._journal()

    def _journal_missing(self) -> None:
        """Write the `installed` entry an install lost (a full disk, a kill after the
        switch), so the district gets its event."""
        try:
            with self.store.locked():
                done = self.store.journal_missing()
        except (BundleError, OSError) as exc:
            if not self._journal_failing:
                log.error("driver_journal_unwritable", error=str(exc))
            self._journal_failing = True
            return
        self._journal_failing = False
        for name in done:
            log.warning("driver_install_journaled_late", driver=name)

    async def _check(self, name: str) -> None:
        st = self._state(name)
        if st is None:
            return
        if not st.journaled:
            self._unjournaled.add(name)
        slot = self.slots.get(name)
        if slot is None:  # no device uses it: nothing to judge
            if st.state == "probation":
                self._commit(st)
            return
        if st.state == "failed":
            if not slot.halted:
                await self._stop(slot)
                self._halt(slot, st)
            return
        if st.active != slot.version or slot.halted:
            await self._reload(slot, st)
            st = self._state(name) or st
        if st.state != "probation" or slot.probation_until is None:
            return
        if slot.failure:
            self._rollback(name, slot.failure)
        elif time.monotonic() >= slot.probation_until:
            if slot.watch is not None and slot.watch.produced:
                self._commit(st)
                slot.probation_until = None
            else:
                self._rollback(name, f"no output: none of its {len(slot.devices)} device(s) "
                               f"reported within {self.cfg.probation_s:g} s")
        else:
            return
        st = self._state(name) or st
        if st.state == "failed":
            await self._stop(slot)
            self._halt(slot, st)
        elif st.active != slot.version:
            await self._reload(slot, st)

    async def _stop(self, slot: _Slot) -> None:
        if slot.task is not None:
            slot.task.cancel()
            with contextlib.suppress(BaseException):
                await slot.task
            slot.task = None

    def _halt(self, slot: _Slot, st: DriverState) -> None:
        """The driver's version failed and nothing can replace it: run none of its devices,
        report each in error with the reason (the rest of the agent runs on)."""
        slot.halted, slot.failure, slot.driver = True, "", None
        slot.probation_until, slot.version = None, st.active
        why = (f"driver {slot.name} {shown(st.active)} failed ({st.reason}); no earlier "
               "version and no built-in driver: install a fixed bundle")
        for dev in slot.devices:
            self.sink.device_state(dev.id, DeviceState.ERROR, why[:500])
        log.error("driver_halted", driver=slot.name, version=shown(st.active),
                  reason=st.reason, devices=len(slot.devices),
                  hint="install a fixed bundle with a new version")

    async def _reload(self, slot: _Slot, st: DriverState) -> None:
        log.info("driver_reloading", driver=slot.name, version=shown(st.active),
                 previous=shown(slot.version), devices=len(slot.devices))
        await self._stop(slot)
        slot.failure, slot.driver, slot.halted = "", None, False
        probation = st.state == "probation"
        if probation:
            self._update(slot.name, attempts=max(1, st.attempts),
                         deadline=time.time() + self.cfg.probation_s)
        slot.probation_until = time.monotonic() + self.cfg.probation_s if probation else None
        slot.version = st.active
        slot.task = asyncio.create_task(self._drive(slot), name=f"driver:{slot.name}")

    # ------------------------------------------------------------------ store steps
    def _state(self, name: str) -> DriverState | None:
        try:
            return self.store.state(name)
        except BundleError as exc:
            log.error("driver_state_unreadable", driver=name, error=str(exc))
            return None

    def _update(self, name: str, **changes: Any) -> None:
        """Change fields of `name`'s state as it is now (re-read under the lock)."""
        with self.store.locked():
            self.store.update(replace(self.store.state(name), **changes))

    def _commit(self, st: DriverState) -> None:
        with self.store.locked():
            now = self.store.state(st.name)
            if now.active == st.active and now.state == "probation":
                self.store.update(replace(now, state="committed", deadline=None, attempts=0))
        log.info("driver_committed", driver=st.name, version=shown(st.active))

    def _rollback(self, name: str, reason: str) -> None:
        """Back to the previous version; with none (no earlier version, no built-in
        driver) the version is marked failed and its devices stop (see `_halt`)."""
        with self.store.locked():
            try:
                after = self.store.switch_back(name, reason, builtin=name in builtin())
            except NoPreviousVersion:
                failed = self.store.mark_failed(name, reason)
                self.store.record({"event": "rolled_back", "driver": name, "version": NONE,
                                   "previous": shown(failed.active),
                                   "reason": f"{reason}; nothing to go back to (no earlier "
                                             "version, no built-in driver): its devices "
                                             "are stopped",
                                   "hint": "install a fixed bundle with a new version"})
                log.error("driver_failed", driver=name, version=shown(failed.active),
                          reason=reason, hint="install a fixed bundle with a new version")
                return
            self.store.record({"event": "rolled_back", "driver": name,
                               "version": shown(after.active),
                               "previous": shown(after.rolled_back), "reason": reason})
        log.warning("driver_rolled_back", driver=name, version=shown(after.active),
                    previous=shown(after.rolled_back), reason=reason)

    async def _journal(self) -> None:
        root = self.store.root
        if self._journal_offset is None:
            self._journal_offset = journal.read_offset(root)
        entries = journal.read_from(root, self._journal_offset)
        if not entries:
            return
        events = []
        for _, entry in entries:
            type_ = _TYPES.get(str(entry.get("event")))
            if type_ is None:
                continue
            data = {k: entry[k] for k in _FIELDS if k in entry and entry[k] is not None}
            data.setdefault("driver", "?")
            data.setdefault("version", "")
            if type_ != "gateway.driver_installed":
                data.setdefault("reason", "")
            event = new_event(self.hierarchy, self.hierarchy.gateway, type_, data,
                              observed_at=float(entry.get("time") or time.time()))
            events.append(event.model_copy(
                update={"id": entry_ulid(self.hierarchy.gateway, entry)}))
        try:
            if events:
                await self.commit(events)
        except Exception as exc:
            log.error("driver_events_not_committed", error=str(exc), events=len(events))
            return
        journal.write_offset(root, entries[-1][0])
        self._journal_offset = entries[-1][0]
