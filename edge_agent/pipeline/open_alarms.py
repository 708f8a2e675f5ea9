"""Alarms raised and not yet cleared, kept across agent restarts.

Without it an agent restarted while a smoke detector is in alarm forgets the raise: if
the alarm still holds, its rules raise it again under a new `alarm_id` (two open alarms
upstream, one of them never cleared); if it ended meanwhile, nothing ever clears it. So
the pipeline records every alarm event here (`record`), and at start a driver's rules
take back what was open for their device (`claim`): the alarm goes on under its old id,
and its clear, whenever the device shows it, names that id.

The file is `open-alarms.json` beside the outbox, replaced atomically (a temporary file,
then `os.replace`). It is not rewritten on every alarm change: `record` only marks the
set changed, and the pipeline's commit loop writes it (`save_if_due`) at most once per
`SAVE_INTERVAL_S` while changes come, and always at a clean stop (`Pipeline.flush`,
`save`). An alarm storm of N raises thus costs a few writes a second, not N writes of a
growing file (O(N^2) bytes on a gateway's flash). It is not fsynced: after a power cut
or a kill -9 it may miss the changes of the last `SAVE_INTERVAL_S` (or more, if the OS
had not written them), which costs at worst what the agent did before (a second raise,
or a clear for an alarm already cleared).

At most `MAX_OPEN` alarms are kept, all devices together: enough for two fire panels
with every zone the serial_line driver tracks in alarm (`drivers.serial_line.alarms.
MAX_ACTIVE`, 10,000 per device) while a runaway device cannot grow the file and memory
without bound. Beyond it the oldest is pushed out, with a warning
(`open_alarms_pushed_out`, rate-limited by the log's repeat limiter) and counted in
`pushed_out`: its raise then stays open upstream if it ends during a restart. Open alarms
that no driver claims at start (a device removed from the config, a driver that does not
restore alarms) are kept until cleared or pushed out.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from edge_agent.contract.envelope import ALARM_TYPES, Event
from edge_agent.contract.logs import get_logger
from edge_agent.sdk.api import OpenAlarm

__all__ = ["MAX_OPEN", "SAVE_INTERVAL_S", "OpenAlarm", "OpenAlarms"]

log = get_logger("edge_agent.pipeline.open_alarms")

#: Open alarms kept at most, all devices together (oldest pushed out first): two fire
#: panels' worth of zones (drivers.serial_line.alarms.MAX_ACTIVE is 10,000 per device).
#: The status page keeps as many (edge_agent.status.activity.OPEN_ALARMS_MAX).
MAX_OPEN = 20_000
#: Changes are written at most this often (the pipeline's loop calls `save_if_due`).
SAVE_INTERVAL_S = 1.0
#: Of a raise's data, the text and number fields are kept (a zone, a rule name), this many.
MAX_DATA_FIELDS = 16


class OpenAlarms:
    def __init__(self, path: Path | None, *, max_open: int = MAX_OPEN,
                 save_interval_s: float = SAVE_INTERVAL_S) -> None:
        self.path = path
        self.max_open = max_open
        self.save_interval_s = save_interval_s
        #: (device, type, alarm_id) -> the raise's plain data fields, in the order raised
        self._open: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
        #: alarms pushed out by newer ones (MAX_OPEN) since the start
        self.pushed_out = 0
        #: changes not yet written to the file
        self.dirty = False
        self._saved_at = -float("inf")  # monotonic time of the last write
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_text("utf-8"))
            entries = [((str(d), str(t), str(a)), _plain(data)) for d, t, a, data in raw["open"]]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("open_alarms_unreadable", path=str(path), error=str(exc)[:200],
                        hint="alarms open before the restart start afresh")
            return
        for key, data in entries:
            self._open[key] = data
        self._trim()
        if self._open:
            log.info("open_alarms_loaded", path=str(path), alarms=len(self._open))

    def __len__(self) -> int:
        return len(self._open)

    def record(self, event: Event) -> None:
        """Take note of an alarm event (any other event is ignored)."""
        if event.type not in ALARM_TYPES:
            return
        alarm_id, state = event.data.get("alarm_id"), event.data.get("state")
        if not isinstance(alarm_id, str):
            return
        key = (event.subject, event.type, alarm_id)
        if state == "raised":
            self._open[key] = _plain(event.data)
            self._trim()
        elif state == "cleared":
            if self._open.pop(key, ...) is ...:
                return
        else:
            return
        self.dirty = True

    def _trim(self) -> None:
        """Push the oldest out beyond `max_open`, with a warning (rate-limited by the
        log's repeat limiter: one line a minute per device, `repeated` says how many more)."""
        while len(self._open) > self.max_open:
            (device, type_, alarm_id), _ = self._open.popitem(last=False)
            self.pushed_out += 1
            self.dirty = True
            log.warning("open_alarms_pushed_out", path=str(self.path), device=device,
                        type=type_, alarm_id=alarm_id, max_open=self.max_open,
                        pushed_out_total=self.pushed_out,
                        hint="more alarms are open than are kept across a restart: the "
                             "oldest is forgotten (if it ends while the agent is down, "
                             "nothing clears it upstream)")

    def claim(self, device: str) -> list[OpenAlarm]:
        """The open alarms of `device`, oldest first, for its driver to go on with. They
        stay recorded until their clear arrives."""
        return [OpenAlarm(type_, alarm_id, dict(data))
                for (dev, type_, alarm_id), data in self._open.items() if dev == device]

    def save_in(self, now: float | None = None) -> float | None:
        """Seconds until changes are due to be written (0: now); None: nothing to write."""
        if not self.dirty or self.path is None:
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, self._saved_at + self.save_interval_s - now)

    def save_if_due(self, now: float | None = None) -> None:
        """Write the changes if the last write is `save_interval_s` old (the pipeline's
        loop calls this; `save_in` says when to come back)."""
        if self.save_in(now) == 0.0:
            self.save()

    def save(self) -> None:
        """Write the changes now (at a clean stop; atomic replace)."""
        if not self.dirty or self.path is None:
            return
        self.dirty = False
        self._saved_at = time.monotonic()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"open": [[*k, data] for k, data in self._open.items()]}),
                           "utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            self.dirty = True  # tried again after the interval
            log.warning("open_alarms_not_saved", path=str(self.path), error=str(exc),
                        hint="alarms are still sent; only their continuation after a "
                             "restart is affected")


def _plain(data: Any) -> dict[str, Any]:
    """The text, number and flag fields of `data` (not state/alarm_id), at most a few."""
    if not isinstance(data, dict):
        raise TypeError("alarm data is not an object")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("state", "alarm_id") or not isinstance(key, str):
            continue
        if isinstance(value, str | int | float | bool) and len(out) < MAX_DATA_FIELDS:
            out[key] = value[:200] if isinstance(value, str) else value
    return out
