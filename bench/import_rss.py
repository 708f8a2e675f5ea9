"""Resident memory of the agent's and the collector's imports, and what sqlite-utils adds.

    .venv/bin/python bench/import_rss.py [--runs 3]

Each case is a fresh interpreter that imports the modules of one process (the agent: its
CLI, core and the Modbus and serial-line drivers; the collector: its app and SQLite store)
and reports VmRSS, the number of modules loaded and whether sqlite-utils and numpy are
among them. `agent + sqlite-utils` and `agent + sqlite-utils, numpy hidden` add sqlite-utils
to the agent, as plainly imported (it picks up numpy when numpy is installed: the camera
driver's dependency) and with numpy hidden for that import (what the agent did before it
stopped using sqlite-utils). The camera cases are what a camera worker's base is made
of (issue 14): a bare interpreter, numpy, OpenCV, the ONVIF client, zstandard, and the
worker's whole base (the template's preload with the WSDLs parsed). `file_mib` is the
part of RSS that is mapped library files (RssFile, shared with every process mapping
them; it varies with the page cache: the kernel maps neighbouring cached pages on a
fault), `anon_mib` the private part (RssAnon). Median of `--runs` runs;
docs/dependencies.md and docs/benchmarks.md have the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

try:
    from bench._common import emit, summary
except ImportError:  # run as a script: bench/ is on sys.path
    from _common import emit, summary  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent

AGENT = "import edge_agent.agent, edge_agent.cli, drivers.modbus, drivers.serial_line\n"
COLLECTOR = "import collector.app, collector.store.sqlite\n"
HIDE_NUMPY = ("hidden = 'numpy' not in sys.modules\n"
              "if hidden: sys.modules['numpy'] = None\n"
              "import sqlite_utils\n"
              "if hidden: del sys.modules['numpy']\n")
CASES = {
    "agent": AGENT,
    "agent + sqlite-utils": AGENT + "import sqlite_utils\n",
    "agent + sqlite-utils, numpy hidden": AGENT + HIDE_NUMPY,
    "collector": COLLECTOR,
    "bare interpreter": "",
    "numpy": "import numpy\n",
    "cv2 (OpenCV, with numpy)": "import cv2\n",
    "ONVIF client (onvif-zeep-async: zeep, lxml, aiohttp)": "import onvif.client\n",
    "zstandard": "import zstandard\n",
    # what every camera worker holds before its first camera: the template's preload
    # (drivers/onvif/template.py: the driver, OpenCV, numpy, the ONVIF client) + WSDLs
    "camera worker base": "import drivers.onvif.template as t\nt.warm()\n",
}
REPORT = ("st = {l.split(':')[0]: l.split()[1] for l in open('/proc/self/status')"
          " if ':' in l and len(l.split()) > 1}\n"
          "print(json.dumps({'rss_kib': int(st['VmRSS']), 'file_kib': int(st['RssFile']),"
          " 'anon_kib': int(st['RssAnon']),"
          " 'modules': len(sys.modules),"
          " 'sqlite_utils': 'sqlite_utils' in sys.modules, 'numpy': 'numpy' in sys.modules}))\n")


def measure(code: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", "import json, sys\n" + code + REPORT],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, float] = {}
    for name, code in CASES.items():
        runs = [measure(code) for _ in range(args.runs)]
        rss_mib = round(statistics.median(r["rss_kib"] for r in runs) / 1024, 1)
        file_mib = round(statistics.median(r["file_kib"] for r in runs) / 1024, 1)
        figures[name] = rss_mib
        anon_mib = round(statistics.median(r["anon_kib"] for r in runs) / 1024, 1)
        emit({"case": name, "rss_mib": rss_mib, "file_mib": file_mib, "anon_mib": anon_mib,
              "modules": runs[-1]["modules"],
              "sqlite_utils": runs[-1]["sqlite_utils"], "numpy": runs[-1]["numpy"]})
    summary({"rss_mib": figures,
             "sqlite_utils_mib": round(figures["agent + sqlite-utils"] - figures["agent"], 1),
             "sqlite_utils_numpy_hidden_mib": round(
                 figures["agent + sqlite-utils, numpy hidden"] - figures["agent"], 1)})


if __name__ == "__main__":
    main()
