"""`edge-agent init`: a commented gateway YAML from options or questions.

Pure parts (`Answers`, `check_*`, `parse_device`, `render`) build the text; the command
asks for what is missing (on a terminal, or with --ask), writes the text to a temporary
file beside the target, loads it with the gateway config loader, and renames it into
place only if it loads: what `init` writes always passes `edge-agent validate` (secret
files aside). An existing file is never replaced without --force.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import click
import yaml
from pydantic import ValidationError

from edge_agent.config.loader import ConfigError, load_gateway_config
from edge_agent.config.models import OutboxConfig
from edge_agent.contract.files import write_atomic
from edge_agent.contract.topics import DISTRICT_RE, SEGMENT_RE
from edge_agent.sdk.commands import EXIT_CONFIG

NUMBER_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


def check_segment(flag: str, what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        value = value.strip()
        if not SEGMENT_RE.match(value):
            raise click.BadParameter(
                f"{value!r} is not a valid {what}: 1 to 64 of letters, digits, _ . -, "
                "starting with a letter or digit", param_hint=flag)
        return value
    return check


def check_district(value: str) -> str:
    value = value.strip()
    if not DISTRICT_RE.match(value):
        raise click.BadParameter(f"{value!r} is not a 6-digit admin code (e.g. 371312)",
                                 param_hint="--district")
    return value


def check_outbox(value: str) -> str:
    """`value` if it passes the config's own rule for `outbox.path`."""
    value = value.strip()
    try:
        OutboxConfig.model_validate({"path": value})
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise click.BadParameter(f"{value!r}: {message}", param_hint="--outbox") from None
    return value


def check_broker(value: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or port is None \
            or parts.username or parts.path not in ("", "/"):
        raise click.BadParameter(
            f"{value!r} is not mqtt://HOST:PORT or mqtts://HOST:PORT (no user or path; the "
            "password goes in --password-file)", param_hint="--broker")
    return value


def _scalar(value: str) -> str:
    if NUMBER_RE.match(value) or value in ("true", "false"):
        return value
    return json.dumps(value, ensure_ascii=False)


def _c(text: str, comment: str) -> str:
    """`text` with a comment aligned at column 34."""
    return f"{text:<33} # {comment}"


def parse_device(text: str) -> str:
    """`id=smoke-1,driver=simulated,kind=smoke,tcp.port=502` -> a one-line YAML mapping
    (a dotted key is a nested mapping)."""
    fields: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{part!r} is not KEY=VALUE (e.g. id=smoke-1,"
                                     "driver=simulated,kind=smoke)", param_hint="--device")
        where = fields
        *parents, last = key.strip().split(".")
        for name in parents:
            nested = where.setdefault(name, {})
            if not isinstance(nested, dict):
                raise click.BadParameter(f"{key!r}: {name!r} is set twice",
                                         param_hint="--device")
            where = nested
        where[last] = value.strip()
    if "id" not in fields or "driver" not in fields:
        raise click.BadParameter(f"{text!r} needs at least id= and driver=",
                                 param_hint="--device")
    check_segment("--device", "device id")(str(fields["id"]))

    def flow(mapping: dict[str, object]) -> str:
        items = (f"{k}: {flow(v) if isinstance(v, dict) else _scalar(str(v))}"
                 for k, v in mapping.items())
        return "{" + ", ".join(items) + "}"

    return flow(fields)


@dataclass
class Answers:
    gateway: str
    district: str
    street: str
    community: str
    broker: str
    password_file: Path
    ca_file: Path | None = None
    name: str | None = None
    outbox: Path = Path("/var/lib/edge-agent/outbox.db")
    #: maintainers' public key files trusted for driver bundles
    trusted_keys: list[Path] = field(default_factory=list)
    #: one-line YAML mappings (`parse_device`) or whole `- id: ...` blocks (discovery)
    devices: list[str] = field(default_factory=list)


def _drivers(keys: Sequence[Path]) -> list[str]:
    """The `drivers:` section: who may sign driver updates (commented out without keys)."""
    head = _c("drivers:", "signed driver updates (docs/drivers-updates.md)")
    if not keys:
        return [f"# {head}", "#   trusted_keys:                 # maintainers' public keys "
                "(edge-agent drivers keygen)", "#     - file: /etc/edge-agent/maintainers/"
                "ops-1.pub", "#   probation_s: 60", ""]
    return [head, "  trusted_keys:                   # maintainers' public keys "
            "(edge-agent drivers keygen)",
            *(f"    - file: {_scalar(str(k))}" for k in keys),
            "  probation_s: 60                # a new driver version must run this long "
            "to stay", ""]


def render(a: Answers) -> str:
    """The commented YAML. Every value was checked by the `check_*` functions."""
    tls = urlsplit(a.broker).scheme == "mqtts"
    name = _c(f"  name: {_scalar(a.name)}" if a.name else "  # name: 1号网关",
              "shown on the status page (optional)")
    lines = [
        "# Gateway configuration written by `edge-agent init`.",
        "# Check it before starting anything:  edge-agent validate THIS_FILE",
        "# Every key is described in docs/config.md. Booleans are true/false; quote codes;",
        "# secrets are never written here, only the files holding them ({file: PATH}).",
        "",
        "gateway:",
        _c(f"  id: {a.gateway}", "unique in the district; also its MQTT user name"),
        _c(f'  district: "{a.district}"', "6-digit admin code of the district"),
        _c(f'  street: "{a.street}"', "street (township) code"),
        _c(f'  community: "{a.community}"', "community code"),
        name,
        "",
        _c("uplink:", "how events reach the district collector"),
        _c(f"  broker: {a.broker}", "the district broker (provision prints it)"),
        _c(f"  username: {a.gateway}", "the broker user is the gateway id"),
        _c(f"  password: {{file: {_scalar(str(a.password_file))}}}",
           "0600 file from edge-collector provision"),
    ]
    if tls:
        ca = a.ca_file or Path("/etc/edge-agent/ca.pem")
        lines += ["  tls:",
                  _c(f"    ca_file: {_scalar(str(ca))}", "the CA of the broker's certificate")]
    lines += [
        "  ack_timeout_s: 10               # no collector ack within this: the batch is "
        "sent again",
        "",
        "outbox:                          # events wait here until the collector acks them",
        _c(f"  path: {_scalar(str(a.outbox))}", "the outbox database (SQLite)"),
        "  max_bytes: 256MiB               # when full: oldest telemetry goes first, alarms "
        "never",
        "",
        "status_page:                     # LAN page for property staff (docs/status.md)",
        "  enabled: true",
        "  listen: 0.0.0.0:8080            # 127.0.0.1:8080 for this box only",
        "",
        *_drivers(a.trusted_keys),
        "heartbeat_s: 60                  # gateway.heartbeat event interval",
        "log_level: info                  # debug | info | warning | error",
        "",
    ]
    if not a.devices:
        lines += ["devices: []   # add devices: edge-agent discover ..., docs/config.md"]
    else:
        lines.append("devices:                         # each: id, driver, then the "
                     "driver's own options")
        for dev in a.devices:
            lines += [f"  - {dev}"] if dev.startswith("{") else dev.splitlines()
    return "\n".join(lines) + "\n"


def discovered_cameras(target: str, timeout_s: float) -> list[str]:
    """`edge-agent discover cameras --target TARGET`, run as a child (the driver's command,
    never imported here); its `- id:` blocks."""
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "discover", "cameras",
                           "--target", target, "--timeout", str(timeout_s)],
                          capture_output=True, text=True, check=False, timeout=timeout_s + 60)
    if proc.returncode != 0:
        raise click.BadParameter(proc.stderr.strip() or f"exit {proc.returncode}",
                                 param_hint="--discover-cameras")
    blocks: list[str] = []
    for line in proc.stdout.splitlines():
        if line.startswith("  - "):
            blocks.append(line)
        elif line.startswith("    ") and blocks:
            blocks[-1] += "\n" + line
    return blocks


def check_out(out: Path, force: bool) -> None:
    """Before asking anything: can `out` be written at all?"""
    if out.exists() and not force:
        raise click.UsageError(f"--out: {out} exists; pass --force to replace it")
    folder = out.parent
    if not folder.is_dir():
        raise click.UsageError(f"--out: the folder {folder} does not exist (hint: mkdir -p "
                               f"{folder}, or write somewhere else)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise click.UsageError(f"--out: cannot write in {folder} (hint: run as a user who may, "
                               "or write somewhere else)")


def write_checked(out: Path, text: str, force: bool) -> None:
    """Write `text` to `out` only if it loads as a gateway config; exit 2 otherwise."""
    check_out(out, force)

    def loads(tmp: Path) -> None:
        try:
            load_gateway_config(tmp)
        except ConfigError as err:
            for issue in err.issues:
                click.echo(str(issue).replace(str(tmp), str(out)), err=True)
            click.echo(f"{out}: not written", err=True)
            sys.exit(EXIT_CONFIG)

    try:
        write_atomic(out, text, check=loads)
    except OSError as exc:
        raise click.UsageError(f"--out: cannot write {out}: {exc.strerror or exc}") from None


def ask(value: str | None, question: str, check: Callable[[str], str], interactive: bool,
        flag: str, default: str | None = None) -> str:
    """`value` checked, or the answer to `question` when it is missing and we may ask."""
    if value is not None:
        return check(value)
    if not interactive:
        if default is not None:
            return check(default)
        raise click.UsageError(f"{flag} is missing (or run on a terminal / with --ask to be "
                               "asked)")
    answer: str = click.prompt(question, default=default, value_proc=check)
    return answer


def check_new_ids(devices: Sequence[str], cameras: list[str]) -> list[str]:
    """`cameras` (discovered) if none takes the id of a --device; else exit 2 naming it."""
    given = {entry.get("id") for d in devices
             if isinstance(entry := yaml.safe_load(d), dict)}
    for block in cameras:
        entry = yaml.safe_load(block)
        found = entry[0].get("id") if isinstance(entry, list) and entry else None
        if found in given:
            raise click.BadParameter(f"id `{found}` is also what discovery calls a camera; "
                                     "give the --device another id", param_hint="--device")
    return cameras


def ask_devices(devices: Sequence[str], interactive: bool) -> list[str]:
    found = [parse_device(d) for d in devices]
    if interactive and not devices:
        while True:
            text = click.prompt("Device (id=...,driver=...,...; empty to finish)",
                                default="", show_default=False)
            if not text.strip():
                return found
            try:
                found.append(parse_device(text))
            except click.BadParameter as exc:
                click.echo(f"Error: {exc.format_message()}", err=True)
    return found
