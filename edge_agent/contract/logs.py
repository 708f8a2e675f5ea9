"""structlog JSON logging with stable keys (`event`, `level`, `timestamp`, `logger`).

Repeats are rate-limited (`RepeatLimiter`): a warning or error that comes again with the
same event name and the same identity fields (device, gateway, topic, ...) within
`REPEAT_WINDOW_S` is counted, not printed; the next one printed after the window carries
`repeated` (how many were held back) and `repeated_for_s`. Info and debug lines pass.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

#: how long a repeated warning/error stays quiet after it was printed
REPEAT_WINDOW_S = 60.0
#: the fields that tell one repeating problem from another (a device, a topic, ...)
IDENTITY_KEYS = ("logger", "device", "gateway", "camera", "topic", "bus", "port", "host",
                 "path", "stream", "consumer", "subscription", "driver", "reason")
#: how many distinct repeating problems are remembered (oldest forgotten first)
REPEAT_KEYS_MAX = 2048
_LIMITED_LEVELS = frozenset({"warning", "error", "critical", "exception"})
#: structlog's cache_logger_on_first_use; the test suite turns it off (tests/conftest.py)
#: so that a command run in-process cannot pin loggers past `capture_logs`.
CACHE_LOGGERS = True


class RepeatLimiter:
    """A structlog processor that prints a repeating warning/error once per window.

    Pure apart from the clock (injectable). Lines may opt out with `repeat_ok=True`
    (dropped from the output) when each one matters (an audit line, a security refusal
    that must be counted elsewhere anyway).
    """

    def __init__(self, window_s: float = REPEAT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic,
                 max_keys: int = REPEAT_KEYS_MAX) -> None:
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        # key -> [time printed, repeats held back since]
        self._seen: OrderedDict[tuple[Any, ...], list[float]] = OrderedDict()

    def __call__(self, _logger: Any, method: str,
                 event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event_dict.pop("repeat_ok", False) or method not in _LIMITED_LEVELS:
            return event_dict
        key = (method, str(event_dict.get("event")),
               *(_hashable(event_dict.get(k)) for k in IDENTITY_KEYS))
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            raise structlog.DropEvent
        if seen is not None and seen[1]:
            event_dict["repeated"] = int(seen[1])
            event_dict["repeated_for_s"] = round(now - seen[0], 1)
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return event_dict


class RepeatFilter(logging.Filter):
    """`RepeatLimiter` for records of other libraries' (stdlib) loggers: a structlog
    processor may not drop a record inside a logging handler's formatter, a filter may."""

    def __init__(self, limiter: RepeatLimiter | None = None) -> None:
        super().__init__()
        self.limiter = limiter or RepeatLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        fields: dict[str, Any] = {"event": record.getMessage()[:200], "logger": record.name}
        try:
            kept = self.limiter(None, record.levelname.lower(), fields)
        except structlog.DropEvent:
            return False
        if "repeated" in kept:
            record.msg = f"{record.msg} (repeated {kept['repeated']} times in " \
                         f"{kept['repeated_for_s']} s)"
        return True


class ClientErrorFilter(logging.Filter):
    """aiohttp logs a malformed request (a request line too long, a bad header) as an error
    with a traceback that quotes what the client sent, a token in its query string
    included. It is the client's mistake, not ours: one warning naming the kind of error
    and its HTTP status, nothing of what was sent. Runs before `RepeatFilter`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiohttp") or not record.exc_info:
            return True
        exceptions = sys.modules.get("aiohttp.http_exceptions")
        exc = record.exc_info[1]
        if exceptions is None or not isinstance(exc, exceptions.HttpProcessingError):
            return True
        record.msg = f"http_bad_request: {type(exc).__name__} (HTTP {exc.code})"
        record.args = ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


_configured_level = "info"


def configured_level() -> str:
    """The level `configure` was last given (a process this one starts logs at it too)."""
    return _configured_level


def configure(level: str = "info", *, stream: Any = None) -> None:
    """One JSON object per line on stderr; stdlib loggers (aiomqtt, paho) routed through."""
    global _configured_level
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    _configured_level = logging.getLevelName(lvl).lower()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, RepeatLimiter(), structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(ensure_ascii=False)],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=CACHE_LOGGERS,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(ensure_ascii=False)],
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
    ))
    handler.addFilter(ClientErrorFilter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(lvl, logging.INFO))
    # Chatty third-party loggers: warnings and up only.
    for name in ("mqtt", "aiomqtt", "paho"):
        logging.getLogger(name).setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
