"""Run one simulated ONVIF camera until Ctrl-C: `python -m drivers.onvif.simulator`.

    python -m drivers.onvif.simulator --port 18090 --password-file var/demo/secrets/cam.pw \
        --discovery-port 13702 --scenario

`--open` asks no credentials, `--no-events` has no events service, `--basic-snapshots`
puts the snapshot behind HTTP Basic. `--scenario` plays motion (raised 5 s every 20 s)
and a tamper alarm (10 s every 60 s) in a loop. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from edge_agent.contract import logs
from edge_agent.contract.logs import get_logger

from .app import OnvifSimulator
from .discovery import DiscoveryResponder

log = get_logger("drivers.onvif.simulator")


async def _scenario(sim: OnvifSimulator) -> None:
    tick = 0
    while True:
        await asyncio.sleep(1)
        tick += 1
        if tick % 20 == 5:
            sim.motion(True)
        elif tick % 20 == 10:
            sim.motion(False)
        if tick % 60 == 30:
            sim.tamper(True)
        elif tick % 60 == 40:
            sim.tamper(False)


async def _main(args: argparse.Namespace, password: str) -> None:
    sim = OnvifSimulator(port=args.port, username=None if args.open else args.username,
                         password=password, clock_skew_s=args.skew, name=args.name)
    sim.switches.no_events = args.no_events
    sim.switches.basic_snapshots = args.basic_snapshots
    await sim.start()
    responder = None
    if args.discovery_port:
        responder = DiscoveryResponder([sim], args.discovery_port)
        await responder.start()
    task = asyncio.create_task(_scenario(sim)) if args.scenario else None
    try:
        await asyncio.Event().wait()
    finally:
        if task is not None:
            task.cancel()
        if responder is not None:
            await responder.stop()
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m drivers.onvif.simulator",
                                     description="a simulated ONVIF camera on 127.0.0.1")
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password-file", help="file holding the password "
                        "(default: sim-password)")
    parser.add_argument("--skew", type=float, default=0.0, help="camera clock offset, s")
    parser.add_argument("--name", default="sim-camera")
    parser.add_argument("--discovery-port", type=int, default=0,
                        help="answer WS-Discovery probes on this UDP port (127.0.0.1)")
    parser.add_argument("--scenario", action="store_true", help="play motion/tamper events")
    parser.add_argument("--open", action="store_true",
                        help="ask no credentials anywhere (a camera as many ship)")
    parser.add_argument("--no-events", action="store_true",
                        help="no events service (GetServices/GetCapabilities list none)")
    parser.add_argument("--basic-snapshots", action="store_true",
                        help="the snapshot URI challenges with HTTP Basic only")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    logs.configure(args.log_level)
    password = (Path(args.password_file).read_text("utf-8").strip() if args.password_file
                else "sim-password")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args, password))


if __name__ == "__main__":
    main()
