"""The agent process: drivers → pipeline → outbox → uplink, each stage supervised.

The drivers run under `edge_agent.bundles.runtime.DriverRuntime`: it reloads a driver live
when an installed bundle switches its version, and judges a new version in probation."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from edge_agent import __version__, service
from edge_agent.bundles.runtime import DriverRuntime
from edge_agent.bundles.store import Store
from edge_agent.config.models import GatewayConfig
from edge_agent.config.profile_dirs import using_profile_dirs
from edge_agent.contract.envelope import Event, Hierarchy
from edge_agent.contract.logs import get_logger
from edge_agent.contract.topics import GatewayTopics
from edge_agent.outbox import OutboxThread
from edge_agent.pipeline import OpenAlarms, Pipeline
from edge_agent.sdk.supervise import supervise
from edge_agent.status.activity import Activity
from edge_agent.uplink import Uplink

log = get_logger("edge_agent.agent")

@dataclass
class Agent:
    cfg: GatewayConfig
    hierarchy: Hierarchy
    outbox: OutboxThread
    pipeline: Pipeline
    uplink: Uplink
    drivers: DriverRuntime
    started: float = field(default_factory=time.time)
    #: recent events and open alarms for the status page, fed by the pipeline
    activity: Activity = field(default_factory=Activity)

    def __post_init__(self) -> None:
        self.pipeline.on_event = self.activity.record

    @classmethod
    async def open(cls, cfg: GatewayConfig) -> Agent:
        gw = cfg.gateway
        hierarchy = Hierarchy(district=gw.district, street=gw.street, community=gw.community,
                              gateway=gw.id)
        outbox = await OutboxThread.open(cfg.outbox.path, max_bytes=cfg.outbox.max_bytes,
                                         hierarchy=hierarchy,
                                         loss_report_interval_s=cfg.outbox.loss_report_interval_s)
        if outbox.quarantined:
            log.error("outbox_quarantined", moved_to=str(outbox.quarantined), epoch=outbox.epoch)
        topics = GatewayTopics(gw.district, gw.community, gw.id)
        salt = (gw.credential_salt.reveal().get_secret_value().encode()
                if gw.credential_salt else b"")
        uplink = Uplink(cfg.uplink, cfg.uplink.endpoint(), topics, outbox,
                        client_id=cfg.uplink.client_id or gw.id)
        pipeline = Pipeline(hierarchy, outbox, commit_batch_max=cfg.outbox.commit_batch_max,
                            commit_linger_s=cfg.outbox.commit_linger_ms / 1000,
                            on_rows=uplink.offer, credential_salt=salt)
        pipeline.snapshots = cfg.snapshots
        pipeline.alarm_chatter = cfg.alarm_chatter
        pipeline.open_alarms = OpenAlarms(cfg.outbox.path.parent / "open-alarms.json")
        activity = Activity()
        pipeline.on_restored = activity.restore  # drivers take their alarms back when built
        for dev in cfg.devices:
            if dev.enabled:
                pipeline.register_device(dev.id, dev.driver)

        async def commit(events: list[Event]) -> None:  # the drivers' own gateway events
            await outbox.append_rows(events)
            uplink.notify()

        store = Store(cfg.drivers.store_root(cfg.outbox.path), cfg.drivers.keep_versions)
        drivers = DriverRuntime(cfg.drivers, store, cfg.devices, pipeline, hierarchy, commit)
        drivers.build_all()
        return cls(cfg, hierarchy, outbox, pipeline, uplink, drivers, activity=activity)

    async def run(self) -> None:
        stats = self.outbox.stats()
        log.info("agent_started", gateway=self.hierarchy.gateway, version=__version__,
                 epoch=stats.epoch, next_seq=stats.next_seq, backlog=stats.events,
                 devices=len(self.cfg.devices), broker=self.uplink.status.broker)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(supervise("pipeline", self.pipeline.run))
                tg.create_task(supervise("uplink", self.uplink.run))
                tg.create_task(supervise("heartbeat", self.heartbeat))
                if self.cfg.status_page.enabled:
                    # imported here: the web stack (~4 MiB) only when the page is on
                    from edge_agent.status.server import serve_status

                    tg.create_task(supervise("status_page", partial(serve_status, self)))
                tg.create_task(supervise("drivers", self.drivers.run))
                service.started(self, tg)  # systemd: READY=1 and the watchdog
        finally:
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        service.stopping()
        self.pipeline.request_stop()
        await self.pipeline.flush()
        await self.outbox.close()
        p = self.pipeline
        not_kept = dict(p.not_kept)
        if p.dropped_unreported:
            not_kept["dropped_unreported"] = p.dropped_unreported
        if not_kept:
            # The last line says exactly what this run could not keep: events given up
            # at shutdown by retention, and drops no gateway.data_loss could report.
            log.error("agent_stopped", gateway=self.hierarchy.gateway, not_kept=not_kept,
                      not_kept_total=sum(not_kept.values()), disk_full=p.disk_full,
                      dropped_total=p.counters.dropped, repeat_ok=True)
        else:
            log.info("agent_stopped", gateway=self.hierarchy.gateway, not_kept={},
                     not_kept_total=0, dropped_total=p.counters.dropped)

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_s)
            self.pipeline.emit(self.hierarchy.gateway, "gateway.heartbeat", self.heartbeat_data())
            if self.outbox.stats().loss_pending and await self.outbox.flush_loss_report():
                self.uplink.notify()

    def heartbeat_data(self) -> dict[str, object]:
        s = self.outbox.stats()
        data: dict[str, object] = {
            "uptime_s": round(time.time() - self.started, 1), "outbox_events": s.events,
            "outbox_bytes": s.bytes, "evicted_total": s.evicted_total,
            "dropped_total": self.pipeline.counters.dropped, "version": __version__,
            "alarm_toggles_suppressed": self.pipeline.counters.alarm_toggles_suppressed}
        if self.pipeline.disk_full or not self.outbox.is_open:
            data["disk_full"] = True
        if s.oldest_created is not None:
            data["oldest_waiting_s"] = round(max(0.0, time.time() - s.oldest_created), 1)
        return data


async def run_agent(cfg: GatewayConfig) -> None:
    """Run until SIGINT/SIGTERM; then flush pending events to the outbox and stop.

    The config's `profiles:` folders stay on the profile search path while it runs (its
    tasks inherit them), so a driver bundle installed live validates its devices'
    profiles as the loader did."""
    with using_profile_dirs([Path(p) for p in cfg.profiles]):
        await _run_agent(cfg)


async def _run_agent(cfg: GatewayConfig) -> None:
    agent = await Agent.open(cfg)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None

    def stop() -> None:
        # Failing commits get STOP_BUDGET_S more, then the rest is counted as not kept:
        # the agent ends well within systemd's TimeoutStopSec, never by its SIGKILL.
        agent.pipeline.request_stop()
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    with contextlib.suppress(asyncio.CancelledError):
        await agent.run()
