"""The gateway registry: a gateway speaks only for the place it is registered at.

Loading (strict, every mistake as FILE:LINE:COL), reloading (on change, on SIGHUP, a
broken file keeps the old registry), and a real collector process behind Mosquitto with
the shipped ACL: a gateway account may publish under any district/community in the topic
(`cd/v1/+/+/%u/events`), so the collector must check the place itself.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from collector.cli import main
from collector.config import CollectorConfig
from collector.registry import Place, Registry, RegistryFile, load_registry
from collector.store import open_store
from edge_agent.config import ConfigError, load_model
from edge_agent.contract.topics import GatewayTopics
from edge_agent.contract.wire import Ack
from tests.harness import Proc, collector, collector_yaml, query, wait_for, write_yaml
from tests.test_collector_hostile import District, collector_for, district, encode
from tests.test_collector_mqtt import acks_until, db_rows, district_mosquitto, running
from tests.test_collector_support import (
    COMMUNITY,
    DISTRICT,
    STREET,
    as_dict,
    new_epoch,
    reading,
    topics,
)

__all__ = ["district", "district_mosquitto"]  # fixtures, imported for pytest

HOME = {"district": DISTRICT, "street": STREET, "community": COMMUNITY}


def registry_yaml(path: Path, gateways: dict[str, dict[str, str]]) -> Path:
    lines = ["gateways:"]
    for gw, place in gateways.items():
        lines.append(f"  {gw}: {{district: \"{place['district']}\", street: \"{place['street']}\","
                     f" community: \"{place['community']}\"}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def placed(gateway: str, epoch: str, seq: int, **place: str) -> dict[str, Any]:
    """A valid event of `gateway` claiming `place` (envelope and source agree)."""
    ev = as_dict(reading(gateway, epoch, seq))
    ev.update(place)
    ev["source"] = f"/{ev['district']}/{ev['street']}/{ev['community']}/{gateway}/{ev['subject']}"
    return ev


def topic_of(ev: dict[str, Any]) -> str:
    return GatewayTopics(ev["district"], ev["community"], ev["gateway"]).events


# ---------------------------------------------------------------------- loading


@pytest.mark.parametrize(("text", "line", "message"), [
    ('gateways:\n  gw-a: {district: "37131", street: "s", community: "c"}\n', 2,
     "district"),
    ('gateways:\n  gw-a: {district: "371312", street: "s"}\n', 2, "community"),
    ('gateways:\n  gw-a: {district: "371312", street: "s", community: "c"}\n'
     '  gw-a: {district: "371312", street: "s", community: "d"}\n', 3, "gw-a"),
    ('gateways:\n  gw-a: {district: "371312", street: "s", community: "c", room: 1}\n', 2,
     "room"),
    ('gateways:\n  "gw a": {district: "371312", street: "s", community: "c"}\n', 2, "gw a"),
    ("gateway:\n  gw-a: {}\n", 1, "gateway"),
], ids=["bad district", "missing community", "listed twice", "unknown key", "bad id",
        "misspelt top key"])
def test_registry_mistakes_name_file_and_line(tmp_path: Path, text: str, line: int,
                                              message: str) -> None:
    path = tmp_path / "gateways.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_registry(path, "quarantine")
    rendered = [str(i) for i in caught.value.issues]
    assert any(r.startswith(f"{path}:{line}:") and message in r for r in rendered), rendered


def test_registry_places_and_policy(tmp_path: Path) -> None:
    path = registry_yaml(tmp_path / "gateways.yaml", {"gw-a": HOME})
    registry = load_registry(path, "quarantine")
    assert registry.places == {"gw-a": Place(**HOME)}
    epoch = new_epoch()
    assert registry.misplaced(placed("gw-a", epoch, 1, **HOME)) is None
    assert registry.misplaced(placed("gw-a", epoch, 1, street="x")) == (
        f"street 'x' is not where gateway 'gw-a' is registered (expected street '{STREET}')")
    assert "not in the gateway registry" in (registry.misplaced(placed("gw-b", epoch, 1)) or "")
    assert Registry(registry.places, "accept").misplaced(placed("gw-b", epoch, 1)) is None


def test_registry_file_reloads_on_change_and_on_request(tmp_path: Path) -> None:
    path = registry_yaml(tmp_path / "gateways.yaml", {"gw-a": HOME})
    now = [0.0]
    live = RegistryFile(path, check_every_s=1.0, clock=lambda: now[0])
    assert set(live.current().places) == {"gw-a"}
    registry_yaml(path, {"gw-a": HOME, "gw-b": HOME})
    assert set(live.current().places) == {"gw-a"}  # not looked at again within a second
    now[0] = 1.5
    assert set(live.current().places) == {"gw-a", "gw-b"}
    path.write_text("gateways:\n  gw-c: {district: nope}\n")  # broken: the old one stays
    live.request_reload()
    with structlog.testing.capture_logs() as logs:
        assert set(live.current().places) == {"gw-a", "gw-b"}
    [failed] = [e for e in logs if e["event"] == "gateway_registry_reload_failed"]
    assert any(i.startswith(f"{path}:2:") for i in failed["issues"]), failed
    registry_yaml(path, {"gw-c": HOME})
    live.request_reload()  # SIGHUP: at once, whatever the clock
    assert set(live.current().places) == {"gw-c"}


# ---------------------------------------------------------------------- a real collector process


def start_collector(district: District, tmp_path: Path, **extra: Any) -> Proc:
    """`edge-collector run` as the collector account on the district Mosquitto."""
    secret = tmp_path / "collector.password"
    secret.write_text(district.passwords["collector-c1"] + "\n")
    cfg = collector_yaml(district.broker.url, Path(district.store_url.removeprefix("sqlite:///")))
    cfg["broker"].update(username="collector-c1", password={"file": str(secret)})
    cfg.update(extra)
    proc = collector(write_yaml(tmp_path / "collector.yaml", cfg), tmp_path / "collector.log")
    proc.start()
    wait_for(lambda: "broker_connected" in proc.log_path.read_text() or not proc.alive(), 20,
             "the collector to subscribe")
    assert proc.alive(), proc.log_path.read_text()
    return proc


async def send(district: District, gw: str, events: list[dict[str, Any]],
               seqs: set[int]) -> list[Ack]:
    async with district.gateway(gw) as client:
        for ev in events:
            await client.publish(topic_of(ev), encode([ev]), qos=1)
        return await acks_until(client, seqs)


def test_a_gateway_may_only_speak_for_its_registered_place(
        district: District, tmp_path: Path) -> None:
    gateways = registry_yaml(tmp_path / "gateways.yaml", {"gw-a": HOME})
    proc = start_collector(district, tmp_path, gateways={"file": str(gateways)})
    epoch = new_epoch()
    try:
        elsewhere = [placed("gw-a", epoch, 1, community="371312009009"),
                     placed("gw-a", epoch, 2, street="371312777"),
                     placed("gw-a", epoch, 3, district="110101"),
                     placed("gw-a", epoch, 4)]
        acks = asyncio.run(send(district, "gw-a", elsewhere, {1, 2, 3, 4}))
        assert set().union(*(a.seqs() for a in acks)) == {1, 2, 3, 4}
        assert [a for a in acks if a.committed] == [Ack(epoch, [[4, 4]], [])]
        # gw-b holds an account but is not registered: quarantined, acked.
        b_epoch = new_epoch()
        assert asyncio.run(send(district, "gw-b", [placed("gw-b", b_epoch, 1)], {1})) == [
            Ack(b_epoch, [], [[1, 1]])]
        # Registered now; SIGHUP reloads.
        registry_yaml(gateways, {"gw-a": HOME, "gw-b": HOME})
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        assert asyncio.run(send(district, "gw-b", [placed("gw-b", b_epoch, 2)], {2})) == [
            Ack(b_epoch, [[2, 2]], [])]
        # A broken file on reload: said so, the registry before stays in force.
        gateways.write_text("gateways:\n  gw-b: {district: 12}\n")
        proc.proc.send_signal(signal.SIGHUP)
        assert asyncio.run(send(district, "gw-b", [placed("gw-b", b_epoch, 3)], {3})) == [
            Ack(b_epoch, [[3, 3]], [])]
    finally:
        assert proc.stop() == 0
    db = Path(district.store_url.removeprefix("sqlite:///"))
    assert query(db, "SELECT gateway, seq FROM events ORDER BY gateway, seq") == [
        ("gw-a", 4), ("gw-b", 2), ("gw-b", 3)]
    reasons = [r for (r,) in query(db, "SELECT reason FROM quarantine ORDER BY id")]
    assert len(reasons) == 4, reasons
    assert "community '371312009009' is not where gateway 'gw-a' is registered " \
           f"(expected community '{COMMUNITY}')" in reasons[0]
    assert f"street '371312777' is not where gateway 'gw-a' is registered " \
           f"(expected street '{STREET}')" in reasons[1]
    assert f"district '110101' is not where gateway 'gw-a' is registered " \
           f"(expected district '{DISTRICT}')" in reasons[2]
    assert "gateway 'gw-b' is not in the gateway registry" in reasons[3]
    names = [e["event"] for e in proc.log_events()]
    assert names.count("gateway_registry_loaded") == 2, names
    failed = next(e for e in proc.log_events() if e["event"] == "gateway_registry_reload_failed")
    assert any(i.startswith(f"{gateways}:2:") for i in failed["issues"]), failed


def test_a_broken_gateways_file_stops_the_start_with_file_and_line(tmp_path: Path) -> None:
    gateways = tmp_path / "gateways.yaml"
    gateways.write_text('gateways:\n  gw-a: {district: "371312", street: "s"}\n')
    cfg = collector_yaml("mqtt://127.0.0.1:1", tmp_path / "d.db")
    cfg["gateways"] = {"file": str(gateways), "unregistered": "quarantine"}
    config = write_yaml(tmp_path / "collector.yaml", cfg)
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert f"{gateways}:2:" in result.output and "community" in result.output, result.output
    assert "Traceback" not in result.output
    cfg["gateways"]["unregistered"] = "ignore"
    result = CliRunner().invoke(main, ["run", "--config", str(write_yaml(config, cfg))])
    assert result.exit_code == 2 and "unregistered" in result.output, result.output


async def test_unregistered_gateways_accepted_with_a_warning_when_configured(
        district: District) -> None:
    store = open_store(district.store_url)
    collector_ = collector_for(district, store, registry=lambda: Registry({}, "accept"))
    epoch = new_epoch()
    with structlog.testing.capture_logs() as logs:
        async with running(collector_), district.gateway("gw-a") as gw:
            await gw.publish(topics("gw-a").events, encode([placed("gw-a", epoch, 1)]), qos=1)
            assert await acks_until(gw, {1}) == [Ack(epoch, [[1, 1]], [])]
    store.close()
    assert db_rows(district.store_url, "SELECT seq FROM events") == [(1,)]
    warned = [e for e in logs if e["event"] == "gateway_unregistered"]
    assert warned and warned[0]["gateway"] == "gw-a", logs



def test_the_shipped_collector_configs_and_gateways_files_load() -> None:
    root = Path(__file__).resolve().parent.parent / "configs"
    for name in ("collector.example.yaml", "collector.demo.yaml"):
        cfg = load_model(root / name, CollectorConfig)
        assert cfg.gateways is not None and cfg.gateways.unregistered == "quarantine"
    demo = load_registry(root / "gateways.demo.yaml", "quarantine")
    assert demo.places["gw-demo-01"] == Place(**HOME)  # the place in gateway.demo.yaml
    assert len(load_registry(root / "gateways.example.yaml", "quarantine").places) == 2


def test_every_sighup_on_a_broken_gateways_file_gets_an_answer(
        district: District, tmp_path: Path) -> None:
    """A second broken file (another mistake, or the same one) on SIGHUP is reported again:
    the repeat limiter held back the second `gateway_registry_reload_failed` for 60 s."""
    gateways = registry_yaml(tmp_path / "gateways.yaml", {"gw-a": HOME})
    proc = start_collector(district, tmp_path, gateways={"file": str(gateways)})
    assert proc.proc is not None
    epoch = new_epoch()

    def failures() -> list[dict[str, Any]]:
        return [e for e in proc.log_events() if e["event"] == "gateway_registry_reload_failed"]

    try:
        for n, text in enumerate(["gateways: [\n", "gateways: [1, 2]\n", "gateways: [1, 2]\n"],
                                 start=1):
            gateways.write_text(text)
            proc.proc.send_signal(signal.SIGHUP)
            # the reload is read at the next payload: the registry before stays in force
            assert asyncio.run(send(district, "gw-a", [placed("gw-a", epoch, n)], {n})) == [
                Ack(epoch, [[n, n]], [])]
            wait_for(lambda n=n: len(failures()) >= n, 10, f"reload failure #{n} logged")
    finally:
        assert proc.stop() == 0
    issues = [f["issues"] for f in failures()]
    assert issues[0] != issues[1] and issues[1] == issues[2], issues


def test_sighup_without_a_gateways_file_does_not_end_the_collector(
        district: District, tmp_path: Path) -> None:
    proc = start_collector(district, tmp_path)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(e["event"] == "reload_ignored" for e in proc.log_events()), 10,
             "the collector to say there is nothing to reload")
    assert proc.alive()
    assert proc.stop() == 0
    names = [e["event"] for e in proc.log_events()]
    assert "gateway_registry_missing" in names, names
