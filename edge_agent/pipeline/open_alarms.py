"""Alarms raised and not yet cleared, kept across agent restarts.

Without it an agent restarted while a smoke detector is in alarm forgets the raise: if
the alarm still holds, its rules raise it again under a new `alarm_id` (two open alarms
upstream, one of them never cleared); if it ended meanwhile, nothing ever clears it. So
the pipeline records every alarm event here (`record`), and at start a driver's rules
take back what was open for their device (`claim`): the alarm goes on under its old id,
and its clear, whenever the device shows it, names that id.

The file is `open-alarms.json` beside the outbox, replaced atomically on each change
(alarm changes are rare). It is not fsynced: after a power cut it may miss the last
change, which costs at worst what the agent did before (a second raise, or a clear for
an alarm already cleared). Open alarms that no driver claims at start (a device removed
from the config, a driver that does not restore alarms) are kept until cleared or until
`MAX_OPEN` newer ones push them out.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from edge_agent.contract.envelope import ALARM_TYPES, Event
from edge_agent.contract.logs import get_logger
from edge_agent.sdk.api import OpenAlarm

__all__ = ["MAX_OPEN", "OpenAlarm", "OpenAlarms"]

log = get_logger("edge_agent.pipeline.open_alarms")

#: Open alarms kept at most (oldest dropped first).
MAX_OPEN = 1000
#: Of a raise's data, the text and number fields are kept (a zone, a rule name), this many.
MAX_DATA_FIELDS = 16


class OpenAlarms:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        #: (device, type, alarm_id) -> the raise's plain data fields, in the order raised
        self._open: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
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
        for key, data in entries[-MAX_OPEN:]:
            self._open[key] = data
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
            while len(self._open) > MAX_OPEN:
                self._open.popitem(last=False)
        elif state == "cleared":
            if self._open.pop(key, ...) is ...:
                return
        else:
            return
        self._save()

    def claim(self, device: str) -> list[OpenAlarm]:
        """The open alarms of `device`, oldest first, for its driver to go on with. They
        stay recorded until their clear arrives."""
        return [OpenAlarm(type_, alarm_id, dict(data))
                for (dev, type_, alarm_id), data in self._open.items() if dev == device]

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"open": [[*k, data] for k, data in self._open.items()]}),
                           "utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
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
