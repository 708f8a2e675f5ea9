"""Installed driver versions side by side under `<state_dir>/drivers/`.

Layout: `NAME/VERSION/` (an unpacked wheel: `drivers/NAME/**` + dist-info), `NAME/current`
(symlink to the active VERSION; absent: the built-in driver), `NAME/state.json` (active,
previous, committed|probation|failed, probation deadline, attempts, highest
metadata_version, each version's wheel sha256, the wheels rolled back and why),
`journal.jsonl`, `.lock` (flock: one writer at a time, CLI or agent).

Install order (each step atomic, `crash(point)` between them for tests): unpack into
`NAME/.tmp-*` and fsync → rename to `NAME/VERSION` → switch `current` → write state.json →
journal. The symlink is the truth: a state.json that disagrees with it (killed between the
switch and the state write) is reconciled on read (the linked version is in probation, the
one state.json named is its previous). So a kill anywhere leaves the old or the new version
active, each a complete directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from packaging.version import InvalidVersion, Version

from edge_agent.bundles import journal
from edge_agent.bundles.errors import NoPreviousVersion, StoreError
from edge_agent.bundles.fsutil import switch_symlink, write_tree
from edge_agent.bundles.model import NAME_RE, Installed, shown
from edge_agent.contract.files import locked, write_atomic

if TYPE_CHECKING:
    from edge_agent.bundles.format import Accepted

#: crash points (tests): the env var names one, the process SIGKILLs itself there
CRASH_ENV = "EDGE_AGENT_TEST_CRASH_AT"
CRASH_POINTS = ("unpacked", "renamed", "switched", "state_written", "journaled")

#: failed: the active version failed probation and there was nothing to go back to (no
#: earlier version, no built-in driver): `current` stays (the config still loads), the agent
#: runs none of its devices and reports them in error until a new version is installed
Phase = Literal["committed", "probation", "failed"]


def _crash_from_env(point: str) -> None:
    if os.environ.get(CRASH_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class DriverState:
    name: str
    active: str | None = None  # None: the built-in driver
    previous: str | None = None
    state: Phase = "committed"
    deadline: float | None = None
    attempts: int = 0
    metadata_version: int = 0
    reason: str = ""  # why the last rollback happened
    rolled_back: str | None = None  # the version the last rollback left
    #: version -> sha256 of its signed wheel (what the version's content is)
    hashes: dict[str, str] = field(default_factory=dict)
    #: sha256 of a wheel this gateway rolled back -> why (refused on a re-install)
    failed: dict[str, str] = field(default_factory=dict)
    #: the key ids that signed the active version (`drivers list` shows them)
    keyids: tuple[str, ...] = ()
    #: False from the switch until the install's journal entry is written: an entry lost
    #: to a full disk or a kill is written late by `journal_missing`
    journaled: bool = True

    def installed(self, builtin: str | None = None) -> Installed:
        return Installed(self.active, self.metadata_version, builtin)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "active": (str, type(None)), "previous": (str, type(None)), "state": (str,),
    "deadline": (int, float, type(None)), "attempts": (int,), "metadata_version": (int,),
    "reason": (str,), "rolled_back": (str, type(None)), "keyids": (list,),
    "journaled": (bool,), "hashes": (dict,), "failed": (dict,)}


def _parse_state(name: str, raw: object) -> DriverState:
    """A state.json document as a DriverState; ValueError names the first bad key."""
    if not isinstance(raw, dict):
        raise ValueError(f"a JSON object is expected, not {type(raw).__name__}")
    fields: dict[str, object] = {}
    for key, types in _FIELD_TYPES.items():
        if key not in raw:
            continue
        value = raw[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"{key!r} is {value!r}, which is not "
                             + " or ".join(t.__name__ for t in types))
        fields[key] = value
    if fields.get("state", "committed") not in get_args(Phase):
        raise ValueError(f"'state' is {fields['state']!r}, not one of {get_args(Phase)}")
    keyids = fields.pop("keyids", [])
    assert isinstance(keyids, list)
    if not all(isinstance(k, str) for k in keyids):
        raise ValueError("'keyids' must be a list of strings")
    for key in ("hashes", "failed"):
        table = fields.get(key, {})
        assert isinstance(table, dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            raise ValueError(f"{key!r} must map strings to strings")
    return DriverState(name, keyids=tuple(keyids), **fields)  # type: ignore[arg-type]


def _version_key(v: str) -> Version:
    try:
        return Version(v)
    except InvalidVersion:
        return Version("0")


class Store:
    def __init__(self, root: Path, keep_versions: int = 3,
                 crash: Callable[[str], None] = _crash_from_env) -> None:
        self.root = root
        self.keep = max(2, keep_versions)
        self.crash = crash

    # ------------------------------------------------------------------ reading
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and NAME_RE.match(p.name))

    def _dir(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise StoreError(f"{name!r} is not a driver name", "a-z, 0-9 and _")
        return self.root / name

    def linked(self, name: str) -> str | None:
        try:
            target = os.readlink(self._dir(name) / "current")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self._dir(name)}/current: {exc.strerror}") from None
        return Path(target).name

    def state(self, name: str) -> DriverState:
        """The driver's state, reconciled with the `current` symlink."""
        path = self._dir(name) / "state.json"
        try:
            st = _parse_state(name, json.loads(path.read_text("utf-8")))
        except FileNotFoundError:
            st = DriverState(name)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable ({str(exc)[:200]})",
                             "restore it or remove it (the `current` link stays the "
                             "truth)") from None
        linked = self.linked(name)
        if linked != st.active:  # killed between the switch and the state write
            if linked is None:
                st = replace(st, active=None, previous=None, state="committed", keyids=())
            else:
                st = replace(st, active=linked, previous=st.active, state="probation",
                             attempts=0, deadline=None, keyids=(), journaled=False)
        return st

    def active_dir(self, name: str) -> Path | None:
        version = self.linked(name)
        return None if version is None else self._dir(name) / version

    def versions(self, name: str) -> list[str]:
        d = self._dir(name)
        if not d.is_dir():
            return []
        return sorted((p.name for p in d.iterdir() if p.is_dir() and not p.is_symlink() and not
                       p.name.startswith(".")), key=_version_key)

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(locked(self.root, dir_mode=0o755))
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot write the driver store ({exc.strerror})",
                             "run as the agent's user; check drivers.state_dir") from None
        with stack:
            yield

    def _write_state(self, st: DriverState) -> None:
        write_atomic(self._dir(st.name) / "state.json",
                     json.dumps(asdict(st), sort_keys=True, indent=1).encode())

    def install(self, accepted: Accepted, probation_s: float) -> tuple[DriverState, DriverState]:
        """Unpack, switch to the bundle's version; (state before, state after). Call under
        `locked()`, after `verify` with `state(name).installed()`."""
        s = accepted.signed
        d = self._dir(s.name)
        d.mkdir(parents=True, exist_ok=True)
        before = self.state(s.name)
        for stale in d.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = d / f".tmp-{s.version}-{os.getpid()}"
        try:
            write_tree(tmp, accepted.files)
            self.crash("unpacked")
            final = d / s.version
            if final.exists():
                if before.active == s.version and before.state != "failed":
                    raise StoreError(f"{s.name} {s.version} is active already")
                old = d / f".tmp-old-{s.version}-{os.getpid()}"
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, final)
        except OSError as exc:  # a full disk, a quota: nothing switched, nothing left
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"{d}: cannot unpack {s.name} {s.version} ({exc.strerror}); "
                             "nothing changed",
                             "free disk space in the driver store (drivers.state_dir) and "
                             "install again") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.crash("renamed")
        try:
            switch_symlink(d / "current", s.version)
        except OSError as exc:
            raise StoreError(f"{d}/current: cannot switch to {s.version} ({exc.strerror}); "
                             f"{shown(before.active)} stays active",
                             "free disk space in the driver store and install again") from None
        self.crash("switched")
        # the version replaced (a rollback skips one this gateway rolled back, see
        # switch_back); a forced re-install of the active version keeps its previous
        previous = before.previous if before.active == s.version else before.active
        self._prune(s.name, keep={s.version, before.active})
        on_disk = set(self.versions(s.name))
        hashes = {v: h for v, h in before.hashes.items() if v in on_disk}
        hashes[s.version] = s.wheel_sha256
        failed = {h: r for h, r in before.failed.items() if h != s.wheel_sha256}
        after = DriverState(s.name, s.version, previous, "probation",
                            time.time() + probation_s, 0,
                            max(before.metadata_version, s.metadata_version),
                            hashes=hashes, failed=failed, keyids=tuple(accepted.keyids),
                            journaled=False)
        with contextlib.suppress(OSError):  # unwritten: reconciled on read, as after a kill
            self._write_state(after)
        self.crash("state_written")
        return before, after

    def _usable(self, st: DriverState, below: str) -> list[str]:
        """Versions on disk older than `below` that this gateway never rolled back, newest
        first."""
        failed = {v for v, h in st.hashes.items() if h in st.failed}
        return sorted((v for v in self.versions(st.name)
                       if v not in failed and _version_key(v) < _version_key(below)),
                      key=_version_key, reverse=True)

    def switch_back(self, name: str, reason: str, *, builtin: bool) -> DriverState:
        """Make the previous version active again: the one installed before it if still on
        disk, else the newest older version on disk, else the built-in driver (`builtin`:
        the agent ships one). Nothing to go back to raises NoPreviousVersion. Call under
        `locked()`."""
        st = self.state(name)
        if st.active is None:
            raise StoreError(f"{name}: the built-in driver is active; nothing to roll back",
                             "`edge-agent drivers list` shows what is installed")
        older = self._usable(st, st.active)
        target = st.previous if st.previous in older else (older[0] if older else None)
        if target is None and not builtin:
            raise NoPreviousVersion(
                f"{name}: nothing to roll back to: {st.active} is the only usable version "
                f"and the agent has no built-in {name} driver",
                f"install a fixed {name} bundle with a new version "
                "(`edge-agent drivers install`)")
        switch_symlink(self._dir(name) / "current", target)
        rest = [] if target is None else self._usable(st, target)
        failed = dict(st.failed)
        if st.active in st.hashes:
            failed[st.hashes[st.active]] = reason
        after = DriverState(name, target, rest[0] if rest else None, "committed", None, 0,
                            st.metadata_version, reason, st.active, hashes=st.hashes,
                            failed=failed)
        self._write_state(after)
        return after

    def mark_failed(self, name: str, reason: str) -> DriverState:
        """The active version failed and nothing can replace it: keep `current` (the config
        still names a driver that exists) and mark it failed. Call under `locked()`."""
        st = self.state(name)
        failed = dict(st.failed)
        if st.active in st.hashes:
            failed[st.hashes[st.active]] = reason
        after = replace(st, state="failed", deadline=None, attempts=0, reason=reason,
                        failed=failed)
        self._write_state(after)
        return after

    def update(self, st: DriverState) -> None:
        """Write `st` as is (probation attempts, commit). Call under `locked()`."""
        if self.linked(st.name) != st.active:
            raise StoreError(f"{st.name}: the active version changed meanwhile")
        self._write_state(st)

    def _prune(self, name: str, keep: set[str | None]) -> None:
        versions = self.versions(name)
        extra = [v for v in versions if v not in keep]
        for v in extra[:max(0, len(versions) - self.keep)]:
            shutil.rmtree(self._dir(name) / v, ignore_errors=True)

    def record(self, entry: dict[str, object]) -> None:
        journal.append(self.root, entry)

    def installed_entry(self, st: DriverState) -> dict[str, object]:
        """The journal entry of the install that made `st` active."""
        return {"event": "installed", "driver": st.name, "version": st.active,
                "previous": shown(st.previous), "keyids": list(st.keyids),
                "metadata_version": st.metadata_version}

    def mark_journaled(self, name: str) -> None:
        """Mark the active version's install as journaled. Call under `locked()`."""
        st = self.state(name)
        if not st.journaled:
            self._write_state(replace(st, journaled=True))

    def journal_missing(self) -> list[str]:
        """Write the `installed` entries an install could not write (a full disk, a kill
        between the switch and the journal) and mark them written; the drivers concerned.
        Called by each install and by the agent every second. Call under `locked()`."""
        done = []
        for name in self.names():
            try:
                st = self.state(name)
            except StoreError:  # a bad state.json: reported by what reads that driver
                continue
            if st.journaled or st.active is None:
                continue
            self.record({**self.installed_entry(st), "late": True})
            self._write_state(replace(st, journaled=True))
            done.append(name)
        return done
