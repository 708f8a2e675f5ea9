"""The Modbus driver's command: `edge-agent simulate` (registered in pyproject.toml under
the `edge_agent.commands` entry points, imported only when it is run).

It turns its options into a `SimulateConfig` (`simulator/config.py`) and serves it
(`simulator/server.py`) until SIGINT/SIGTERM; mistakes exit 2 with `FILE:LINE:COL` lines
or one plain sentence, never a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edge_agent.contract import logs
from edge_agent.sdk.commands import EXIT_CONFIG, exit_config_error
from edge_agent.sdk.config import ConfigError, load_model

if TYPE_CHECKING:
    from drivers.modbus.simulator.config import SimulateConfig

log = logs.get_logger("drivers.modbus.simulator")


@click.command()
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
              help="play a shipped scenario NAME (or a file) on device ids or unit ids "
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
        exit_config_error(err)
    except (ValidationError, ValueError, click.UsageError) as err:
        click.echo(f"edge-agent simulate: {_plain(err)}", err=True)
        sys.exit(EXIT_CONFIG)
    logs.configure(log_level or cfg.log_level)
    if skipped:
        log.warning(
            "simulate_rtu_devices_skipped", devices=skipped,
            hint="serve a serial line with --rtu or a --config file")
    click.echo(simulator.summary(cfg), err=True)
    try:
        asyncio.run(simulator.serve(cfg))
    except simulator.SimulatorError as exc:
        log.error("simulator_cannot_start", error=str(exc))
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
