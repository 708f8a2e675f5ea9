"""Live reload of a driver under load: events lost and the gap in polling of its devices.

    .venv/bin/python bench/driver_reload.py [--devices 20] [--period 0.1] [--burst 5]
                                            [--reloads 5]

A real `edge-agent run` (its own process) with `--devices` simulated water sensors (each
`--burst` readings every `--period` s) and an uplink to a port nobody listens on, so every
event stays in the outbox. Bundles of `drivers/simulated` (versions 1.1.0, 1.2.0, ...) are
installed one after the other with `edge-agent drivers install --wait`: each switch stops
the driver and starts the new code with the same devices, then probation commits it.
After SIGTERM the outbox is read: events lost = holes in the seqs + events the outbox
evicted (gateway.data_loss) + what the agent's last log line says it could not keep; the
gap = the longest time between two readings of a device around each reload, beside the
period.
"""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import click

try:
    from bench._common import emit, summary
except ImportError:  # run as a script: bench/ is on sys.path
    from _common import emit, summary  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
EDGE_AGENT = str(Path(sys.executable).with_name("edge-agent"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGE_AGENT, *args], capture_output=True, text=True, check=False)


def _config(tmp: Path, devices: int, period: float, burst: int) -> Path:
    devs = "".join(f"\n  - {{id: water-{i}, driver: simulated, kind: water, period_s: {period},"
                   f" burst: {burst}, alarm_every_s: 100000}}" for i in range(devices))
    cfg = tmp / "gw.yaml"
    cfg.write_text(f"""gateway: {{id: gw-bench, district: "371312", street: s1, community: c1}}
uplink: {{broker: "mqtt://127.0.0.1:9"}}
outbox: {{path: {tmp}/outbox.db}}
status_page: {{enabled: false}}
heartbeat_s: 3600
log_level: info
drivers:
  trusted_keys: [{{file: {tmp}/key.pub}}]
  probation_s: 2
devices:{devs}
""")
    return cfg


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@click.command()
@click.option("--devices", default=20, show_default=True)
@click.option("--period", default=0.1, show_default=True)
@click.option("--burst", default=5, show_default=True)
@click.option("--reloads", default=5, show_default=True)
def main(devices: int, period: float, burst: int, reloads: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        assert _cli("drivers", "keygen", str(tmp / "key")).returncode == 0
        cfg = _config(tmp, devices, period, burst)
        log = (tmp / "agent.log").open("wb")
        agent = subprocess.Popen([EDGE_AGENT, "run", "--config", str(cfg)], stdout=log,
                                 stderr=subprocess.STDOUT)
        time.sleep(3)
        switches: list[tuple[str, float, float]] = []
        for n in range(reloads):
            version = f"1.{n + 1}.0"
            res = _cli("drivers", "pack", str(ROOT / "drivers/simulated"), "--name",
                       "simulated", "--version", version, "--key", str(tmp / "key"),
                       "--metadata-version", str(n + 1), "--out", str(tmp / "out"))
            assert res.returncode == 0, res.stderr
            t0 = time.time()
            res = _cli("drivers", "install", res.stdout.strip(), "--config", str(cfg),
                       "--wait", "30", "--json")
            outcome = json.loads(res.stdout)
            switches.append((version, t0, time.time()))
            assert outcome["outcome"] == "installed", outcome
            time.sleep(1)
        time.sleep(2)
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
        log.close()
        last = [json.loads(line) for line in (tmp / "agent.log").read_text().splitlines()
                if '"agent_stopped"' in line][-1]
        conn = sqlite3.connect(tmp / "outbox.db")
        seqs = [s for (s,) in conn.execute("SELECT seq FROM events ORDER BY seq")]
        holes = (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0
        evicted = sum(json.loads(b)["data"].get("evicted", 0) for (b,) in conn.execute(
            "SELECT body FROM events WHERE type = 'gateway.data_loss'"))
        readings: dict[str, list[float]] = {}
        for (body,) in conn.execute("SELECT body FROM events WHERE type = 'water.level' "
                                    "ORDER BY seq"):
            ev = json.loads(body)
            readings.setdefault(ev["subject"], []).append(_ts(ev["time"]))
        conn.close()
    lost = holes + evicted + int(last.get("not_kept_total", 0))
    gaps_all: list[float] = []
    for version, t0, t1 in switches:
        gaps = []
        for times in readings.values():
            around = [b - a for a, b in itertools.pairwise(times)
                      if t0 - 1 <= b and a <= t1 + 1]
            if around:
                gaps.append(max(around))
        gaps_all += gaps
        emit({"reload": version, "install_s": round(t1 - t0, 2), "devices": len(gaps),
              "gap_ms_max": round(max(gaps) * 1000), "gap_ms_median":
              round(sorted(gaps)[len(gaps) // 2] * 1000)})
    summary({"bench": "driver_reload", "devices": devices, "period_ms": round(period * 1000),
             "burst": burst, "reloads": reloads, "events": len(seqs), "events_lost": lost,
             "seq_holes": holes, "evicted": evicted, "gap_ms_max": round(max(gaps_all) * 1000),
             "gap_ms_median": round(sorted(gaps_all)[len(gaps_all) // 2] * 1000)})


if __name__ == "__main__":
    main()
