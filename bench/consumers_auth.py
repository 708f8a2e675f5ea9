"""What a consumer's read costs the stream API: `authenticate` and `audit`, per store.

    .venv/bin/python bench/consumers_auth.py [--store sqlite|postgresql|URL] [--calls 20000]

Rounds (one JSON line each, times per call in microseconds, p50 and p99):
- `auth_cached`: the same valid token again and again (the answer cached for 2 s);
- `auth_lookup`: the cache off (`cache_s=0`): one indexed lookup by hash each call;
- `auth_unknown`: well-formed tokens nobody issued, each new (a lookup each);
- `audit_record`: `Consumers.audit` (a log line and a queued row), then the flush;
- `audit_row_per_commit`: for comparison, one INSERT committed per read, as an unbatched
  audit log would do (this is why the audit log batches).
Logging goes to /dev/null (the line is still built and rendered).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bench._common import emit, summary
from bench._stores import STORE_HELP, stores
from collector.consumers import Consumers, parse_scope
from collector.consumers.db import open_db
from collector.consumers.tokens import mint
from edge_agent.contract.logs import configure


def _times(n: int, fn: Callable[[int], Any]) -> dict[str, float]:
    spent = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        spent.append(time.perf_counter() - t0)
    spent.sort()
    return {"calls": n, "p50_us": round(statistics.median(spent) * 1e6, 1),
            "p99_us": round(spent[int(n * 0.99) - 1] * 1e6, 1),
            "per_s": round(n / sum(spent), 1)}


@click.command()
@click.option("--store", "kind", default="sqlite", show_default=True, help=STORE_HELP)
@click.option("--calls", default=20_000, show_default=True)
def main(kind: str, calls: int) -> None:
    configure("info", stream=open("/dev/null", "w"))  # noqa: SIM115
    with tempfile.TemporaryDirectory() as tmp, stores(kind, Path(tmp)) as fresh:
        url = fresh("consumers")
        if url.startswith("sqlite:"):
            from collector.store import migrate_store

            migrate_store(url)
        scope = parse_scope(["371312001001"], ["smoke.*"])
        results: dict[str, Any] = {}
        with Consumers(open_db(url)) as c:
            token = c.add("消防-河东", scope).token
            for i in range(200):  # other consumers' tokens in the index
                c.add(f"c{i}", scope)
            results["auth_cached"] = _times(calls, lambda _: c.authenticate(token))
        with Consumers(open_db(url), cache_s=0) as c:
            results["auth_lookup"] = _times(calls // 4, lambda _: c.authenticate(token))
            unknown = [mint() for _ in range(calls // 4)]
            results["auth_unknown"] = _times(len(unknown), lambda i: c.authenticate(unknown[i]))
            results["audit_record"] = _times(calls, lambda i: c.audit("消防-河东", "/v1/events",
                                                                        scope, i))
            t0 = time.perf_counter()
            c.flush()
            results["audit_record"]["flush_s"] = round(time.perf_counter() - t0, 3)
            db = c.db
            n = min(calls, 500)
            results["audit_row_per_commit"] = _times(n, lambda i: db.query(
                "INSERT INTO consumer_audit (at, consumer, route, scope, events) "
                "VALUES (?, ?, ?, ?, ?)", (db.ts(c._now()), "x", "/v1/events", "s", i)))
        for name, r in results.items():
            emit({"round": name, "store": url.split(":")[0], **r})
        summary({"store": url.split(":")[0], **{k: v["p50_us"] for k, v in results.items()}})


if __name__ == "__main__":
    main()
