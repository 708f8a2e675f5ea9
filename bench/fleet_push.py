"""One signed bundle pushed to 50 gateways: edge-fleet against ansible-core.

    .venv/bin/python bench/fleet_push.py [--gateways 50] [--forks 5,50] [--parallel 20,50]

Each gateway is a real OpenSSH server on 127.0.0.1 (tests/sshd.py: its own host key, a
random port) and its own box folder: a gateway YAML trusting the bench's signing key,
its own driver store. The bundle is `drivers/simulated` packed and signed with the real
`edge-agent drivers pack`. Both tools do the same work per gateway, with strict host key
checking against the same known_hosts file: upload the bundle, run
`edge-agent drivers install BUNDLE --config GATEWAY_YAML --wait 0 --json` (no agent
runs, so no probation wait), remove the upload. Before every run each box's driver store
is emptied, so every run installs on all 50.

- edge-fleet: `edge-fleet push --to all --parallel P --report R` (a fresh process; wall
  time from start to exit, per-gateway seconds from its report).
- ansible-core (installed by `./run bench`, the `bench` extra): a generated INI inventory
  and playbook (`copy`, `command`, `file`; `gather_facts: false`; default ssh connection
  plugin with its ControlPersist, default pipelining off), `ansible-playbook -f FORKS`,
  its PLAY RECAP read to count hosts that changed with no failure.

Prints one JSON line per run and a summary: the ratio of edge-fleet's best wall time to
ansible's best (target <= 0.5) and edge-fleet's wall time for 50 (target < 60 s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import emit, summary  # noqa: E402
from tests.sshd import Sshd, inventory, keygen, require_sshd, user  # noqa: E402

BIN = Path(sys.executable).parent
EDGE_AGENT = str(BIN / "edge-agent")


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


def make_boxes(work: Path, n: int, pub: Path, pubkey_line: str) -> list[tuple[Sshd, Path]]:
    boxes = []
    for i in range(n):
        box = work / f"gw-{i:02d}"
        (box / "state").mkdir(parents=True)
        cfg = box / "gateway.yaml"
        cfg.write_text(
            f'gateway: {{id: gw-{i:02d}, district: "371312", street: "371312001", '
            f'community: "371312001001"}}\n'
            'uplink: {broker: "mqtt://127.0.0.1:9"}\n'
            f"outbox: {{path: {box}/state/outbox.db}}\n"
            "status_page: {enabled: false}\n"
            f"drivers:\n  trusted_keys:\n    - file: {pub}\n  probation_s: 5\n"
            "devices: []\n")
        sshd = Sshd(box / "sshd", [pubkey_line], binary=require_sshd()).start()
        boxes.append((sshd, cfg))
    return boxes


def reset(boxes: list[tuple[Sshd, Path]]) -> None:
    for _sshd, cfg in boxes:
        shutil.rmtree(cfg.parent / "state", ignore_errors=True)
        (cfg.parent / "state").mkdir()


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine: /proc/stat's first line."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def busy_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The machine's CPU use between two `cpu_ticks()` (all cores, other processes too)."""
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 1) if total else 0.0


def on_disk(boxes: list[tuple[Sshd, Path]], version: str) -> int:
    """Boxes whose driver store has `version` of the bundle active (checked for both tools)."""
    return sum(1 for _s, cfg in boxes
               if (cfg.parent / "state" / "drivers" / "simulated" / "current").resolve().name
               == version)


def fleet_run(bundle: Path, inv: Path, parallel: int, work: Path) -> dict[str, object]:
    report = work / f"report-{parallel}.json"
    t0 = time.perf_counter()
    res = run([str(BIN / "edge-fleet"), "push", str(bundle), "--to", "all", "--parallel",
               str(parallel), "--wait", "0", "--report", str(report), "--inventory", str(inv)])
    wall = time.perf_counter() - t0
    doc = json.loads(report.read_text())
    secs = [g["seconds"] for g in doc["gateways"]]
    return {"tool": "edge-fleet", "parallel": parallel, "wall_s": round(wall, 2),
            "installed": doc["counts"]["installed"], "exit": res.returncode,
            "per_gateway_s_median": round(statistics.median(secs), 2),
            "per_gateway_s_max": round(max(secs), 2),
            "wall_per_gateway_s": round(wall / len(secs), 3)}


def ansible_run(bundle: Path, boxes: list[tuple[Sshd, Path]], key: Path, known: Path,
                forks: int, work: Path) -> dict[str, object]:
    playbook_bin = BIN / "ansible-playbook"
    if not playbook_bin.exists():
        return {"tool": "ansible", "forks": forks, "skipped": "ansible-core is not installed "
                "(./run bench installs the `bench` extra)"}
    inv = work / "ansible-inventory.ini"
    inv.write_text("[gateways]\n" + "".join(
        f"gw-{i:02d} ansible_host=127.0.0.1 ansible_port={sshd.port} edge_config={cfg}\n"
        for i, (sshd, cfg) in enumerate(boxes)))
    install = (f"{EDGE_AGENT} drivers install {{{{ upload }}}} --config {{{{ edge_config }}}} "
               "--wait 0 --json")
    cfg_file = work / "ansible.cfg"
    cfg_file.write_text("[defaults]\n")  # nothing of the machine's /etc/ansible
    play = work / "push.yml"
    play.write_text(f"""- hosts: gateways
  gather_facts: false
  vars:
    upload: "/tmp/ansible-{{{{ inventory_hostname }}}}-{bundle.name}"
  tasks:
    - copy: {{src: "{bundle}", dest: "{{{{ upload }}}}"}}
    - command: "{install}"
    - file: {{path: "{{{{ upload }}}}", state: absent}}
""")
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_STDOUT_CALLBACK": "default",
           "ANSIBLE_REMOTE_USER": user(), "ANSIBLE_PRIVATE_KEY_FILE": str(key),
           "ANSIBLE_SSH_ARGS": f"-o ControlMaster=auto -o ControlPersist=60s "
                               f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes "
                               "-o IdentitiesOnly=yes",
           "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3", "ANSIBLE_CONFIG": str(cfg_file),
           "ANSIBLE_LOCAL_TEMP": str(work / "ansible-local"),
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / f"cp{forks}"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "False"}
    t0 = time.perf_counter()
    res = run([str(playbook_bin), "-i", str(inv), "-f", str(forks), str(play)], env=env)
    wall = time.perf_counter() - t0
    recap = {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
             for m in re.finditer(r"^(gw-\d+)\s+:\s+(.*)$", res.stdout, re.M)}
    if len(recap) != len(boxes):
        return {"tool": "ansible", "forks": forks, "error": (res.stdout + res.stderr)[-800:]}
    ok = sum(1 for s in recap.values() if not s["failed"] and not s["unreachable"]
             and s["changed"] >= 2)
    return {"tool": "ansible", "forks": forks, "wall_s": round(wall, 2), "installed": ok,
            "exit": res.returncode, "wall_per_gateway_s": round(wall / len(boxes), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateways", type=int, default=50)
    ap.add_argument("--forks", default="5,50")
    ap.add_argument("--parallel", default="20,50")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    boxes: list[tuple[Sshd, Path]] = []
    try:
        key = keygen(work / "maintainer")
        sign = work / "signing.key"
        out = run([EDGE_AGENT, "drivers", "keygen", str(sign)])
        assert out.returncode == 0, out.stderr
        src = work / "simulated-src"
        shutil.copytree(ROOT / "drivers" / "simulated", src,
                        ignore=shutil.ignore_patterns("__pycache__"))
        out = run([EDGE_AGENT, "drivers", "pack", str(src), "--name", "simulated",
                   "--version", "99.0.0", "--key", str(sign), "--out", str(work)])
        assert out.returncode == 0, out.stderr
        bundle = Path(out.stdout.strip())
        t0 = time.perf_counter()
        boxes = make_boxes(work, args.gateways, Path(f"{sign}.pub"),
                           (work / "maintainer.pub").read_text())
        emit({"setup": "sshd", "servers": len(boxes),
              "start_s": round(time.perf_counter() - t0, 2)})
        known = work / "known_hosts"
        known.write_text("".join(s.known_hosts_line() for s, _ in boxes))
        inv = inventory(work / "inventory.yaml", [
            {"id": f"gw-{i:02d}", "host": "127.0.0.1", "port": s.port, "config": str(cfg),
             "edge_agent": EDGE_AGENT} for i, (s, cfg) in enumerate(boxes)],
            client_key=key, known_hosts=known, defaults={"temp_dir": "/tmp"})
        rows = []
        for p in [int(x) for x in args.parallel.split(",") if x]:
            reset(boxes)
            ticks = cpu_ticks()
            rows.append({**fleet_run(bundle, inv, p, work),
                         "active_on_boxes": on_disk(boxes, "99.0.0"),
                         "machine_cpu_busy_pct": busy_pct(ticks, cpu_ticks())})
            emit({"bench": "fleet_push", "gateways": len(boxes), **rows[-1]})
        for f in [int(x) for x in args.forks.split(",") if x]:
            reset(boxes)
            ticks = cpu_ticks()
            rows.append({**ansible_run(bundle, boxes, key, known, f, work),
                         "active_on_boxes": on_disk(boxes, "99.0.0"),
                         "machine_cpu_busy_pct": busy_pct(ticks, cpu_ticks())})
            emit({"bench": "fleet_push", "gateways": len(boxes), **rows[-1]})
        fleet_best = min((r["wall_s"] for r in rows if r["tool"] == "edge-fleet"
                          and r.get("installed") == len(boxes)), default=None)
        ansible_best = min((r["wall_s"] for r in rows if r["tool"] == "ansible"
                            and r.get("installed") == len(boxes)), default=None)
        ratio = (round(float(fleet_best) / float(ansible_best), 2)  # type: ignore[arg-type]
                 if fleet_best and ansible_best else None)
        summary({"bench": "fleet_push", "gateways": len(boxes), "edge_fleet_best_s": fleet_best,
                 "ansible_best_s": ansible_best, "ratio": ratio, "target_ratio": 0.5,
                 "under_60s": bool(fleet_best is not None and float(fleet_best) < 60)})  # type: ignore[arg-type]
    finally:
        for s, _ in boxes:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
