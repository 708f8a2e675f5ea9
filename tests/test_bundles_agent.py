"""The real `edge-agent run` with simulated devices while bundles are installed under it:
live reload loses no event, a crashing or silent bundle is rolled back by probation, every
journal entry becomes one gateway.driver_* event, and SIGKILL of `install` at each crash
point leaves the old or the new version active (the agent then starts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.bundles.store import CRASH_ENV, CRASH_POINTS
from tests.bundle_support import (
    CRASHING,
    EDGE_AGENT,
    SILENT,
    cli,
    gateway_yaml,
    install,
    keygen,
    pack,
    simulated_copy,
)
from tests.harness import query, wait_for
from tests.peers import free_port


@pytest.fixture()
def setup(tmp_path: Path) -> dict[str, Path]:
    keygen(tmp_path / "k1")
    cfg = gateway_yaml(tmp_path, [tmp_path / "k1.pub"], probation_s=1.5,
                       broker=f"mqtt://127.0.0.1:{free_port()}")  # nobody: all stays queued
    return {"tmp": tmp_path, "cfg": cfg, "src": simulated_copy(tmp_path / "src")}


@pytest.fixture()
def agent(setup: dict[str, Path]) -> Iterator[subprocess.Popen[bytes]]:
    log = (setup["tmp"] / "agent.log").open("wb")
    proc = subprocess.Popen([EDGE_AGENT, "run", "--config", str(setup["cfg"])],
                            stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: b"agent_started" in (setup["tmp"] / "agent.log").read_bytes(), 30,
             "the agent's start")
    time.sleep(0.5)
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    log.close()


def _count(db: Path, type_: str) -> int:
    rows = query(db, "SELECT COUNT(*) FROM events WHERE type = ?", type_)
    return int(rows[0][0]) if rows else 0


def _stopped(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM after the agent had a poll to commit the journal's events."""
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def _readings_between(db: Path, device: str, start: float, end: float) -> int:
    return sum(1 for e in _events(db, "water.level")
               if e["subject"] == device and start < _ts(e) < end)


def _ts(event: dict[str, object]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()


def _events(db: Path, type_: str) -> list[dict[str, object]]:
    return [json.loads(b) for (b,) in query(db, "SELECT body FROM events WHERE type = ? "
                                                "ORDER BY seq", type_)]


def test_live_reload_keeps_every_event_and_probation_rolls_back_a_crash(
        setup: dict[str, Path], agent: subprocess.Popen[bytes]) -> None:
    tmp, cfg, db = setup["tmp"], setup["cfg"], setup["tmp"] / "outbox.db"
    t0 = time.time()
    rc, out = install(pack(setup["src"], tmp / "o", "1.1.0", tmp / "k1"), cfg,
                      "--wait", "30")
    assert (rc, out["outcome"], out["previous"]) == (0, "installed", "builtin"), out
    t1 = time.time()
    crash = simulated_copy(tmp / "crash", extra=CRASHING)
    rc, out = install(pack(crash, tmp / "o", "1.2.0", tmp / "k1"), cfg, "--wait", "30")
    assert (rc, out["outcome"]) == (4, "rolled_back"), out
    assert "crashed" in out["reason"] and "boom on start" in out["reason"]
    assert (tmp / "drivers/simulated/current").resolve().name == "1.1.0"
    t2 = time.time()
    _stopped(agent)
    t3 = time.time()
    # every device kept reporting: before, during probation, after the rollback
    for start, end in ((0, t0), (t0, t1), (t2, t3)):
        assert _readings_between(db, "water-1", start, end) > 0, (start, end)
    # nothing lost: the outbox's seqs have no hole and no data_loss was needed
    seqs = [s for (s,) in query(db, "SELECT seq FROM events ORDER BY seq")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert _count(db, "gateway.data_loss") == 0
    installed = _events(db, "gateway.driver_installed")
    assert [e["data"]["version"] for e in installed] == ["1.1.0", "1.2.0"]  # type: ignore[index]
    rolled = _events(db, "gateway.driver_rolled_back")
    assert rolled[0]["data"]["previous"] == "1.2.0"  # type: ignore[index]
    lines = (tmp / "drivers/journal.jsonl").read_bytes()
    assert int((tmp / "drivers/journal.offset").read_text()) == len(lines)


def test_a_silent_bundle_is_rolled_back_for_no_output(
        setup: dict[str, Path], agent: subprocess.Popen[bytes]) -> None:
    tmp = setup["tmp"]
    silent = simulated_copy(tmp / "silent", extra=SILENT)
    rc, out = install(pack(silent, tmp / "o", "1.5.0", tmp / "k1"), setup["cfg"],
                      "--wait", "30")
    assert (rc, out["outcome"]) == (4, "rolled_back"), out
    assert out["reason"].startswith("no output")
    assert not (tmp / "drivers/simulated/current").exists()  # the built-in driver again
    # a repeated push of the same bundle answers the verdict at once, never reruns it
    rc, out = install(tmp / "o/simulated-1.5.0.edgebundle", setup["cfg"])
    assert (rc, out["outcome"]) == (4, "rolled_back"), out
    assert "no output" in out["reason"] and "--force" in out["reason"]
    assert not (tmp / "drivers/simulated/current").exists()
    _stopped(agent)
    rolled = _events(setup["tmp"] / "outbox.db", "gateway.driver_rolled_back")
    assert [e["data"]["version"] for e in rolled] == ["builtin"]  # type: ignore[index]


def test_refusals_and_events_written_while_the_agent_was_stopped_are_sent_once(
        setup: dict[str, Path]) -> None:
    tmp, cfg, db = setup["tmp"], setup["cfg"], setup["tmp"] / "outbox.db"
    rc, _ = install(pack(setup["src"], tmp / "o", "1.1.0", tmp / "k1"), cfg)
    assert rc == 0
    bad = tmp / "bad.edgebundle"
    bad.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    rc, _ = install(bad, cfg)
    assert rc == 3
    for _ in range(2):  # two runs: each journal entry gives one event, not one per run
        proc = subprocess.Popen([EDGE_AGENT, "run", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: json.loads((tmp / "drivers/simulated/state.json").read_text())
                 ["state"] == "committed", 30, "the commit after probation")
        _stopped(proc)
    assert _count(db, "gateway.driver_installed") == 1
    assert _count(db, "gateway.driver_refused") == 1


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_of_install_leaves_the_old_or_the_new_version(
        setup: dict[str, Path], point: str) -> None:
    tmp, cfg = setup["tmp"], setup["cfg"]
    rc, _ = install(pack(setup["src"], tmp / "o", "1.1.0", tmp / "k1"), cfg)
    assert rc == 0
    new = pack(setup["src"], tmp / "o", "1.2.0", tmp / "k1", metadata_version=2)
    res = cli("drivers", "install", str(new), "--config", str(cfg), "--json",
              env={**os.environ, CRASH_ENV: point})
    assert res.returncode == -signal.SIGKILL
    active = (tmp / "drivers/simulated/current").resolve()
    assert active.name in ("1.1.0", "1.2.0")
    assert (active / "drivers/simulated/__init__.py").is_file()
    assert cli("validate", str(cfg), "--skip-secrets").returncode == 0
    listed = json.loads(cli("drivers", "list", "--config", str(cfg), "--json").stdout)
    sim = next(d for d in listed["drivers"] if d["name"] == "simulated")
    assert sim["version"] == active.name
    if point == "switched":  # the state file lags: the agent must start and judge it
        proc = subprocess.Popen([EDGE_AGENT, "run", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: json.loads((tmp / "drivers/simulated/state.json").read_text())
                     ["state"] == "committed", 30, "the commit after probation")
        finally:
            _stopped(proc)
        assert _count(tmp / "outbox.db", "water.level") > 0


def test_a_crashing_bundle_with_nothing_to_go_back_to_stops_its_devices_not_the_agent(
        setup: dict[str, Path]) -> None:
    """A driver that exists only as a bundle (no built-in): its first version crashes in
    probation. It is not switched to a missing built-in: the version stays (the config
    still loads), marked failed, its devices in error, the other drivers keep running."""
    tmp, db = setup["tmp"], setup["tmp"] / "outbox.db"
    cfg = gateway_yaml(tmp, [tmp / "k1.pub"], probation_s=1.5,
                       broker=f"mqtt://127.0.0.1:{free_port()}",
                       devices="\n  - {id: s1, driver: mysim, kind: smoke, period_s: 0.05}"
                               "\n  - {id: water-1, driver: simulated, kind: water, "
                               "period_s: 0.05}")
    crash = pack(simulated_copy(tmp / "crash", extra=CRASHING), tmp / "o", "1.0.0",
                 tmp / "k1", name="mysim")
    assert install(crash, cfg)[0] == 0
    log_path = tmp / "agent.log"

    def start() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            proc = subprocess.Popen([EDGE_AGENT, "run", "--config", str(cfg)], stdout=log,
                                    stderr=subprocess.STDOUT)
        wait_for(lambda: b"agent_started" in log_path.read_bytes() or proc.poll() is not None,
                 30, "the agent's start")
        assert proc.poll() is None, log_path.read_text()[-2000:]
        return proc

    proc = start()
    wait_for(lambda: b'"driver_halted"' in log_path.read_bytes(), 30, "mysim halted")
    t_failed = time.time()
    state = json.loads((tmp / "drivers/mysim/state.json").read_text())
    assert (state["active"], state["state"]) == ("1.0.0", "failed")
    assert "boom on start" in state["reason"]
    assert (tmp / "drivers/mysim/current").resolve().name == "1.0.0"
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    assert any(x.get("event") == "device_state" and x.get("device") == "s1"
               and x.get("state") == "error" and "failed" in str(x.get("reason"))
               for x in lines)
    time.sleep(1.5)
    assert proc.poll() is None
    _stopped(proc)
    assert _readings_between(db, "water-1", t_failed, time.time()) > 0
    rolled = _events(db, "gateway.driver_rolled_back")
    assert [(e["data"]["version"], e["data"]["previous"])  # type: ignore[index]
            for e in rolled] == [("none", "1.0.0")]
    assert "nothing to go back to" in str(rolled[0]["data"]["reason"])  # type: ignore[index]
    # the next start loads the config; the failed version stays halted; a re-push of it
    # answers the verdict; a fixed version is installed live
    proc = start()
    rc, out = install(crash, cfg)
    assert (rc, out["outcome"]) == (4, "rolled_back"), out
    fixed = pack(setup["src"], tmp / "o", "1.1.0", tmp / "k1", name="mysim")
    rc, out = install(fixed, cfg, "--wait", "30")
    assert (rc, out["outcome"], out["previous"]) == (0, "installed", "1.0.0"), out
    _stopped(proc)
