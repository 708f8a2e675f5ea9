"""`edge-agent`: run, validate (and, as drivers land, simulate and discover)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edge_agent import __version__
from edge_agent.config.loader import ConfigError, ConfigIssue, check_secrets, load_gateway_config
from edge_agent.config.models import GatewayConfig, SecretError
from edge_agent.contract import logs

if TYPE_CHECKING:
    from drivers.modbus.simulator.server import SimulateConfig

EXIT_CONFIG = 2


def _load_or_exit(path: Path) -> GatewayConfig:
    try:
        return load_gateway_config(path)
    except ConfigError as err:
        for issue in err.issues:
            click.echo(str(issue), err=True)
        click.echo(f"{len(err.issues)} problem(s) in {path}; nothing was started.", err=True)
        sys.exit(EXIT_CONFIG)


def _secrets_or_exit(path: Path, cfg: GatewayConfig) -> list[ConfigIssue]:
    """Check the secret and TLS files the config names (reading none); exit 2 on errors.
    Returns the warnings (a secret others may read, TLS verification off, ...)."""
    errors, warnings = check_secrets(path, cfg)
    for issue in errors:
        click.echo(str(issue), err=True)
    if errors:
        click.echo(f"{len(errors)} problem(s) with the secrets of {path}; nothing was "
                   "started.", err=True)
        sys.exit(EXIT_CONFIG)
    return warnings


def _warning_text(issue: ConfigIssue) -> str:
    head = f"{issue.file}:{issue.line}:{issue.col}: {issue.key}: " if issue.key else ""
    hint = f" (hint: {issue.hint})" if issue.hint else ""
    return f"{head}warning: {issue.message}{hint}"


@click.group()
@click.version_option(__version__, prog_name="edge-agent")
def main() -> None:
    """Edge agent for a community gateway box."""


@main.group()
def discover() -> None:
    """Find devices on the network and print ready-to-paste YAML."""


@discover.command("cameras")
@click.option("--target", required=True, metavar="HOST:PORT",
              help="where to send the WS-Discovery probe: HOST:PORT, A.B.C.D-E:PORT (one "
                   "probe per address) or, with --multicast, 239.255.255.250:3702")
@click.option("--multicast", is_flag=True, help="allow a multicast group as --target")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 60), default=3.0,
              show_default=True, help="seconds to wait for answers")
@click.option("--username", default="admin", show_default=True, help="user for the YAML")
@click.option("--secrets-dir", default="/etc/edge-agent/secrets", show_default=True,
              help="where the YAML's password files are expected")
@click.option("--bind", default=None, help="local address to send from (default 127.0.0.1 "
              "for a loopback target, else all)")
def discover_cameras(target: str, multicast: bool, timeout_s: float, username: str,
                     secrets_dir: str, bind: str | None) -> None:
    """WS-Discovery probe for ONVIF cameras; prints `devices:` YAML on stdout."""
    from drivers.onvif.discovery import DiscoveryError, discover, parse_target, to_yaml

    try:
        parsed = parse_target(target, multicast=multicast)
    except DiscoveryError as err:
        raise click.BadParameter(str(err), param_hint="--target") from None
    logs.configure("warning")  # JSON on stderr: stdout is the YAML
    try:
        found = asyncio.run(discover(parsed, timeout_s, bind=bind))
    except OSError as err:
        click.echo(f"discover: cannot send the probe to {target}: {err.strerror or err}",
                   err=True)
        sys.exit(1)
    click.echo(to_yaml(found, username, secrets_dir), nl=False)
    click.echo(f"{len(found)} camera(s) answered {target}", err=True)


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
    warnings = [] if skip_secrets else _secrets_or_exit(path, cfg)
    for issue in warnings:
        click.echo(_warning_text(issue), err=True)
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
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="simulator YAML: servers, units, scenarios "
                   "(see drivers/modbus/simulator/config.py)")
@click.option("--gateway", "gateway_path", type=click.Path(path_type=Path),
              help="serve every Modbus TCP device of this gateway config")
@click.option("--profile", help="profile name (or file) to serve, with --tcp or --rtu")
@click.option("--tcp", help="[HOST:]PORT or [HOST:]FIRST-LAST, one server per port; "
                            "HOST defaults to 127.0.0.1")
@click.option("--rtu", help="serial port or pty to serve on (e.g. one end of a socat pair)")
@click.option("--baudrate", type=click.IntRange(300, 921600), default=9600, show_default=True)
@click.option("--parity", type=click.Choice(["N", "E", "O"]), default="N", show_default=True)
@click.option("--stopbits", type=click.Choice(["1", "2"]), default="1", show_default=True)
@click.option("--pace", is_flag=True,
              help="RTU: delay replies by their time on the wire at --baudrate (for ptys)")
@click.option("--units", default="1", show_default=True, help="unit ids, e.g. 1-4,7")
@click.option("--set", "sets", multiple=True, metavar="POINT=VALUE",
              help="an initial value (repeatable)")
@click.option("--scenario", "scenarios", multiple=True, metavar="NAME[@TARGET,...]",
              help="play configs/scenarios/NAME.yaml on device ids or unit ids "
                   "(default: every unit of its profile); repeatable")
@click.option("--loop/--once", default=None,
              help="repeat the scenarios, or play them once (default: as each file says)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None, help="default: the config's, else info")
def simulate(config_path: Path | None, gateway_path: Path | None, profile: str | None,
             tcp: str | None, rtu: str | None, baudrate: int, parity: str, stopbits: str,
             pace: bool, units: str, sets: tuple[str, ...], scenarios: tuple[str, ...],
             loop: bool | None, log_level: str | None) -> None:
    """Serve device profiles from Modbus simulators, playing scenarios, until SIGINT/SIGTERM.

    \b
    edge-agent simulate --profile smoke-detector --tcp 15021 --units 1-4 --scenario fire@2
    edge-agent simulate --gateway configs/gateway.demo.yaml --scenario leak
    edge-agent simulate --config simulate.yaml
    """
    from pydantic import ValidationError

    from drivers.modbus.simulator import server as simulator
    try:
        cfg, skipped = _simulate_config(config_path, gateway_path, profile, tcp, rtu,
                                        baudrate, parity, int(stopbits), pace, units, sets,
                                        scenarios, loop)
    except ConfigError as err:
        for issue in err.issues:
            click.echo(str(issue), err=True)
        click.echo(f"{len(err.issues)} problem(s); nothing was started.", err=True)
        sys.exit(EXIT_CONFIG)
    except (ValidationError, ValueError, click.UsageError) as err:
        click.echo(f"edge-agent simulate: {_plain(err)}", err=True)
        sys.exit(EXIT_CONFIG)
    logs.configure(log_level or cfg.log_level)
    if skipped:
        logs.get_logger("edge_agent.cli").warning(
            "simulate_rtu_devices_skipped", devices=skipped,
            hint="serve a serial line with --rtu or a --config file")
    click.echo(simulator.summary(cfg), err=True)
    try:
        asyncio.run(simulator.serve(cfg))
    except simulator.SimulatorError as exc:
        logs.get_logger("edge_agent.cli").error("simulator_cannot_start", error=str(exc))
        sys.exit(1)


def _plain(err: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}".lstrip(": ")
                         for e in err.errors())
    return str(err)


def _simulate_config(config_path: Path | None, gateway_path: Path | None, profile: str | None,
                     tcp: str | None, rtu: str | None, baudrate: int, parity: str,
                     stopbits: int, pace: bool, units: str, sets: tuple[str, ...],
                     scenarios: tuple[str, ...], loop: bool | None
                     ) -> tuple[SimulateConfig, list[str]]:
    """The config the options describe (one of --config, --gateway, --profile), and the
    gateway's RTU devices that cannot be served from it."""
    from drivers.modbus.simulator import config as sc
    from edge_agent.config.loader import load_model

    sources = [name for name, given in (("--config", config_path), ("--gateway", gateway_path),
                                        ("--profile", profile)) if given is not None]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --config FILE, --gateway FILE or "
                               "--profile NAME (with --tcp or --rtu)")
    if profile is None and (tcp or rtu or sets):
        raise click.UsageError("--tcp, --rtu and --set go with --profile")
    refs = [sc.parse_scenario_ref(text, loop) for text in scenarios]
    if config_path is not None:
        base = load_model(config_path, sc.SimulateConfig)
        data = base.model_dump()
        data["scenarios"] += [ref.model_dump() for ref in refs]
        return sc.SimulateConfig.model_validate(data), []
    if gateway_path is not None:
        servers, skipped = sc.from_gateway(gateway_path)
        if not servers:
            raise click.UsageError(f"{gateway_path} has no enabled Modbus TCP device")
        return sc.SimulateConfig(servers=servers, scenarios=refs), skipped
    if (tcp is None) == (rtu is None):
        raise click.UsageError("--profile needs exactly one of --tcp [HOST:]PORT or --rtu PORT")
    values: dict[str, Any] = {}
    for text in sets:
        name, sep, raw = text.partition("=")
        if not sep:
            raise click.UsageError(f"--set {text}: write POINT=VALUE")
        values[name.strip()] = sc.parse_scalar(raw.strip())
    assert profile is not None
    unit_specs = [sc.UnitSpec(unit=u, profile=profile, values=values)
                  for u in sc.parse_units(units)]
    if tcp is not None:
        servers = [sc.ServerSpec(tcp=listen, units=unit_specs) for listen in sc.parse_tcp(tcp)]
    else:
        assert rtu is not None
        line = sc.RtuListen.model_validate({"port": rtu, "baudrate": baudrate,
                                            "parity": parity, "stopbits": stopbits,
                                            "pace": pace})
        servers = [sc.ServerSpec(rtu=line, units=unit_specs)]
    return sc.SimulateConfig(servers=servers, scenarios=refs), []
