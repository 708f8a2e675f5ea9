"""Follows the event stream into a `Fleet`, and the store's sequence gaps beside it.

Start: a rebuild from the store, bounded by time: only events whose `time` is within the
last `rebuild_s` (a `Filter(since=…)` of the stream reader, every area and type), read in
pages of 1,000 in store order; then it keeps following from where the rebuild ended, like
an SSE consumer (`poll_s`). An alarm raised before the window and still open is not
seen: the window must be longer than alarms stay open (default one day), or the view is
rebuilt from a wider one (`fleet.rebuild_s`).

Gaps: `store.gaps()` every `gaps_s`, in a worker thread (it reads the stream table), as
gateway -> (unexplained missing seqs, explained ones).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from collector.fleet.model import Fleet
from collector.store import Store, StoreError, open_store
from collector.stream.filter import Filter
from collector.stream.position import Position
from collector.stream.reader import Reader
from edge_agent.contract.logs import get_logger

log = get_logger("collector.fleet")


@dataclass(frozen=True, slots=True)
class FleetSettings:
    heartbeat_s: float = 60.0
    rebuild_s: float = 86_400.0
    poll_s: float = 1.0
    gaps_s: float = 30.0


def gap_counts(store: Store) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    for g in store.gaps():
        unexplained, explained = counts.get(g.gateway, (0, 0))
        if g.explained:
            explained += g.size
        else:
            unexplained += g.size
        counts[g.gateway] = (unexplained, explained)
    return counts


class Projector:
    """`run()` until cancelled; `fleet`, `gaps` and `ready` are read by the routes."""

    def __init__(self, reader: Reader, store_url: str, settings: FleetSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.reader = reader
        self.store_url = store_url
        self.settings = settings
        self.clock = clock
        self.fleet = Fleet()
        self.gaps: dict[str, tuple[int, int]] = {}
        self.ready = False
        self.rebuild_seconds: float | None = None
        #: held while a page is applied and while the view is taken
        self.lock = threading.Lock()

    def catch_up(self, pos: Position, flt: Filter) -> tuple[Position, int]:
        """Reads and applies every visible page after `pos` (worker thread)."""
        n = 0
        while True:
            page = self.reader.read(pos, flt)
            now = self.clock()
            events = [json.loads(body) for _, body in page.events]
            with self.lock:
                for event in events:
                    self.fleet.apply(event, now)
            n += len(page.events)
            pos = page.next
            if not page.more:
                return pos, n

    def refresh_gaps(self) -> None:
        """Opened for each refresh (every `gaps_s`): no connection held between them."""
        store = open_store(self.store_url, create=False)
        try:
            self.gaps = gap_counts(store)
        finally:
            store.close()

    async def _refresh_gaps(self) -> None:
        try:
            await asyncio.to_thread(self.refresh_gaps)
        except StoreError as exc:
            log.warning("fleet_gaps_unavailable", error=str(exc))

    async def run(self) -> None:
        since = datetime.fromtimestamp(self.clock() - self.settings.rebuild_s, UTC)
        flt = Filter(since=since)
        started = time.monotonic()
        pos, n = await asyncio.to_thread(self.catch_up, Position.start(self.reader.kind), flt)
        # the gaps too before the first answer: a view without them would show a gateway
        # with holes green (or amber for another reason only) until the first refresh
        await self._refresh_gaps()
        gaps_at = time.monotonic() + self.settings.gaps_s
        self.rebuild_seconds = time.monotonic() - started
        self.ready = True
        log.info("fleet_rebuilt", events=n, gateways=len(self.fleet.gateways),
                 seconds=round(self.rebuild_seconds, 3), window_s=self.settings.rebuild_s)
        while True:
            if time.monotonic() >= gaps_at:
                await self._refresh_gaps()
                gaps_at = time.monotonic() + self.settings.gaps_s
            try:
                pos, _ = await asyncio.to_thread(self.catch_up, pos, flt)
            except Exception as exc:  # the store away for a moment: try again, keep the view
                log.warning("fleet_read_failed", error=str(exc))
            await asyncio.sleep(self.settings.poll_s)
