"""`edge-agent drivers ...`: keys, packing, installing and rolling back driver bundles.

Registered as the `drivers` entry point of `edge_agent.commands` (imported only when run:
`edge-agent run` never loads `cryptography` for it). Exit codes per the contract with
edge-fleet (docs/drivers-updates.md): 0 installed/already_current/pending, 3 refused,
4 rolled_back, 2 a usage or config mistake (with --json, stdout holds
{"outcome": "error", "reason": ...}).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

import click

from edge_agent.bundles.errors import BundleError
from edge_agent.config.loader import ConfigError, load_gateway_config
from edge_agent.config.models import GatewayConfig
from edge_agent.contract.install_exit import INSTALL_EXIT as _EXIT
from edge_agent.sdk.commands import EXIT_CONFIG

config_option = click.option("--config", "config_path", required=True,
                             type=click.Path(path_type=Path), help="gateway YAML file")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="print one JSON object on stdout")


def _fail(message: str, hint: str, as_json: bool) -> NoReturn:
    text = f"{message} (hint: {hint})" if hint else message
    if as_json:
        click.echo(json.dumps({"outcome": "error", "reason": text}))
    click.echo(f"edge-agent drivers: {text}", err=True)
    sys.exit(EXIT_CONFIG)


def _config(path: Path, as_json: bool) -> GatewayConfig:
    try:
        return load_gateway_config(path, devices=False)
    except ConfigError as err:
        if as_json:
            click.echo(json.dumps({"outcome": "error", "reason": "; ".join(
                str(i) for i in err.issues)}))
        for issue in err.issues:
            click.echo(str(issue), err=True)
        sys.exit(EXIT_CONFIG)


@click.group()
def drivers() -> None:
    """Signed driver bundles: keygen, pack, list, install, rollback."""


@drivers.command()
@click.argument("out", type=click.Path(path_type=Path))
def keygen(out: Path) -> None:
    """Write a new Ed25519 signing key to OUT (0600) and its public key to OUT.pub."""
    from edge_agent.bundles.keys import generate, keyid, public_b64

    try:
        key = generate(out)
    except BundleError as exc:
        _fail(str(exc), exc.hint, False)
    pub = key.public_key()
    click.echo(json.dumps({"private_key": str(out), "public_key": public_b64(pub),
                           "public_key_file": f"{out}.pub", "keyid": keyid(pub)}))


@drivers.command()
@click.argument("src_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--name", required=True, help="driver name (drivers.NAME)")
@click.option("--version", "version", required=True, help="PEP 440 version")
@click.option("--key", "keys", multiple=True, required=True,
              type=click.Path(path_type=Path, dir_okay=False), help="signing key (repeat)")
@click.option("--expires", "expires_days", type=click.FloatRange(min=0, min_open=True),
              default=365.0, show_default=True, help="days the signature stays valid")
@click.option("--metadata-version", type=click.IntRange(min=1), default=1,
              show_default=True, help="monotonic per driver (TUF's version)")
@click.option("--requires-agent", default=">=0", show_default=True,
              help="PEP 440 specifier of the agent versions it runs on")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("."), show_default=True, help="folder to write the bundle to")
def pack(src_dir: Path, name: str, version: str, keys: tuple[Path, ...],
         expires_days: float, metadata_version: int, requires_agent: str,
         out_dir: Path) -> None:
    """Pack driver folder SRC_DIR into a signed NAME-VERSION.edgebundle."""
    from edge_agent.bundles import pack as packing
    from edge_agent.bundles.keys import read_private

    try:
        signing = [read_private(k) for k in keys]
        file_name, data = packing.pack(src_dir, name=name, version=version, keys=signing,
                                       expires_days=expires_days,
                                       metadata_version=metadata_version,
                                       requires_agent=requires_agent)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / file_name).write_bytes(data)
    except BundleError as exc:
        _fail(str(exc), exc.hint, False)
    except OSError as exc:
        _fail(f"{src_dir}: {exc}", "", False)
    click.echo(str(out_dir / file_name))


@drivers.command("list")
@config_option
@json_option
def list_(config_path: Path, as_json: bool) -> None:
    """The drivers of this gateway: version, state, bundle or built-in."""
    from edge_agent.bundles.service import listing

    cfg = _config(config_path, as_json)
    try:
        found = listing(cfg)
    except BundleError as exc:
        _fail(str(exc), exc.hint, as_json)
    if as_json:
        click.echo(json.dumps(found))
        return
    rows = found["drivers"]
    assert isinstance(rows, list)
    for d in rows:
        prev = f" (previous {d['previous']})" if d.get("previous") else ""
        keys = f" signed by {', '.join(d['keyids'])}" if d.get("keyids") else ""
        click.echo(f"{d['name']:<14} {d['version']:<12} {d['source']:<8} {d['state']}{prev}"
                   f"{keys}")


@drivers.command()
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
@config_option
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0.0,
              help="seconds to wait for a running agent's probation verdict")
@click.option("--force", is_flag=True,
              help="install even a bundle this gateway rolled back before")
@json_option
def install(bundle: Path, config_path: Path, wait_s: float, force: bool,
            as_json: bool) -> None:
    """Verify and install BUNDLE; the running agent reloads the driver live."""
    from edge_agent.bundles import service

    cfg = _config(config_path, as_json)
    try:
        outcome = service.wait_outcome(cfg, service.install(bundle, cfg, force=force), wait_s)
    except BundleError as exc:
        _fail(str(exc), exc.hint, as_json)
    if as_json:
        click.echo(outcome.json())
    else:
        tail = f": {outcome.reason}" if outcome.reason else ""
        click.echo(f"{outcome.driver} {outcome.version}: {outcome.outcome}"
                   f" (previous {outcome.previous}){tail}")
    sys.exit(_EXIT[outcome.outcome])


@drivers.command()
@click.argument("name")
@config_option
@json_option
def rollback(name: str, config_path: Path, as_json: bool) -> None:
    """Make NAME's previous version (or the built-in driver) active again."""
    from edge_agent.bundles import service

    cfg = _config(config_path, as_json)
    try:
        outcome = service.rollback(cfg, name)
    except BundleError as exc:
        _fail(str(exc), exc.hint, as_json)
    click.echo(outcome.json() if as_json else
               f"{name}: {outcome.version} active again (was {outcome.previous})")
