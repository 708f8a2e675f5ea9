"""`edge-collector provision`: issue, move, list and revoke gateway credentials.

Exit codes: 0 done, 2 a mistake in the options, the config or a provisioning file (the
message names the option or file and says what to do), 1 an unexpected I/O failure.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from collector.provisioning.files import Provisioned, Provisioning
from collector.provisioning.plan import (
    ProvisionError,
    check_gateway,
    check_place,
    describe,
)


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"edge-collector provision: {message}", err=True)
    sys.exit(code)


def _provisioning(config_path: Path) -> Provisioning:
    from collector.cli import _load

    prov = Provisioning.from_config(_load(config_path))
    if prov is None:
        _fail(f"--config: {config_path} has no `provisioning:` section (dir, broker_url); "
              "see docs/provisioning.md")
    return prov


def _report(done: Provisioned) -> None:
    assert done.place is not None and done.box is not None
    if done.moved_from is not None:
        click.echo(f"{done.gateway}: moved from {describe(done.moved_from)} to "
                   f"{describe(done.place)}")
    else:
        click.echo(f"{done.gateway}: provisioned at {describe(done.place)}")
    if not done.issued:
        click.echo("  the password is unchanged (--rotate issues a new one)")
    else:
        click.echo(f"  new MQTT password in {done.password_file} (0600; copy it, then delete "
                   "it here)")
    click.echo("\nOn the box:")
    if done.password_file is not None:
        click.echo(f"  install -m 0600 -o edge-agent {done.password_file.name} "
                   f"{done.box.password_path}")
    click.echo("  in its gateway YAML (edge-agent init writes one), these sections:\n")
    for line in done.box.snippet().splitlines():
        click.echo(f"    {line}")
    click.echo("\nOn the broker: reload the password file and ACL (connected clients are "
               "checked again):\n  systemctl reload mosquitto    # or: kill -HUP "
               "$(pidof mosquitto)\nA managed broker (`broker: managed`) takes them when the "
               "collector reloads:\n  systemctl reload edge-collector    # SIGHUP")


@click.command()
@click.argument("gateway", required=False)
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="collector YAML with a `provisioning:` and a `gateways:` section")
@click.option("--district", help="6-digit admin code of the gateway's district")
@click.option("--street", help="street (township) code")
@click.option("--community", help="community code")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True,
              help="where the box's password file (GATEWAY.mqtt-password) is written")
@click.option("--rotate", is_flag=True, help="issue a new password (the old one stops working "
                                              "at the broker's reload)")
@click.option("--move", is_flag=True, help="allow moving a gateway registered elsewhere")
@click.option("--list", "list_", is_flag=True, help="list the registered gateways")
@click.option("--revoke", "revoke", is_flag=True,
              help="remove GATEWAY's password, rights and registry entry")
def provision(gateway: str | None, config_path: Path, district: str | None,
              street: str | None, community: str | None, out_dir: Path, rotate: bool,
              move: bool, list_: bool, revoke: bool) -> None:
    """Create GATEWAY's MQTT credential, its broker rights (its own topics only) and its
    place in the registry; print what to copy to the box. docs/provisioning.md."""
    if list_ + revoke > 1:
        _fail("--list and --revoke do not go together")
    if list_:
        if gateway is not None:
            _fail("--list takes no GATEWAY")
        _list(_provisioning(config_path))
        return
    if gateway is None:
        _fail("GATEWAY is missing (e.g. edge-collector provision gw-qhw-03 --config "
              "collector.yaml --district 371312 --street 371312001 --community 371312001003)")
    try:
        check_gateway(gateway)
        if revoke:
            place = _provisioning(config_path).revoke(gateway)
            click.echo(f"{gateway}: revoked (was at {describe(place)}); reload the broker "
                       "(systemctl reload mosquitto) to shut it out")
            return
        missing = [f"--{n}" for n, v in (("district", district), ("street", street),
                                         ("community", community)) if v is None]
        if missing:
            _fail(f"{', '.join(missing)} missing: a gateway is provisioned at a place")
        assert district is not None and street is not None and community is not None
        place = check_place(district, street, community)
        done = _provisioning(config_path).provision(gateway, place, out_dir=out_dir,
                                                    move=move, rotate=rotate)
    except ProvisionError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror}", 1)
    _report(done)


def _list(prov: Provisioning) -> None:
    try:
        found = prov.gateways()
    except ProvisionError as exc:
        _fail(str(exc))
    if not found:
        click.echo("no gateway registered")
    for gw, (place, has_password) in found.items():
        state = "provisioned" if has_password else "registered only (no password here)"
        click.echo(f"{gw}\t{place.district}\t{place.street}\t{place.community}\t{state}")
