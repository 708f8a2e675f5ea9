"""A flood from one gateway at a running collector: its peak and settled resident memory.

    .venv/bin/python bench/collector_flood.py [--floods 1500x300000,3000x300000]
        [--queued-bytes 64MiB] [--code DIR]

For each flood `COUNTxBYTES` a fresh `edge-collector run` (managed Mosquitto on a free
loopback port, SQLite store in a temp dir, inbox `ingest.max_queued_bytes`) is flooded by
one gateway publishing COUNT QoS 1 payloads of BYTES (garbage: quarantined or shed) as
fast as the broker takes them (paho, 1,000 in flight), the audit's flood.py. One JSON
line per flood: `peak_rss_mib` (VmHWM), `rss_after_mib` (VmRSS 5 s after the flood),
`shed`, `messages` and `quarantined` from `collector_stopped`. `--code DIR` runs the
collector from another checkout (e.g. `git archive <ref> collector edge_agent | tar -x
-C DIR`) to compare. docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import emit, summary
from tests.peers import free_port, wait_port

MIB = 1024 * 1024


def proc_mem(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def config(tmp: Path, port: int, queued_bytes: str) -> Path:
    (tmp / "gw-a.password").write_text("secret-a\n")
    cfg: dict[str, Any] = {
        "collector": {"id": "bench"},
        "store": f"sqlite:///{tmp / 'district.db'}",
        "broker": "managed",
        "managed_broker": {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp / "broker"),
                           "message_size_limit": 1024 * 1024 + 1024,
                           "users": [{"username": "gw-a",
                                      "password": {"file": str(tmp / "gw-a.password")}}]},
        "ingest": {"max_queued_bytes": queued_bytes},
        "log_level": "info",
    }
    path = tmp / "collector.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def flood(port: int, count: int, size: int) -> float:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-a",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set("gw-a", "secret-a")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    body = b'{"x":"' + os.urandom(size // 2).hex().encode()[:size] + b'"}'
    started = time.monotonic()
    infos = [client.publish("cd/v1/371312/371312001001/gw-a/events", body, qos=1)
             for _ in range(count)]
    for info in infos:
        info.wait_for_publish(300)
    took = time.monotonic() - started
    client.loop_stop()
    client.disconnect()
    return took


def one(count: int, size: int, queued_bytes: str, code: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cd-flood-") as d:
        tmp = Path(d)
        port = free_port()
        log = tmp / "collector.log"
        env = dict(os.environ)
        if code is not None:
            env["PYTHONPATH"] = str(code)
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "collector", "run", "--config",
                                     str(config(tmp, port, queued_bytes))],
                                    stdout=out, stderr=out, env=env,
                                    cwd=code if code is not None else None)
        try:
            wait_port(port)
            deadline = time.monotonic() + 20
            while "broker_connected" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            base = proc_mem(proc.pid)["VmRSS"]
            took = flood(port, count, size)
            time.sleep(5)
            mem = proc_mem(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        stopped = next((json.loads(x) for x in log.read_text().splitlines()
                        if '"collector_stopped"' in x), {})
    return {"flood": count, "payload_bytes": size, "queued_bytes": queued_bytes,
            "flood_s": round(took, 1), "rss_before_mib": round(base / MIB, 1),
            "peak_rss_mib": round(mem["VmHWM"] / MIB, 1),
            "rss_after_mib": round(mem["VmRSS"] / MIB, 1),
            "shed": stopped.get("shed"), "quarantined": stopped.get("quarantined"),
            "messages": stopped.get("messages")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--floods", default="1500x300000,3000x300000")
    ap.add_argument("--queued-bytes", default="64MiB")
    ap.add_argument("--code", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for spec in args.floods.split(","):
        count, size = (int(x) for x in spec.split("x"))
        row = one(count, size, args.queued_bytes, args.code)
        emit(row)
        rows.append(row)
    summary({"floods": len(rows), "worst_peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
             "code": str(args.code or "this checkout")})


if __name__ == "__main__":
    main()
