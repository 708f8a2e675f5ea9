"""The canary rule and the command line a box runs: pure, no I/O.

Canary: the first N selected gateways (inventory order) are pushed first. The rest is
pushed only if no canary was rolled back, refused or ended in an error, and at least one
canary confirmed the bundle (installed or already current): a canary phase where every
box was unreachable proves nothing. Otherwise the rest is reported `skipped`, untouched.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from edge_fleet.inventory import Gateway
from edge_fleet.outcome import OK, GatewayResult, Outcome

_STOPPERS = (Outcome.ROLLED_BACK, Outcome.REFUSED, Outcome.ERROR)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")


def canary_stop(canaries: Sequence[GatewayResult]) -> str | None:
    """Why the push must stop after these canary results; None to go on."""
    for r in canaries:
        if r.outcome in _STOPPERS:
            return f"canary {r.gateway} {r.outcome.value}: {r.reason}".rstrip(": ")
    if canaries and not any(r.outcome in OK for r in canaries):
        return "no canary gateway confirmed the bundle (" + ", ".join(
            f"{r.gateway} {r.outcome.value}" for r in canaries) + ")"
    return None


def skipped(gateways: Sequence[Gateway], why: str) -> list[GatewayResult]:
    return [GatewayResult(g.id, g.address, Outcome.SKIPPED, f"not pushed: {why}")
            for g in gateways]


def remote_name(bundle_name: str, token: str) -> str:
    """The upload's file name on the box: unique, and starting with the bundle's own
    `NAME-VERSION` when it is a plain file name (the installer reads the driver's name
    from there first): `simulated-1.2.0.edge-fleet-TOKEN.edgebundle`."""
    if not _SAFE_NAME.match(bundle_name):
        return f"bundle.edge-fleet-{token}.edgebundle"
    stem = bundle_name.removesuffix(".edgebundle")
    return f"{stem}.edge-fleet-{token}.edgebundle"


def install_command(gw: Gateway, remote_path: str, wait_s: float) -> str:
    """`EDGE_AGENT drivers install PATH --config GATEWAY_YAML --wait S --json`, quoted for
    the box's shell."""
    return shlex.join([gw.edge_agent, "drivers", "install", remote_path, "--config", gw.config,
                       "--wait", f"{wait_s:g}", "--json"])


def logs_command(template: str, lines: int) -> str:
    return template.replace("{lines}", str(int(lines)))
