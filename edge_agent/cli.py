"""`edge-agent`: run, validate (and, as drivers land, simulate and discover)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from edge_agent import __version__, logs
from edge_agent.config.loader import ConfigError, load_gateway_config
from edge_agent.config.models import GatewayConfig, SecretError

EXIT_CONFIG = 2


def _load_or_exit(path: Path) -> GatewayConfig:
    try:
        return load_gateway_config(path)
    except ConfigError as err:
        for issue in err.issues:
            click.echo(str(issue), err=True)
        click.echo(f"{len(err.issues)} problem(s) in {path}; nothing was started.", err=True)
        sys.exit(EXIT_CONFIG)


@click.group()
@click.version_option(__version__, prog_name="edge-agent")
def main() -> None:
    """Edge agent for a community gateway box."""


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
def validate(path: Path) -> None:
    """Check a gateway YAML file completely, touching no device. Exit 0 ok, 2 errors."""
    cfg = _load_or_exit(path)
    click.echo(f"{path}: ok: gateway {cfg.gateway.id}, {len(cfg.devices)} device(s)")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="gateway YAML file")
def run(config_path: Path) -> None:
    """Run the agent until SIGINT/SIGTERM."""
    cfg = _load_or_exit(config_path)
    logs.configure(cfg.log_level)
    from edge_agent.agent import run_agent
    from edge_agent.outbox import OutboxError

    try:
        asyncio.run(run_agent(cfg))
    except (SecretError, OutboxError) as exc:
        logs.get_logger("edge_agent.cli").error("agent_cannot_start", error=str(exc))
        click.echo(f"edge-agent: {exc}", err=True)
        sys.exit(1)
