"""What the `edge-agent drivers` commands do, apart from parsing and printing.

`install` verifies a bundle (format.verify) against the gateway's trusted keys and what is
installed, installs it (store), journals the outcome, and answers one `Outcome` per the
contract with edge-fleet (docs/drivers-updates.md): installed | already_current | refused |
rolled_back | pending. With a running agent and `wait_s`, the answer waits for the agent's
probation verdict in state.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from edge_agent import __version__
from edge_agent.bundles.errors import BundleError, StoreError
from edge_agent.bundles.format import LIMITS, Accepted, Refused, Trust, verify
from edge_agent.bundles.keys import keyid, parse_public, read_public
from edge_agent.bundles.model import same_version, shown
from edge_agent.bundles.presence import agent_running
from edge_agent.bundles.store import DriverState, Store
from edge_agent.config.models import DriversConfig, GatewayConfig


@dataclass(frozen=True)
class Outcome:
    gateway: str
    driver: str
    version: str
    previous: str
    outcome: str
    reason: str = ""

    def json(self) -> str:
        return json.dumps(asdict(self), separators=(", ", ": "))


def store_for(cfg: GatewayConfig) -> Store:
    return Store(cfg.drivers.store_root(cfg.outbox.path), cfg.drivers.keep_versions)


def trust_from(cfg: DriversConfig) -> Trust:
    keys = {}
    for entry in cfg.trusted_keys:
        key = read_public(entry.file) if entry.file is not None else parse_public(
            entry.key or "", "drivers.trusted_keys")
        keys[keyid(key)] = key
    return Trust(keys, cfg.threshold)


def builtin_version(name: str) -> str | None:
    """The version of the driver `name` shipped with the agent (None: there is none)."""
    from edge_agent.sdk.registry import builtin

    point = builtin().get(name)
    if point is None:
        return None
    return point.dist.version if point.dist is not None else __version__


def has_builtin(name: str) -> bool:
    from edge_agent.sdk.registry import builtin

    return name in builtin()


# ---------------------------------------------------------------------- install
def install(path: Path, cfg: GatewayConfig, *, probation_s: float | None = None,
            force: bool = False) -> Outcome:
    gw = cfg.gateway.id
    store = store_for(cfg)
    label = path.name
    guess = label.split("-", 1)[0] if "-" in label else label
    data = read_bundle(path)
    trust = trust_from(cfg.drivers)
    with store.locked():
        with contextlib.suppress(OSError):  # still unwritable: the agent or a later try
            store.journal_missing()
        name_ok = guess in store.names()
        before = store.state(guess) if name_ok else DriverState(guess)
        if data is None:
            verdict: Accepted | Refused = Refused(
                "malformed", f"{label}: over {LIMITS.bundle_bytes} bytes",
                f"a bundle is at most {LIMITS.bundle_bytes // 2**20} MiB: keep only the "
                "driver's code in its folder and pack it again", guess)
        else:
            verdict = verify(data, trust=trust,
                             installed=before.installed(builtin_version(guess)),
                             agent_version=__version__, now=datetime.now(UTC), label=label)
            if not isinstance(verdict, Refused) and verdict.signed.name != guess:
                # the file name lied about the driver: judge against the right one
                before = store.state(verdict.signed.name)
                verdict = verify(data, trust=trust,
                                 installed=before.installed(
                                     builtin_version(verdict.signed.name)),
                                 agent_version=__version__, now=datetime.now(UTC),
                                 label=label)
        if not isinstance(verdict, Refused):
            verdict = _same_version_other_content(verdict, before, label)
        if isinstance(verdict, Refused):
            name = verdict.name or guess
            store.record({"event": "refused", "driver": name, "version": verdict.version,
                          "reason": verdict.text(), "hint": verdict.hint,
                          "keyids": list(verdict.keyids),
                          "previous": shown(before.active)})
            return Outcome(gw, name, verdict.version, shown(before.active), "refused",
                           f"{verdict.text()} (hint: {verdict.hint})" if verdict.hint
                           else verdict.text())
        s = verdict.signed
        why = before.failed.get(s.wheel_sha256)
        if why is not None and not force:  # the verdict this gateway gave it already
            return Outcome(gw, s.name, s.version, shown(before.active), "rolled_back",
                           f"{s.name} {s.version} was rolled back on this gateway: {why} "
                           "(hint: pack the fix as a new version, or install with --force)")
        if before.active == s.version and before.state != "failed":
            if before.state == "committed":
                return Outcome(gw, s.name, s.version, shown(before.previous),
                               "already_current")
            return Outcome(gw, s.name, s.version, shown(before.previous), "pending",
                           "in probation")
        _, after = store.install(verdict, probation_s if probation_s is not None
                                 else cfg.drivers.probation_s)
        warning = ""
        try:
            store.record(store.installed_entry(after))
        except OSError as exc:  # installed all the same: `current` is the truth
            warning = (f"installed, but {store.root}/journal.jsonl could not be written "
                       f"({exc.strerror}): the agent writes the entry (and sends its event) "
                       "once the store is writable again")
        else:
            with contextlib.suppress(OSError):  # unmarked: journaled again, at least once
                store.mark_journaled(s.name)
        store.crash("journaled")
    return Outcome(gw, s.name, s.version, shown(after.previous), "installed", warning)


def read_bundle(path: Path) -> bytes | None:
    """The bytes of bundle file `path`, None when over the size limit. Only a regular file
    is read (not a FIFO, a device or a folder), opened without blocking, at most the
    limit + 1 bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the bundle ({exc.strerror})",
                          "give the path of a .edgebundle file") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"{path}: not a regular file",
                              "give the path of a .edgebundle file")
        chunks, left = [], LIMITS.bundle_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the bundle ({exc.strerror})",
                          "give the path of a .edgebundle file") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return None if len(data) > LIMITS.bundle_bytes else data


def _same_version_other_content(verdict: Accepted, before: DriverState,
                                label: str) -> Accepted | Refused:
    """A version names one content (as in TUF): the installed version signed again with
    other bytes (or spelled otherwise, 1.1 for 1.1.0) is refused, never ignored."""
    s = verdict.signed
    if before.active is None or not same_version(before.active, s.version):
        return verdict
    known = before.hashes.get(before.active)
    if before.active == s.version and known in (None, s.wheel_sha256):
        return verdict
    spelled = "" if before.active == s.version else f" (as {before.active})"
    return Refused("same_version", f"{label}: version {s.version} is installed{spelled} with "
                   "other content", f"give the fix a new version (newer than {before.active})",
                   s.name, s.version, verdict.keyids)


def wait_outcome(cfg: GatewayConfig, first: Outcome, wait_s: float) -> Outcome:
    """After an install: the agent's probation verdict within `wait_s` (no agent: as is).
    A warning of the install (its journal entry not written) stays in `reason`."""
    final = _wait_outcome(cfg, first, wait_s)
    if first.outcome == "installed" and first.reason and first.reason not in final.reason:
        reason = f"{first.reason}; {final.reason}" if final.reason else first.reason
        final = replace(final, reason=reason)
    return final


def _wait_outcome(cfg: GatewayConfig, first: Outcome, wait_s: float) -> Outcome:
    if first.outcome not in ("installed", "pending"):
        return first
    store = store_for(cfg)
    if not agent_running(store.root):
        why = ("no agent runs: probation starts with it" if first.outcome == "installed"
               else "already active, no agent runs: probation starts with it")
        return Outcome(first.gateway, first.driver, first.version, first.previous,
                       "installed", why)
    deadline = time.monotonic() + wait_s
    while True:
        with store.locked():  # a rollback switches the symlink, then writes its reason
            st = store.state(first.driver)
        if st.active == first.version and st.state == "committed":
            return Outcome(first.gateway, first.driver, first.version, first.previous,
                           "installed")
        if st.active == first.version and st.state == "failed":
            return Outcome(first.gateway, first.driver, first.version, first.previous,
                           "rolled_back", st.reason)
        if st.active != first.version:
            return Outcome(first.gateway, first.driver, first.version, first.previous,
                           "rolled_back", st.reason or f"{shown(st.active)} is active now")
        if time.monotonic() >= deadline or not agent_running(store.root):
            return Outcome(first.gateway, first.driver, first.version, first.previous,
                           "pending", "probation did not end within --wait")
        time.sleep(0.2)


def rollback(cfg: GatewayConfig, name: str) -> Outcome:
    store = store_for(cfg)
    built_in = has_builtin(name)
    if name not in store.names() and not built_in:
        raise StoreError(f"no driver named {name!r} on this gateway (neither installed from "
                         "a bundle nor built in)",
                         "`edge-agent drivers list` shows the drivers and their versions")
    with store.locked():
        after = store.switch_back(name, "rolled back by hand (edge-agent drivers rollback)",
                                  builtin=built_in)
        store.record({"event": "rolled_back", "driver": name, "version": shown(after.active),
                      "previous": shown(after.rolled_back), "reason": after.reason})
    return Outcome(cfg.gateway.id, name, shown(after.active), shown(after.rolled_back),
                   "rolled_back", after.reason)


def listing(cfg: GatewayConfig) -> dict[str, object]:
    from edge_agent.sdk.registry import builtin

    store = store_for(cfg)
    out: list[dict[str, object]] = []
    bundled = set()
    for name in store.names():
        st = store.state(name)
        if st.active is None:
            continue
        bundled.add(name)
        out.append({"name": name, "version": st.active, "state": st.state,
                    "source": "bundle", "previous": shown(st.previous),
                    "versions": store.versions(name), "keyids": list(st.keyids)})
    for name, point in sorted(builtin().items()):
        if name not in bundled:
            dist = point.dist
            out.append({"name": name, "version": dist.version if dist else __version__,
                        "state": "committed", "source": "builtin", "previous": None,
                        "keyids": []})
    out.sort(key=lambda d: str(d["name"]))
    return {"gateway": cfg.gateway.id, "drivers": out}
