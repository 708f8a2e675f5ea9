"""The fleet's state model on real envelopes (validated like the collector does)."""

from __future__ import annotations

import time

from collector.fleet.model import Fleet, Thresholds
from tests.fleet_support import EAST, WEST, Gw

T = Thresholds(heartbeat_s=60)


def everything(_: object) -> bool:
    return True


def apply(fleet: Fleet, events: list[dict[str, object]], at: float) -> None:
    for e in events:
        fleet.apply(e, at)


def gateway(view: dict, gw_id: str) -> dict:
    for d in view["districts"]:
        for s in d["streets"]:
            for c in s["communities"]:
                for g in c["gateways"]:
                    if g["id"] == gw_id:
                        return g
    raise AssertionError(f"{gw_id} not in the view")


def test_alarm_raise_then_clear_and_devices_and_heartbeat() -> None:
    gw, fleet, now = Gw("gw-a"), Fleet(), time.time()
    raised = {"state": "raised", "alarm_id": "smoke-01-1", "density_db_m": 0.9}
    apply(fleet, gw.cloud_events(gw.heartbeat(outbox_events=3, oldest_waiting_s=2.5,
                                              version="1.4.0"),
                                 ("smoke-01", "smoke.alarm", raised),
                                 ("pump-01", "device.offline", {"reason": "timeout"})), now)
    view = fleet.view(now, T, {}, everything, everything)
    g = gateway(view, "gw-a")
    assert g["status"] == "amber" and g["reasons"] == ["devices_offline"]
    assert g["heartbeat"] == {"uptime_s": 10, "outbox_events": 3, "oldest_waiting_s": 2.5,
                              "version": "1.4.0"}
    assert [(a["alarm_id"], a["type"], a["device"], a["severity"]) for a in view["alarms"]] == [
        ("smoke-01-1", "smoke.alarm", "smoke-01", "critical")]
    assert {d["id"]: d["online"] for d in g["devices"]} == {"smoke-01": True, "pump-01": False}

    apply(fleet, gw.cloud_events(("smoke-01", "smoke.alarm", {**raised, "state": "cleared"}),
                                 ("pump-01", "device.online", {"offline_s": 5})), now + 1)
    view = fleet.view(now + 1, T, {}, everything, everything)
    assert view["alarms"] == [] and gateway(view, "gw-a")["status"] == "green"


def test_silent_past_two_heartbeats_is_red_and_gaps_or_backlog_amber() -> None:
    a, b, fleet, now = Gw("gw-a"), Gw("gw-b", WEST), Fleet(), time.time()
    apply(fleet, a.cloud_events(a.heartbeat()), now)
    apply(fleet, b.cloud_events(b.heartbeat(oldest_waiting_s=300, outbox_events=900)), now)
    view = fleet.view(now + 119, T, {"gw-a": (4, 0)}, everything, everything)
    assert gateway(view, "gw-a")["reasons"] == ["gaps"]
    assert gateway(view, "gw-b")["reasons"] == ["backlog"]
    assert view["counts"] == {"red": 0, "amber": 2, "green": 0}
    view = fleet.view(now + 121, T, {"gw-a": (0, 7)}, everything, everything)
    assert gateway(view, "gw-a")["status"] == "red"
    assert gateway(view, "gw-a")["gaps"] == {"unexplained": 0, "explained": 7}
    assert [c["code"] for c in view["districts"][0]["streets"][0]["communities"]] == [EAST, WEST]


def test_a_gateway_clock_ahead_cannot_keep_it_green() -> None:
    gw, fleet, now = Gw("gw-a"), Fleet(), time.time()
    event = gw.cloud_events(gw.heartbeat())[0]
    event["time"] = "2099-01-01T00:00:00.000Z"
    fleet.apply(event, now)
    assert fleet.status(fleet.gateways["gw-a"], now + 121, T, 0)[0] == "red"


def test_scope_hides_other_areas_and_types() -> None:
    a, b, fleet, now = Gw("gw-a"), Gw("gw-b", WEST), Fleet(), time.time()
    apply(fleet, a.cloud_events(("gate-1", "gate.forced_open",
                                 {"state": "raised", "alarm_id": "g1"}),
                                ("smoke-1", "smoke.alarm", {"state": "raised", "alarm_id": "s1"})),
          now)
    apply(fleet, b.cloud_events(("smoke-2", "smoke.alarm", {"state": "raised", "alarm_id": "s2"})),
          now)
    view = fleet.view(now, T, {}, lambda g: g.community == EAST,
                      lambda t: t.startswith("smoke."))
    assert [a["alarm_id"] for a in view["alarms"]] == ["s1"]
    g = gateway(view, "gw-a")
    assert {d["id"]: d["last_type"] for d in g["devices"]} == {"gate-1": None,
                                                                "smoke-1": "smoke.alarm"}
    assert len(view["districts"][0]["streets"][0]["communities"]) == 1
