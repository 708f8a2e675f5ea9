"""Repeated warnings are printed once per window, with a count of what was held back."""

from __future__ import annotations

import io
import json

import structlog

from edge_agent.contract.logs import RepeatLimiter, configure, get_logger


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(limiter: RepeatLimiter, method: str, **kw: object) -> dict[str, object] | None:
    try:
        return dict(limiter(None, method, dict(kw)))
    except structlog.DropEvent:
        return None


def test_repeats_within_the_window_are_counted_then_reported() -> None:
    clock = Clock()
    lim = RepeatLimiter(window_s=60, clock=clock)
    assert run(lim, "warning", event="reconnect", host="a") is not None
    for _ in range(59):
        clock.now += 1
        assert run(lim, "warning", event="reconnect", host="a") is None
    clock.now += 1.5
    out = run(lim, "warning", event="reconnect", host="a")
    assert out is not None and out["repeated"] == 59 and out["repeated_for_s"] == 60.5


def test_identity_fields_keep_problems_apart_and_info_passes() -> None:
    lim = RepeatLimiter(window_s=60, clock=Clock())
    assert run(lim, "error", event="offline", device="d1") is not None
    assert run(lim, "error", event="offline", device="d2") is not None
    assert run(lim, "error", event="offline", device="d1") is None
    assert run(lim, "info", event="offline", device="d1") is not None
    assert run(lim, "info", event="offline", device="d1") is not None
    out = run(lim, "error", event="offline", device="d1", repeat_ok=True)
    assert out is not None and "repeat_ok" not in out


def test_unhashable_identity_and_bounded_memory() -> None:
    lim = RepeatLimiter(window_s=60, clock=Clock(), max_keys=3)
    assert run(lim, "warning", event="x", path=["a", 1]) is not None
    assert run(lim, "warning", event="x", path=["a", 1]) is None
    for i in range(10):
        run(lim, "warning", event="x", device=f"d{i}")
    assert len(lim._seen) == 3


def test_configured_logging_limits_repeats_on_the_wire() -> None:
    stream = io.StringIO()
    try:
        configure(stream=stream)
        log = get_logger("test.logs")
        for _ in range(100):
            log.warning("storm", topic="t/1")
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert len(lines) == 1 and lines[0]["event"] == "storm"
    finally:
        structlog.reset_defaults()


def test_other_libraries_repeats_are_limited_without_a_logging_error() -> None:
    """A stdlib logger (a library's) repeating a warning: printed once, no 'Logging error'."""
    import contextlib
    import logging

    stream, errors = io.StringIO(), io.StringIO()
    try:
        configure(stream=stream)
        with contextlib.redirect_stderr(errors):
            lib = logging.getLogger("some.library")
            for _ in range(50):
                lib.warning("connection to %s lost", "db")
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert [x["event"] for x in lines] == ["connection to db lost"], lines
        assert "Logging error" not in errors.getvalue(), errors.getvalue()
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
