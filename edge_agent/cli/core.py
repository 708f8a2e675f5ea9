"""The core commands of `edge-agent`: `run`, `validate` and the `discover` group.

Every other command comes from a driver through the `edge_agent.commands` entry points
(`edge_agent.cli.lazy`): `simulate` from `drivers.modbus`, `discover cameras` and
`simulate-camera` from `drivers.onvif`. Nothing here imports a driver.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click

from edge_agent import __version__
from edge_agent.cli.lazy import LazyGroup
from edge_agent.config.loader import ConfigError, ConfigIssue, check_secrets, load_gateway_config
from edge_agent.config.models import GatewayConfig, SecretError
from edge_agent.contract import logs
from edge_agent.sdk.commands import EXIT_CONFIG, exit_config_error


def _load_or_exit(path: Path) -> GatewayConfig:
    try:
        return load_gateway_config(path)
    except ConfigError as err:
        exit_config_error(err, str(path))


def _secrets_or_exit(path: Path, cfg: GatewayConfig, *, check_keys: bool = False
                     ) -> list[ConfigIssue]:
    """Check the secret and TLS files the config names (reading none); exit 2 on errors.
    Returns the warnings (a secret others may read, TLS verification off, a trusted key
    file that holds no key with `check_keys`, ...)."""
    errors, warnings = check_secrets(path, cfg)
    if check_keys and cfg.drivers.trusted_keys:
        from edge_agent.bundles.keys import trusted_key_issues  # cryptography: only here

        # A warning, not an error: the devices need no key (the unit's ExecStartPre runs
        # validate), but every driver install is refused until the file is fixed.
        warnings += trusted_key_issues(path, cfg.drivers)
    for issue in errors:
        click.echo(str(issue), err=True)
    if errors:
        click.echo(f"{len(errors)} problem(s) with the secrets of {path}; nothing was "
                   "started.", err=True)
        sys.exit(EXIT_CONFIG)
    return warnings


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="edge-agent")
def main() -> None:
    """Edge agent for a community gateway box."""


@main.group(cls=LazyGroup, prefix=("discover",))
def discover() -> None:
    """Find devices on the network and print ready-to-paste YAML.

    One subcommand per kind of device, each from its driver."""


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--skip-secrets", is_flag=True,
              help="check the YAML only, not the secret and TLS files it names (for a "
                   "config checked away from its gateway)")
def validate(path: Path, skip_secrets: bool) -> None:
    """Check a gateway YAML file completely, touching no device. Exit 0 ok, 2 errors.

    The secret and TLS files it names are checked too (exist, regular file, size,
    readable by this user; a warning if group or others may read them), without
    reading them: run it as the agent's user."""
    cfg = _load_or_exit(path)
    warnings = [] if skip_secrets else _secrets_or_exit(path, cfg, check_keys=True)
    for issue in warnings:
        click.echo(issue.as_warning(), err=True)
    tail = f", {len(warnings)} warning(s)" if warnings else ""
    click.echo(f"{path}: ok: gateway {cfg.gateway.id}, {len(cfg.devices)} device(s){tail}")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="gateway YAML file")
def run(config_path: Path) -> None:
    """Run the agent until SIGINT/SIGTERM."""
    # Until the event loop installs its own handler, SIGTERM means a plain clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cfg = _load_or_exit(config_path)
    warnings = _secrets_or_exit(config_path, cfg)
    logs.configure(cfg.log_level)
    log = logs.get_logger("edge_agent.cli")
    for issue in warnings:
        event = "tls_verification_off" if issue.key.endswith("insecure_skip_verify") \
            else "config_warning"
        log.warning(event, path=f"{issue.file}:{issue.line}", key=issue.key,
                    detail=issue.message, hint=issue.hint)
    from edge_agent.agent import run_agent
    from edge_agent.outbox import OutboxError

    try:
        asyncio.run(run_agent(cfg))
    except (SecretError, OutboxError, ValueError) as exc:
        logs.get_logger("edge_agent.cli").error("agent_cannot_start", error=str(exc))
        click.echo(f"edge-agent: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("gateway.yaml"), show_default=True, help="the YAML to write")
@click.option("--force", is_flag=True, help="replace an existing --out file")
@click.option("--ask/--no-ask", "ask", default=None,
              help="ask for what the options do not give (default: only on a terminal)")
@click.option("--id", "gateway", help="gateway id (its MQTT user name too)")
@click.option("--district", help="6-digit admin code")
@click.option("--street", help="street (township) code")
@click.option("--community", help="community code")
@click.option("--name", help="name shown on the status page")
@click.option("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
@click.option("--password-file", help="the MQTT password file on this box",
              default=None)
@click.option("--ca-file", default=None, help="CA of the broker certificate (mqtts)")
@click.option("--outbox", default="/var/lib/edge-agent/outbox.db", show_default=True,
              help="the outbox database")
@click.option("--trusted-key", "trusted_keys", multiple=True, metavar="FILE",
              help="a maintainer's public key file (`edge-agent drivers keygen`): driver "
                   "bundles it signs may be installed (repeatable; docs/drivers-updates.md)")
@click.option("--device", "devices", multiple=True, metavar="KEY=VALUE,...",
              help="a device: id=...,driver=...,OPTION=... (repeatable; a.b=... nests)")
@click.option("--discover-cameras", "camera_target", metavar="TARGET",
              help="add the ONVIF cameras answering a WS-Discovery probe (HOST:PORT or "
                   "A.B.C.D-E:PORT, as `discover cameras --target`)")
@click.option("--discover-timeout", type=click.FloatRange(0.1, 60), default=3.0,
              show_default=True, help="seconds to wait for the cameras' answers")
def init(out: Path, force: bool, ask: bool | None, gateway: str | None, district: str | None,
         street: str | None, community: str | None, name: str | None, broker: str | None,
         password_file: str | None, ca_file: str | None, outbox: str,
         trusted_keys: tuple[str, ...], devices: tuple[str, ...], camera_target: str | None,
         discover_timeout: float) -> None:
    """Write a commented gateway YAML from the options, asking for what is missing.

    What it writes passes `edge-agent validate`; an existing file is kept unless --force."""
    from edge_agent.cli import init_config as ic

    ic.check_out(out, force)
    interactive = sys.stdin.isatty() if ask is None else ask
    gw = ic.ask(gateway, "Gateway id", ic.check_segment("--id", "gateway id"), interactive,
                "--id")
    answers = ic.Answers(
        gateway=gw,
        district=ic.ask(district, "District (6-digit admin code)", ic.check_district,
                        interactive, "--district"),
        street=ic.ask(street, "Street code", ic.check_segment("--street", "street code"),
                      interactive, "--street"),
        community=ic.ask(community, "Community code",
                         ic.check_segment("--community", "community code"), interactive,
                         "--community"),
        broker=ic.ask(broker, "Broker URL", ic.check_broker, interactive, "--broker"),
        password_file=Path(ic.ask(password_file, "MQTT password file", str.strip, interactive,
                                  "--password-file", "/etc/edge-agent/mqtt-password")),
        ca_file=Path(ca_file) if ca_file else None,
        name=name,
        outbox=Path(ic.check_outbox(outbox)),
        trusted_keys=[Path(k) for k in trusted_keys],
        devices=ic.ask_devices(devices, interactive),
    )
    if camera_target is not None:
        answers.devices += ic.check_new_ids(answers.devices,
                                            ic.discovered_cameras(camera_target,
                                                                  discover_timeout))
    ic.write_checked(out, ic.render(answers), force)
    click.echo(f"{out}: written (gateway {answers.gateway}, {len(answers.devices)} "
               f"device(s)); check it with: edge-agent validate {out}")
