"""SIGTERM while the link to the broker is wedged (a network cut: no FIN, no RST, the
sockets' buffers full of resends).

aiomqtt leaves a session (`async with`) by waiting, with no time limit, until its
DISCONNECT is written; the city bench saw a teardown hang there on broken sockets. The
agent and the collector must still end on SIGTERM well within systemd's stop timeout.
Measured: agent 0.6-0.7 s, collector 2.1-2.2 s (its offline notice times out first).
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.harness import (
    agent,
    collector,
    collector_yaml,
    gateway_yaml,
    sim_devices,
    wait_for,
    write_yaml,
)
from tests.peers import Mosquitto, proxy_thread

#: How long each process may take to stop: far below systemd's TimeoutStopSec (90 s) and
#: the harness's own 15 s, well above the bounded disconnect (a few seconds).
STOP_WITHIN_S = 12.0
#: Frozen this long before the SIGTERM: resends pile up in the socket's send buffer.
FROZEN_S = 8.0


def connected(proc_log: list[dict[str, object]], event: str) -> bool:
    return any(e.get("event") == event for e in proc_log)


def test_sigterm_ends_agent_and_collector_on_a_frozen_link(tmp_path: Path,
                                                           mosquitto: Mosquitto) -> None:
    with proxy_thread(mosquitto.port) as proxy:
        via = f"mqtt://127.0.0.1:{proxy.port}"
        ag = agent(write_yaml(tmp_path / "g.yaml", gateway_yaml(
            "gw-frozen", via, tmp_path / "o.db",
            uplink={"ack_timeout_s": 0.3, "ack_timeout_max_s": 0.6, "publish_timeout_s": 1},
            devices=sim_devices(20, period_s=0.01, burst=20))),
            tmp_path / "a.log").start()
        col = collector(write_yaml(tmp_path / "c.yaml",
                                   collector_yaml(via, tmp_path / "district.db")),
                        tmp_path / "c.log").start()
        try:
            wait_for(lambda: connected(ag.log_events(), "uplink_connected")
                     and connected(col.log_events(), "broker_connected"), 30, "both connected")
            time.sleep(1)
            proxy.frozen = True
            time.sleep(FROZEN_S)
            took = {}
            for name, proc in (("agent", ag), ("collector", col)):
                started = time.monotonic()
                code = proc.stop(timeout=STOP_WITHIN_S)  # raises if SIGTERM is ignored
                took[name] = round(time.monotonic() - started, 2)
                assert code == 0, f"{name} exited {code}"
            print(f"stopped on a frozen link within {took} s")
        finally:
            ag.kill()
            col.kill()
