"""Shared helpers for benchmarks: one JSON object per line on stdout, a final summary line.

Every bench prints its rounds as JSON lines and ends with `{"summary": {...}}`, which
includes `machine()` so figures from different boxes are never compared blindly.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import sys
import time
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
    }


def emit(obj: dict[str, Any]) -> None:
    """Print one JSON object on one line (and flush, so a pipe sees it at once)."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def summary(obj: dict[str, Any]) -> None:
    """The last line of a bench: `{"summary": {..., "machine": {...}}}`."""
    emit({"summary": {**obj, "machine": machine()}})


class Timer:
    """`with Timer() as t: ...; t.seconds`"""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")
