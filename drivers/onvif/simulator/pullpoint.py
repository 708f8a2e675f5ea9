"""The simulator's PullPoint subscriptions: queues of notification messages."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import deque
from dataclasses import dataclass, field

from .soap import Fault, iso, xml_attr, xml_text

__all__ = ["Message", "Subscription", "Subscriptions", "parse_duration"]

_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def parse_duration(value: str, camera_now: float) -> float:
    """Seconds from `PT60S`-style durations or an absolute xs:dateTime."""
    value = value.strip()
    m = _DURATION.match(value)
    if m and value not in ("P", "PT"):
        d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        return d * 86400 + h * 3600 + mi * 60 + s
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - camera_now
    except ValueError:
        raise Fault("Sender", "ter:InvalidArgVal", f"bad termination time {value!r}") from None


@dataclass(frozen=True)
class Message:
    topic: str
    source: tuple[tuple[str, str], ...]
    data: tuple[tuple[str, str], ...]
    operation: str
    utc: float

    def xml(self) -> str:
        src = "".join(f"<tt:SimpleItem Name={xml_attr(k)} Value={xml_attr(v)}/>"
                      for k, v in self.source)
        dat = "".join(f"<tt:SimpleItem Name={xml_attr(k)} Value={xml_attr(v)}/>"
                      for k, v in self.data)
        op = f" PropertyOperation={xml_attr(self.operation)}" if self.operation else ""
        return ("<wsnt:NotificationMessage><wsnt:Topic Dialect=\"http://www.onvif.org/ver10/"
                f"tev/topicExpression/ConcreteSet\">{xml_text(self.topic)}</wsnt:Topic>"
                f"<wsnt:Message><tt:Message UtcTime=\"{iso(self.utc)}\"{op}>"
                f"<tt:Source>{src}</tt:Source><tt:Data>{dat}</tt:Data></tt:Message>"
                "</wsnt:Message></wsnt:NotificationMessage>")


@dataclass
class Subscription:
    id: str
    expires: float  # camera clock
    queue: deque[Message] = field(default_factory=lambda: deque(maxlen=1000))
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Subscriptions:
    """All live subscriptions; counters for tests (created, renewed, pulls)."""

    def __init__(self) -> None:
        self.live: dict[str, Subscription] = {}
        self._ids = itertools.count(1)
        self.created = self.renewed = self.pulls = self.unsubscribed = 0
        #: the number (1, 2, ... as counted in `pulls`) of the last pull that returned messages
        self.last_delivery = 0

    def create(self, expires: float, initial: list[Message]) -> Subscription:
        sub = Subscription(str(next(self._ids)), expires)
        sub.queue.extend(initial)
        self.live[sub.id] = sub
        self.created += 1
        return sub

    def get(self, sub_id: str, camera_now: float) -> Subscription:
        sub = self.live.get(sub_id)
        if sub is not None and sub.expires < camera_now:
            del self.live[sub_id]
            sub = None
        if sub is None:
            raise Fault("Receiver", "wsrf-rw:ResourceUnknownFault",
                        f"no subscription {sub_id} (expired or never created)")
        return sub

    def publish(self, msg: Message, camera_now: float) -> None:
        for sub_id in list(self.live):
            sub = self.live[sub_id]
            if sub.expires < camera_now:
                del self.live[sub_id]
                continue
            sub.queue.append(msg)
            sub.wake.set()

    def drop_all(self) -> None:
        for sub in self.live.values():
            sub.wake.set()
        self.live.clear()
