"""The inventory: which gateways exist, where they are, and how to reach them over SSH.

Loaded with the project's strict YAML loader (`edge_agent.contract.settings`): YAML 1.2
scalars only, unknown keys and duplicate ids refused, every issue at once as
`FILE:LINE:COL: key: message (hint)`. Relative file paths (client key, known_hosts) are
taken from the inventory's folder; `~` is expanded. Selection (`select`) is pure: a
district / street / community code or name, a gateway id, or `all`; gateways come in
inventory order, each once.

Invariants: a loaded `Inventory` has unique gateway ids and admin codes that nest
(a street's code starts with its district's, a community's with its street's); host key
checking is strict unless the file says otherwise in so many words (`trust_on_first_use`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import Field, model_validator

from edge_agent.contract.settings import (
    SEGMENT,
    AdminCode,
    ConfigError,
    Strict,
    load_model,
    read_yaml,
)
from edge_fleet.errors import InventoryError, SelectorError

#: The box layout of docs/deploy.md.
DEFAULT_EDGE_AGENT = "/opt/community-data/bin/edge-agent"
DEFAULT_GATEWAY_CONFIG = "/etc/edge-agent/gateway.yaml"
DEFAULT_LOGS_COMMAND = "journalctl -u edge-agent -n {lines} --no-pager -o cat"

RemotePath = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^/[^\x00\n]*$",
                                  description="an absolute path on the gateway box")]
Host = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:_-]+$")]
Port = Annotated[int, Field(ge=1, le=65535)]
Name = Annotated[str, Field(min_length=1, max_length=128)]


class Defaults(Strict):
    """What every gateway uses unless it says otherwise."""

    user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")] = "root"
    port: Port = 22
    edge_agent: RemotePath = DEFAULT_EDGE_AGENT
    config: RemotePath = DEFAULT_GATEWAY_CONFIG
    status_port: Port = 8080
    temp_dir: RemotePath = "/tmp"


class SshSettings(Strict):
    client_key: Path = Field(description="private key file of the maintainer (OpenSSH format)")
    known_hosts: Path = Field(description="OpenSSH known_hosts file with every gateway's key")
    trust_on_first_use: bool = Field(
        default=False, description="accept (and never record) unknown host keys: for labs only")
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    gateway_timeout_s: float = Field(default=300.0, gt=0, le=7200,
                                     description="whole push to one gateway, upload included")
    logs_command: str = Field(default=DEFAULT_LOGS_COMMAND, min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _lines_placeholder(self) -> SshSettings:
        if "{lines}" not in self.logs_command:
            raise ValueError("logs_command must contain {lines} (the number of lines asked)")
        return self


class GatewayEntry(Strict):
    id: Annotated[str, Field(pattern=SEGMENT)]
    host: Host
    port: Port | None = None
    user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")] | None = None
    edge_agent: RemotePath | None = None
    config: RemotePath | None = None
    status_port: Port | None = None


class Community(Strict):
    code: AdminCode = Field(pattern=r"^[0-9]{12}$", description="12-digit admin code")
    name: Name | None = None
    gateways: list[GatewayEntry] = Field(default_factory=list)


class Street(Strict):
    code: AdminCode = Field(pattern=r"^[0-9]{9}$", description="9-digit admin code")
    name: Name | None = None
    communities: list[Community] = Field(default_factory=list)

    @model_validator(mode="after")
    def _nested(self) -> Street:
        for c in self.communities:
            if not c.code.startswith(self.code):
                raise ValueError(f"community {c.code} is not in street {self.code} "
                                 "(its code must start with the street's)")
        return self


class District(Strict):
    code: AdminCode = Field(pattern=r"^[0-9]{6}$", description="6-digit admin code")
    name: Name | None = None
    streets: list[Street] = Field(default_factory=list)

    @model_validator(mode="after")
    def _nested(self) -> District:
        for s in self.streets:
            if not s.code.startswith(self.code):
                raise ValueError(f"street {s.code} is not in district {self.code} "
                                 "(its code must start with the district's)")
        return self


class InventoryFile(Strict):
    defaults: Defaults = Defaults()
    ssh: SshSettings
    districts: list[District] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> InventoryFile:
        seen: set[str] = set()
        for d in self.districts:
            for s in d.streets:
                for c in s.communities:
                    for g in c.gateways:
                        if g.id in seen:
                            raise ValueError(f"gateway id {g.id!r} is used twice")
                        seen.add(g.id)
        return self


@dataclass(frozen=True)
class Gateway:
    """One gateway with every default applied: what a push needs to reach it."""

    id: str
    host: str
    port: int
    user: str
    edge_agent: str
    config: str
    status_port: int
    temp_dir: str
    district: str
    street: str
    community: str

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SshOptions:
    client_key: Path
    known_hosts: Path
    trust_on_first_use: bool
    connect_timeout_s: float
    gateway_timeout_s: float
    logs_command: str


@dataclass(frozen=True)
class Inventory:
    path: Path
    ssh: SshOptions
    gateways: tuple[Gateway, ...]
    #: code or name (lowercased) -> ids of the gateways under it, in inventory order
    groups: dict[str, tuple[str, ...]]

    def gateway(self, gateway_id: str) -> Gateway:
        for g in self.gateways:
            if g.id == gateway_id:
                return g
        raise SelectorError(f"no gateway {gateway_id!r} in {self.path} "
                            f"(hint: {_known(self)})")

    def select(self, selector: str) -> tuple[Gateway, ...]:
        """The gateways `selector` names: `all`, a gateway id, or a district / street /
        community code or name (case-insensitive). SelectorError when it names none."""
        key = selector.strip()
        if key == "all":
            return self.gateways
        if any(g.id == key for g in self.gateways):
            return (self.gateway(key),)
        ids = self.groups.get(key.lower())
        if ids is None:
            raise SelectorError(f"--to {selector!r} names no gateway, district, street or "
                                f"community of {self.path} (hint: {_known(self)})")
        wanted = set(ids)
        return tuple(g for g in self.gateways if g.id in wanted)


def _known(inv: Inventory) -> str:
    codes = sorted({k for k in inv.groups if k.isdigit()})
    shown = ", ".join(codes[:6]) + (" …" if len(codes) > 6 else "")
    return f"use `all`, a gateway id, or a code such as {shown}" if codes else "use `all`"


def load_inventory(path: Path) -> Inventory:
    """Read and check the whole inventory before any connection; InventoryError with
    every issue (FILE:LINE:COL) otherwise."""
    try:
        raw = load_model(path, InventoryFile)
    except ConfigError as err:
        raise InventoryError(str(err)) from None
    except OSError as err:
        raise InventoryError(f"{path}: cannot read the inventory: {err.strerror} "
                             "(hint: give it with --inventory FILE)") from None
    return _resolve(path, raw)


def _local(base: Path, p: Path) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else (base / p)


def _resolve(path: Path, raw: InventoryFile) -> Inventory:
    base = path.resolve().parent
    d = raw.defaults
    gateways: list[Gateway] = []
    groups: dict[str, list[str]] = {}

    def add(keys: tuple[str | None, ...], gid: str) -> None:
        for k in keys:
            if k:
                groups.setdefault(k.lower(), []).append(gid)

    for dist in raw.districts:
        for street in dist.streets:
            for comm in street.communities:
                for e in comm.gateways:
                    gateways.append(Gateway(
                        id=e.id, host=e.host, port=e.port or d.port, user=e.user or d.user,
                        edge_agent=e.edge_agent or d.edge_agent, config=e.config or d.config,
                        status_port=e.status_port or d.status_port,
                        temp_dir=str(PurePosixPath(d.temp_dir)),
                        district=dist.code, street=street.code, community=comm.code))
                    add((dist.code, dist.name, street.code, street.name, comm.code, comm.name),
                        e.id)
    s = raw.ssh
    options = SshOptions(client_key=_local(base, s.client_key),
                         known_hosts=_local(base, s.known_hosts),
                         trust_on_first_use=s.trust_on_first_use,
                         connect_timeout_s=s.connect_timeout_s,
                         gateway_timeout_s=s.gateway_timeout_s, logs_command=s.logs_command)
    _check_local_files(path, options)
    return Inventory(path=path, ssh=options, gateways=tuple(gateways),
                     groups={k: tuple(dict.fromkeys(v)) for k, v in groups.items()})


def _check_local_files(path: Path, ssh: SshOptions) -> None:
    """The key and known_hosts files must be there before any connection is tried."""
    issues = []
    doc = read_yaml(path)
    for key, file, hint in (
            ("client_key", ssh.client_key,
             "create one with ssh-keygen -t ed25519 -f FILE and install FILE.pub on the boxes"),
            ("known_hosts", ssh.known_hosts,
             "collect the gateways' host keys (ssh-keyscan HOST, checked against the box's "
             "own fingerprint) into this file")):
        if not file.is_file():
            issues.append(doc.at(("ssh", key), f"{file} is not a readable file", hint))
    if issues:
        raise InventoryError(str(ConfigError(issues)))
