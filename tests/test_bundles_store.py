"""The store's crash safety with an injected crash at every step (hypothesis over sequences
of installs and rollbacks), the agent runtime's probation bookkeeping on start, and every
shipped driver folder packing into a bundle that verifies."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.bundles.format import Accepted, Trust, verify
from edge_agent.bundles.journal import read_from
from edge_agent.bundles.keys import keyid
from edge_agent.bundles.model import Installed
from edge_agent.bundles.pack import pack
from edge_agent.bundles.runtime import DriverRuntime
from edge_agent.bundles.store import CRASH_POINTS, Store
from edge_agent.config.models import DriversConfig
from edge_agent.contract.envelope import Event, Hierarchy
from edge_agent.sdk.api import NullSink
from edge_agent.sdk.config import DeviceConfig

ROOT = Path(__file__).resolve().parents[1]
KEY = Ed25519PrivateKey.generate()
TRUST = Trust({keyid(KEY.public_key()): KEY.public_key()})
H = Hierarchy(district="371312", street="s1", community="c1", gateway="gw-s")


class Crash(Exception):
    pass


def _accepted(version: str, mv: int = 1) -> Accepted:
    _, data = pack(ROOT / "drivers/simulated", name="simulated", version=version, keys=[KEY],
                   expires_days=1, metadata_version=mv, requires_agent=">=0")
    verdict = verify(data, trust=TRUST, installed=Installed(), agent_version="0.1.0",
                     now=datetime.now(UTC))
    assert isinstance(verdict, Accepted)
    return verdict


VERSIONS = {v: _accepted(v) for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0")}


def _check(store: Store) -> None:
    """The invariant: `current` is absent or names a complete version directory."""
    active = store.active_dir("simulated")
    if active is not None:
        assert (active / "drivers/simulated/__init__.py").is_file()
        assert any(active.glob("*.dist-info/RECORD"))
    st_ = store.state("simulated")
    assert st_.active == store.linked("simulated")


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["install", "rollback"]),
                                st.sampled_from(sorted(VERSIONS)),
                                st.sampled_from((*CRASH_POINTS, None))), max_size=6))
def test_a_crash_at_any_step_leaves_a_complete_active_version(
        tmp_path_factory: pytest.TempPathFactory,
        steps: list[tuple[str, str, str | None]]) -> None:
    root = tmp_path_factory.mktemp("store")
    for action, version, point in steps:
        def crash(at: str, point: str | None = point) -> None:
            if at == point:
                raise Crash(at)

        store = Store(root, keep_versions=2, crash=crash)  # a fresh process after a crash
        try:
            with store.locked():
                if action == "install" and store.state("simulated").active != version:
                    store.install(VERSIONS[version], probation_s=1)
                elif action == "rollback" and store.state("simulated").active is not None:
                    store.switch_back("simulated", "test", builtin=True)
        except Crash:
            pass
        _check(Store(root))


def _runtime(tmp: Path, probation_s: float = 5) -> tuple[DriverRuntime, list[Event]]:
    sent: list[Event] = []

    async def commit(events: list[Event]) -> None:
        sent.extend(events)

    from drivers.simulated import SimulatedDevice

    dev: DeviceConfig = SimulatedDevice(id="w1", driver="simulated", kind="water")
    rt = DriverRuntime(DriversConfig(probation_s=probation_s), Store(tmp), [dev], NullSink(),
                       H, commit)
    return rt, sent


def test_probation_interrupted_twice_is_rolled_back_on_the_third_start(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.locked():
        store.install(VERSIONS["1.0.0"], probation_s=5)
        store.record({"event": "installed", "driver": "simulated", "version": "1.0.0"})
    for attempt in (1, 2):
        rt, _ = _runtime(tmp_path)
        rt.build_all()
        st_ = store.state("simulated")
        assert (st_.active, st_.state, st_.attempts) == ("1.0.0", "probation", attempt)
    rt, sent = _runtime(tmp_path)
    rt.build_all()
    st_ = store.state("simulated")
    assert (st_.active, st_.state, st_.rolled_back) == (None, "committed", "1.0.0")
    assert "interrupted" in st_.reason
    asyncio.run(rt.tick())
    assert [e.type for e in sent] == ["gateway.driver_installed", "gateway.driver_rolled_back"]
    asyncio.run(rt.tick())  # the offset moved: nothing twice
    assert len(sent) == 2
    # a kill before the offset write sends the entries again with the same ids
    (tmp_path / "journal.offset").write_text("0\n")
    again, resent = _runtime(tmp_path)
    asyncio.run(again.tick())
    assert [e.id for e in resent] == [e.id for e in sent]
    assert len({e.id for e in sent}) == 2 and all(len(e.id) == 26 for e in sent)
    assert [e for _, e in read_from(tmp_path, 0)][1]["event"] == "rolled_back"


@pytest.mark.parametrize("name", ["simulated", "modbus", "serial_line", "onvif"])
def test_every_shipped_driver_folder_packs_into_a_bundle_that_verifies(name: str) -> None:
    _, data = pack(ROOT / "drivers" / name, name=name, version="9.0.0", keys=[KEY],
                   expires_days=1, metadata_version=1, requires_agent=">=0.1")
    verdict = verify(data, trust=TRUST, installed=Installed(), agent_version="0.1.0",
                     now=datetime.now(UTC))
    assert isinstance(verdict, Accepted), verdict
    assert f"drivers/{name}/__init__.py" in verdict.files
