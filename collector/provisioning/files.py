"""The provisioning directory and the registry on disk: locked, atomic read-modify-write.

Every change runs under an exclusive `flock` on `DIR/.lock` (two provisions at once:
the second waits, then reads what the first wrote) and replaces each file atomically
(temporary file in the same directory, fsync, rename, fsync of the directory). A replaced
file keeps the mode and group of the one it replaces (`chgrp mosquitto passwd acl` once
and it stays so). Order of writes: the box's password file, `passwd`, the registry, the
`acl`; the ACL is derived from the other two and rewritten by every change.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from collector.mosquitto_files import CollectorAccount, mosquitto_hash
from collector.provisioning.plan import (
    BoxFiles,
    Conflict,
    FileProblem,
    describe,
    passwd_hashes,
    passwd_set,
    provisioned,
    provisioning_acl,
    registry_set,
    same_place,
)
from collector.registry import GatewaysFile, Place
from edge_agent.contract import files
from edge_agent.contract.logs import get_logger
from edge_agent.contract.settings import ConfigError, load_model

if TYPE_CHECKING:
    from collector.config import CollectorConfig

log = get_logger("collector.provisioning")

#: Mode of `passwd` and `acl` when created (the broker's group may read them).
SHARED_MODE = 0o640
PASSWORD_BYTES = 32


def write_atomic(path: Path, text: str, mode: int = SHARED_MODE,
                 check: Callable[[Path], None] | None = None) -> None:
    """Replace `path` by `text` atomically; `check(tmp)` may refuse the new file first.
    An existing file's mode and group are kept."""
    files.write_atomic(path, text, mode=mode, keep_mode=True, check=check)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise FileProblem(f"cannot read {path}: {exc}") from None


def _places(path: Path) -> dict[str, Place]:
    if not path.exists():
        return {}
    try:
        return dict(load_model(path, GatewaysFile).gateways)
    except ConfigError as exc:
        raise FileProblem(f"the registry {path} does not load:\n{exc}",
                          "fix it by hand first: nothing was changed") from None


def _check_registry(tmp: Path) -> None:
    try:
        load_model(tmp, GatewaysFile)
    except ConfigError as exc:  # a bug in the text edit: never replace a good registry
        raise FileProblem(f"the edited registry would not load:\n{exc}",
                          "nothing was changed; please report this") from None


@dataclass(frozen=True)
class Provisioned:
    gateway: str
    place: Place | None
    #: a new password was issued (False: the gateway was already provisioned there)
    issued: bool
    password_file: Path | None
    box: BoxFiles | None
    moved_from: Place | None = None


@dataclass
class Provisioning:
    """One district's provisioning: the directory, the registry file, the broker URL."""

    dir: Path
    registry: Path
    broker_url: str
    collectors: Sequence[CollectorAccount] = field(default_factory=tuple)

    @classmethod
    def from_config(cls, cfg: CollectorConfig) -> Provisioning | None:
        if cfg.provisioning is None or cfg.gateways is None:
            return None
        prov = cfg.provisioning
        return cls(prov.dir, cfg.gateways.file, prov.broker_url,
                   [CollectorAccount(c.username, c.collector_id) for c in prov.collectors])

    @property
    def passwd(self) -> Path:
        return self.dir / "passwd"

    @property
    def acl(self) -> Path:
        return self.dir / "acl"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(files.locked(self.dir))
        except OSError as exc:
            raise FileProblem(f"provisioning.dir: cannot use {self.dir}: {exc.strerror}",
                              "create it, writable by this user") from None
        with stack:
            yield

    def gateways(self) -> dict[str, tuple[Place, bool]]:
        """Every gateway the registry places, and whether it is provisioned (holds a
        password hash here). Reads without the lock (each file is replaced whole)."""
        hashes = passwd_hashes(_read(self.passwd))
        return {gw: (place, gw in hashes) for gw, place in sorted(_places(self.registry).items())}

    def accounts(self) -> dict[str, tuple[str, Place]]:
        """The provisioned gateways: `id -> (password hash, place)` (for a managed broker)."""
        hashes = passwd_hashes(_read(self.passwd))
        return {gw: (hashes[gw], place) for gw, place
                in provisioned(_places(self.registry), hashes).items()}

    def provision(self, gateway: str, place: Place, *, out_dir: Path, move: bool = False,
                  rotate: bool = False) -> Provisioned:
        with self.locked():
            places = _places(self.registry)
            passwd_text = _read(self.passwd)
            hashes = passwd_hashes(passwd_text)
            before = places.get(gateway)
            if before is not None and not same_place(before, place) and not move:
                raise Conflict(f"GATEWAY: {gateway!r} is already registered at "
                               f"{describe(before)}",
                               "pass --move to move it (its box then needs the new codes), or "
                               "choose another id")
            if before is None and (gateway in hashes or gateway in self._collector_names()):
                raise Conflict(f"GATEWAY: {gateway!r} is a broker account provisioning does "
                               "not manage (a collector's?)",
                               f"choose another id, or remove its line from {self.passwd}")
            issue = rotate or gateway not in hashes
            password_path = None
            if issue:
                password = secrets.token_urlsafe(PASSWORD_BYTES)
                password_path = self._write_box_password(out_dir, gateway, password)
                passwd_text = passwd_set(passwd_text, gateway, mosquitto_hash(password))
                write_atomic(self.passwd, passwd_text)
            if before is None or not same_place(before, place):
                write_atomic(self.registry,
                             registry_set(_read(self.registry), gateway, place),
                             mode=0o644, check=_check_registry)
                places[gateway] = place
            self._write_acl(places, passwd_hashes(passwd_text))
        moved = before if before is not None and not same_place(before, place) else None
        log.info("gateway_provisioned", gateway=gateway, district=place.district,
                 street=place.street, community=place.community, new_password=issue,
                 moved=moved is not None)
        return Provisioned(gateway, place, issue, password_path,
                           BoxFiles(gateway, place, self.broker_url), moved)

    def revoke(self, gateway: str) -> Place:
        """Remove the gateway's password, rights and registry entry; its former place."""
        with self.locked():
            places = _places(self.registry)
            passwd_text = _read(self.passwd)
            if gateway not in places:  # a passwd line alone may be a collector's account
                raise Conflict(f"GATEWAY: {gateway!r} is not provisioned (not in the "
                               "registry)", "edge-collector provision --list shows who is")
            passwd_text = passwd_set(passwd_text, gateway, None)
            write_atomic(self.passwd, passwd_text)
            write_atomic(self.registry, registry_set(_read(self.registry), gateway, None),
                         mode=0o644, check=_check_registry)
            place = places.pop(gateway)
            self._write_acl(places, passwd_hashes(passwd_text))
        log.info("gateway_revoked", gateway=gateway)
        return place

    def _collector_names(self) -> set[str]:
        return {c.username for c in self.collectors}

    def _write_acl(self, places: dict[str, Place], hashes: dict[str, str]) -> None:
        write_atomic(self.acl, provisioning_acl(provisioned(places, hashes), self.collectors))

    @staticmethod
    def _write_box_password(out_dir: Path, gateway: str, password: str) -> Path:
        path = out_dir / f"{gateway}.mqtt-password"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a new file: 0600 from its first byte
            write_atomic(path, password + "\n", mode=0o600)
        except OSError as exc:
            raise FileProblem(f"--out: cannot write {path}: {exc.strerror}") from None
        return path
