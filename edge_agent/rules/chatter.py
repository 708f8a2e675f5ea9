"""Chatter control: an alarm that toggles too often is reported once, not toggle by toggle.

A flapping contact (a loose wire on a fire zone, a bouncing door sensor) makes an alarm
raise and clear many times a minute. Every raise and clear is an alarm event, and alarms
are never evicted from the outbox, so one flapping zone filled a 1 MiB outbox to 13 MB
in 25 s. One `ChatterGuard` per alarm instance (a rule of a device, a zone of a panel)
counts its toggles (raises and clears) in a sliding minute. The toggle that makes more
than `max_toggles_per_min` of them starts *chatter*:

- a `<kind>.chattering` alarm is raised, once, naming the alarm (`alarm_type`), the
  instance's data (e.g. the zone) and the toggles of the last minute;
- the alarm's own raises and clears are counted, not sent, with one exception that keeps
  every fire alarm: a raise while the alarm is reported cleared is sent at once (the alarm
  is then held raised until the chatter ends, so at most one raise per chatter);
- when no toggle was seen for `calm_s` (`settle()`), the alarm's reported state is put
  right: a clear if it ended normal and was reported raised, a raise if it ended in alarm
  and was not; then the chattering alarm is cleared with all the toggles counted, how long
  the chatter lasted and the final state.

The guard decides; the caller (edge_agent.rules.engine, drivers/serial_line/alarms.py) holds the
alarm's ids and emits. `ChatterGuard` is pure: time comes in as an argument.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from edge_agent.config.models import ChatterConfig
from edge_agent.contract.envelope import chatter_type, new_ulid
from edge_agent.contract.logs import get_logger
from edge_agent.sdk.api import EventSink

__all__ = ["WINDOW_S", "Calm", "ChatterGuard", "Verdict", "chatter_alarm_id", "chatter_policy",
           "report_chatter"]

log = get_logger("edge_agent.rules.chatter")

#: The sliding window the toggles are counted in (the setting is per minute).
WINDOW_S = 60.0
#: The schema's limit on `data.alarm_id`.
_ALARM_ID_MAX = 64


@dataclass(frozen=True)
class Verdict:
    """What to do with one toggle of the alarm."""

    send: bool  # emit this raise or clear now
    start: bool  # this toggle starts the chatter: raise the chattering alarm (before it)
    toggles: int  # in the last minute (before and on the start), else in this chatter


@dataclass(frozen=True)
class Calm:
    """The chatter ended: what to report."""

    send: bool  # emit the alarm's actual state (it differs from the reported one)
    toggles: int  # toggles from the start of the chatter on (counted, not sent one by one)
    chatter_s: float  # from the toggle that started it to the last one


class ChatterGuard:
    """The toggles of one alarm instance and whether it is chattering."""

    def __init__(self, policy: ChatterConfig) -> None:
        self.policy = policy
        self._recent: deque[float] = deque(maxlen=policy.max_toggles_per_min + 1)
        self.chattering = False
        self.alarm_id: str | None = None  # of the chattering alarm while it is raised
        self.toggles = 0  # counted in this chatter
        self.started = 0.0
        self.last_toggle = 0.0

    def toggle(self, active: bool, reported: bool, now: float) -> Verdict:
        """The alarm's condition changed to `active`; `reported`: raised as far as the
        events sent say."""
        self.last_toggle = now
        if not self.policy.enabled:
            return Verdict(send=active != reported, start=False, toggles=0)
        if self.chattering:
            self.toggles += 1
            return Verdict(send=active and not reported, start=False, toggles=self.toggles)
        recent = self._recent
        recent.append(now)
        while recent and now - recent[0] >= WINDOW_S:
            recent.popleft()
        if len(recent) <= self.policy.max_toggles_per_min:
            return Verdict(send=active != reported, start=False, toggles=len(recent))
        in_window = len(recent)
        self.chattering, self.started, self.toggles = True, now, 1
        recent.clear()
        return Verdict(send=active and not reported, start=True, toggles=in_window)

    def resume(self, alarm_id: str, now: float) -> None:
        """Go on with a chattering alarm the last run left open (edge_agent.pipeline.open_alarms):
        it is cleared once the alarm has been calm for `calm_s`."""
        self.chattering, self.alarm_id = True, alarm_id
        self.toggles, self.started, self.last_toggle = 0, now, now

    def settle(self, active: bool, reported: bool, now: float) -> Calm | None:
        """If chattering and calm for `calm_s`: end the chatter and say what to report."""
        if not self.chattering or now - self.last_toggle < self.policy.calm_s:
            return None
        calm = Calm(send=active != reported, toggles=self.toggles,
                    chatter_s=round(max(0.0, self.last_toggle - self.started), 3))
        self.chattering, self.toggles = False, 0
        return calm

    @property
    def idle(self) -> bool:
        """Nothing worth keeping: not chattering (a bounded map may drop this guard)."""
        return not self.chattering


def chatter_alarm_id(device: str, alarm_type: str, observed_at: float) -> str:
    """`<device>:<kind>.chattering:<ULID>`; `<kind>.chattering:<ULID>` if that is too long."""
    type_ = chatter_type(alarm_type)
    ulid = new_ulid(int(observed_at * 1000))
    full = f"{device}:{type_}:{ulid}"
    return full if len(full) <= _ALARM_ID_MAX else f"{type_}:{ulid}"


def chatter_policy(sink: EventSink) -> ChatterConfig:
    """The gateway's `alarm_chatter` settings (handed to drivers by the sink); the
    defaults when the sink has none (a test's)."""
    return sink.alarm_chatter or ChatterConfig()


def report_chatter(sink: EventSink, device: str, alarm_type: str, *, suppressed: int,
                   started: bool = False, instance: dict[str, Any] | None = None) -> None:
    """Count toggles not sent on the sink (heartbeat) and log a chatter's start (the
    global RepeatLimiter keeps a flapping device to one line a minute)."""
    sink.chatter_toggles(device, suppressed)
    if started:
        log.warning("alarm_chattering", device=device, type=alarm_type,
                    instance=instance or None,
                    hint="a loose contact or a sensor at its threshold: its raises and clears "
                         "are counted, not sent; check the wiring")
