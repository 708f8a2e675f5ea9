from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from collector.store import Store, open_store
from collector.stream.reader import Reader, open_reader
from drivers.modbus import profile as profile_module
from drivers.modbus.profile import SHIPPED_PROFILES, clear_profile_cache
from drivers.onvif.simulator import OnvifSimulator
from edge_agent.contract import logs
from tests.peers import Mosquitto, Postgres

# A command run in-process (CliRunner) configures logging; with cached loggers that
# configuration would outlive the test and hide later tests' `capture_logs`.
logs.CACHE_LOGGERS = False


#: Tests that run a district of real processes (agents, collectors, brokers, PostgreSQL
#: crashes) and bound latencies or timer phases: under `pytest -n 2 --dist loadgroup`
#: (`./run test`) they all run on one worker, one after the other, so two of them never
#: compete for this 2-core box; the other worker runs the light tests beside them.
HEAVY_MODULES = frozenset({
    "test_bench_city", "test_collector_failover", "test_collector_outages", "test_disk_full",
    "test_e2e_delivery", "test_modbus_rtu", "test_stop_wedged_link", "test_stream_district",
    "test_uplink_acks",
})


@pytest.hookimpl(tryfirst=True)  # before xdist reads the `xdist_group` marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        name = module.__name__.rsplit(".", 1)[-1] if module is not None else ""
        if name in HEAVY_MODULES or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("heavy"))


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _print_pending_tasks() -> None:
    """Every unfinished asyncio task's coroutine stack, to stderr: where a hung async test
    waits. pytest-timeout shows the threads' stacks only, and a hung coroutine's thread
    sits in the event loop's select()."""
    for _ in range(3):  # the set may change under us (it belongs to another thread)
        try:
            tasks = [t for t in list(asyncio.tasks._all_tasks) if not t.done()]
            break
        except RuntimeError:
            continue
    else:
        return
    print(f"\n==== {len(tasks)} asyncio tasks pending near the test's timeout ====",
          file=sys.stderr)
    for task in tasks:
        try:
            print(f"-- {task.get_name()}: {_await_chain(task.get_coro())}", file=sys.stderr)
        except Exception as exc:  # diagnostics must not fail the run
            print(f"-- {task!r}: {exc!r}", file=sys.stderr)


def _await_chain(coro: object) -> str:
    """`file:line in function` of each coroutine down the chain of awaits, then what
    the innermost one waits on."""
    steps: list[str] = []
    while coro is not None and len(steps) < 30:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) or \
            getattr(coro, "gi_frame", None)
        if frame is None:
            steps.append(repr(coro)[:200])
            break
        steps.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None) or \
            getattr(coro, "gi_yieldfrom", None)
    return "\n     -> ".join(steps)


@pytest.fixture(autouse=True)
def _tasks_before_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    """Shortly before pytest-timeout fails a test, print where its asyncio tasks wait
    (a CI run hung in an ONVIF test for 90 s with no clue which await it was)."""
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(
        request.config.getini("timeout") or 0)
    if limit < 20:
        yield
        return
    timer = threading.Timer(limit - 5, _print_pending_tasks)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


@pytest.fixture(autouse=True)
def _fresh_profiles() -> Iterator[None]:
    """Every test reads the Modbus profiles it names afresh (the loader caches them per
    process: a profile a test wrote or a search path it patched must not leak)."""
    clear_profile_cache()
    yield
    clear_profile_cache()


@pytest.fixture
async def sim() -> AsyncIterator[OnvifSimulator]:
    """An ONVIF camera simulator on 127.0.0.1 (a free port), no credentials."""
    simulator = OnvifSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def peer_profiles(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shipped profiles and tests/data/modbus (peer-20.yaml) by name."""
    monkeypatch.setattr(profile_module, "DEFAULT_SEARCH_PATH",
                        (SHIPPED_PROFILES, Path(__file__).parent / "data" / "modbus"))
    clear_profile_cache()
    yield
    clear_profile_cache()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL cluster for the session (in /tmp: its owner, `postgres`, must reach it)."""
    workdir = Path(tempfile.mkdtemp(prefix="cd-pg-"))
    server = Postgres(workdir)
    server.start()
    yield server
    # Thrown away: no shutdown checkpoint to wait for. (The session's last teardown took
    # 59 s once with `fast`, and 22-38 s once with this; 0.1 s stop + 1-2 s rmtree when
    # timed: the cause is not pinned down.)
    server.stop("immediate")
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, ready store of each backend (PostgreSQL migrated)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'district.db'}"
    server: Postgres = request.getfixturevalue("postgres")
    url = server.new_database()
    from collector.store.pg_migrate import migrate_url

    migrate_url(url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """The store at `store_url`, open for the test."""
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def reader(store: Store, store_url: str) -> Iterator[Reader]:
    """A stream reader of that store (its own connection)."""
    r = open_reader(store_url)
    yield r
    r.close()
