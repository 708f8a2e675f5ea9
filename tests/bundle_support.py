"""Helpers for the driver bundle tests: keys, a driver folder to pack, a gateway YAML."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EDGE_AGENT = str(Path(sys.executable).with_name("edge-agent"))


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGE_AGENT, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def keygen(path: Path) -> dict[str, Any]:
    out = cli("drivers", "keygen", str(path))
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def simulated_copy(dest: Path, *, extra: str = "") -> Path:
    """drivers/simulated copied to `dest`, with `extra` appended to its __init__.py."""
    shutil.copytree(ROOT / "drivers" / "simulated", dest,
                    ignore=shutil.ignore_patterns("__pycache__"))
    if extra:
        init = dest / "__init__.py"
        init.write_text(init.read_text() + "\n" + extra)
    return dest


CRASHING = '''
class _Crashing(SimulatedDriver):
    async def run(self) -> None:  # as real drivers fail: a device's task in a TaskGroup
        import asyncio

        async def device() -> None:
            raise RuntimeError("boom on start (test bundle)")

        async with asyncio.TaskGroup() as tg:
            tg.create_task(device())


DRIVER = DriverSpec(name="simulated", options=SimulatedDevice, build=_Crashing,
                    summary="a simulated driver that crashes")
'''

SILENT = '''
class _Silent(SimulatedDriver):
    async def run(self) -> None:
        await asyncio.Event().wait()


DRIVER = DriverSpec(name="simulated", options=SimulatedDevice, build=_Silent,
                    summary="a simulated driver that reports nothing")
'''


def pack(src: Path, out: Path, version: str, *keys: Path, metadata_version: int = 1,
         expires: str = "30", requires: str = ">=0", name: str = "simulated") -> Path:
    args = ["drivers", "pack", str(src), "--name", name, "--version", version,
            "--expires", expires, "--metadata-version", str(metadata_version),
            "--requires-agent", requires, "--out", str(out)]
    for k in keys:
        args += ["--key", str(k)]
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    return Path(res.stdout.strip())


def gateway_yaml(tmp: Path, pubs: list[Path], *, broker: str = "mqtt://127.0.0.1:9",
                 threshold: int = 1, probation_s: float = 60, devices: str | None = None,
                 extra: str = "") -> Path:
    keys = "".join(f"\n    - file: {p}" for p in pubs)
    devices = devices if devices is not None else (
        "\n  - {id: smoke-1, driver: simulated, kind: smoke, period_s: 0.05}"
        "\n  - {id: water-1, driver: simulated, kind: water, period_s: 0.05}")
    path = tmp / "gw.yaml"
    path.write_text(f"""gateway: {{id: gw-b1, district: "371312", street: s1, community: c1}}
uplink: {{broker: "{broker}", ack_timeout_s: 1}}
outbox: {{path: {tmp}/outbox.db, commit_linger_ms: 5}}
status_page: {{enabled: false}}
heartbeat_s: 3600
{extra}drivers:
  trusted_keys:{keys}
  threshold: {threshold}
  probation_s: {probation_s}
devices:{devices}
""")
    return path


def install(bundle: Path, cfg: Path, *extra: str,
            env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    res = cli("drivers", "install", str(bundle), "--config", str(cfg), "--json", *extra,
              env=env)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, (res.stdout, res.stderr)
    return res.returncode, dict(json.loads(lines[0]))
