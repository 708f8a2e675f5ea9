from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from edge_agent.contract import logs
from tests.peers import Mosquitto

# A command run in-process (CliRunner) configures logging; with cached loggers that
# configuration would outlive the test and hide later tests' `capture_logs`.
logs.CACHE_LOGGERS = False


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()
