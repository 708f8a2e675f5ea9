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
