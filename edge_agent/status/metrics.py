"""`/metrics`: Prometheus text exposition format 0.0.4, written by hand (no runtime dependency).

Every name starts with `edge_agent_`; the list is in docs/status.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from edge_agent import __version__
from edge_agent.status.snapshot import AgentView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[dict[str, str], float]]) -> None:
        sample_name = f"{name}_total" if kind == "counter" else name
        self.lines.append(f"# HELP {sample_name} {help_}")
        self.lines.append(f"# TYPE {sample_name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{sample_name}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def render(view: AgentView, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    p, u, o = view.pipeline, view.uplink.status, view.outbox.stats()
    x = Exposition()
    x.family("edge_agent_build_info", "gauge", "Agent version (always 1).",
             [({"version": __version__, "gateway": view.hierarchy.gateway}, 1)])
    x.family("edge_agent_start_time_seconds", "gauge", "Unix time the agent started.",
             [({}, view.started)])
    x.family("edge_agent_events_created", "counter",
             "Events minted by the pipeline (queued for the outbox).",
             [({}, p.counters.created)])
    x.family("edge_agent_events_committed", "counter", "Events committed to the outbox.",
             [({}, p.counters.committed)])
    x.family("edge_agent_events_dropped", "counter",
             "Events dropped before the outbox (pending queue full).", [({}, p.counters.dropped)])
    x.family("edge_agent_events_rejected", "counter",
             "Events refused by the pipeline (unknown type or bad data).",
             [({}, p.counters.rejected)])
    x.family("edge_agent_events_sent", "counter", "Events published to the broker (resends "
             "included).", [({}, u.events_sent)])
    x.family("edge_agent_events_acked", "counter", "Events acknowledged by the collector.",
             [({}, u.events_acked)])
    x.family("edge_agent_events_evicted", "counter",
             "Events evicted from a full outbox since it was created.", [({}, o.evicted_total)])
    x.family("edge_agent_batches_sent", "counter", "Batches published.", [({}, u.batches_sent)])
    x.family("edge_agent_batch_resends", "counter", "Batches sent again (no ack in time).",
             [({}, u.resends)])
    x.family("edge_agent_pipeline_pending_events", "gauge",
             "Events in memory waiting for their outbox commit.", [({}, p.pending)])
    x.family("edge_agent_outbox_events", "gauge", "Events waiting in the outbox.",
             [({}, o.events)])
    x.family("edge_agent_outbox_bytes", "gauge", "Bytes of events waiting in the outbox.",
             [({}, o.bytes)])
    x.family("edge_agent_outbox_max_bytes", "gauge", "Configured outbox cap.",
             [({}, view.cfg.outbox.max_bytes)])
    age = 0.0 if o.oldest_created is None else max(0.0, now - o.oldest_created)
    x.family("edge_agent_outbox_oldest_age_seconds", "gauge",
             "Age of the oldest event waiting (0 when empty).", [({}, round(age, 3))])
    x.family("edge_agent_uplink_connected", "gauge", "1 while connected to the broker.",
             [({}, u.connected)])
    x.family("edge_agent_uplink_state_since_timestamp_seconds", "gauge",
             "Unix time the uplink last connected or went offline.", [({}, u.since)])
    x.family("edge_agent_uplink_last_ack_timestamp_seconds", "gauge",
             "Unix time of the last collector ack (0: none yet).", [({}, u.last_ack_at or 0.0)])
    x.family("edge_agent_open_alarms", "gauge", "Alarms raised and not cleared.",
             [({}, len(view.activity.open))])
    devices = sorted(p.devices.values(), key=lambda d: d.id)
    x.family("edge_agent_device_up", "gauge",
             "1 when the device answers (state label: online/offline/error/unknown).",
             [({"device": d.id, "driver": d.driver, "state": str(d.state)},
               str(d.state) == "online") for d in devices])
    x.family("edge_agent_device_poll_errors", "counter", "Failed polls or reads per device.",
             [({"device": d.id, "driver": d.driver}, d.poll_errors) for d in devices])
    x.family("edge_agent_device_events", "counter", "Events minted per device.",
             [({"device": d.id, "driver": d.driver}, d.events) for d in devices])
    return x.text()
