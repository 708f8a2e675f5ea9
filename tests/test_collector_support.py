"""Helpers shared by the collector tests (no tests here)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from edge_agent.contract.envelope import Event, Hierarchy, new_event
from edge_agent.contract.topics import GatewayTopics
from edge_agent.contract.wire import encode_batch

DISTRICT, STREET, COMMUNITY = "371312", "371312001", "371312001001"


def hierarchy(gateway: str = "gw-a") -> Hierarchy:
    return Hierarchy(district=DISTRICT, street=STREET, community=COMMUNITY, gateway=gateway)


def topics(gateway: str = "gw-a") -> GatewayTopics:
    return GatewayTopics(DISTRICT, COMMUNITY, gateway)


def new_epoch() -> str:
    return secrets.token_hex(8)


def reading(gateway: str, epoch: str, seq: int, device: str = "smoke-01") -> Event:
    ev = new_event(hierarchy(gateway), device, "smoke.reading",
                   {"density_db_m": 0.01 * seq, "temperature_c": 21.5, "battery_pct": 90})
    return ev.stamped(epoch, seq)


def alarm(gateway: str, epoch: str, seq: int, state: str = "raised") -> Event:
    ev = new_event(hierarchy(gateway), "smoke-02", "smoke.alarm",
                   {"state": state, "alarm_id": "a-1", "density_db_m": 0.3})
    return ev.stamped(epoch, seq)


def data_loss(gateway: str, epoch: str, seq: int, ranges: list[list[int]]) -> Event:
    by_type = {"smoke.reading": {"count": sum(b - a + 1 for a, b in ranges),
                                 "first_time": "2026-11-28T00:00:00.000Z",
                                 "last_time": "2026-11-28T01:00:00.000Z"}}
    ev = new_event(hierarchy(gateway), gateway, "gateway.data_loss",
                   {"reason": "outbox_full", "evicted": by_type["smoke.reading"]["count"],
                    "by_type": by_type, "seq_ranges": ranges})
    return ev.stamped(epoch, seq)


def batch(events: list[Event]) -> bytes:
    return encode_batch(e.to_json() for e in events)


def as_dict(ev: Event) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(ev.to_json())
    return loaded


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()
