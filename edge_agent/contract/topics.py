"""MQTT topic contract v1: cd/v1/<district>/<community>/<gateway>/<channel>.

The topics, who publishes and reads each, are tabled in docs/architecture.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PREFIX = "cd/v1"
Channel = Literal["events", "ack", "status", "cmd"]
CHANNELS: tuple[Channel, ...] = ("events", "ack", "status", "cmd")
#: One topic segment (community, gateway, collector id). `\Z`, not `$`: `$` also matches
#: before a trailing newline, and "gw-a\n" is not gw-a.
SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
#: A district: the 6-digit administrative division code.
DISTRICT_RE = re.compile(r"^[0-9]{6}\Z")

#: What a collector subscribes to (prefix with `$share/<group>/` on MQTT v5).
EVENTS_FILTER = f"{PREFIX}/+/+/+/events"
#: Collector presence: each collector keeps `online` retained at
#: `cd/v1/_collectors/<collector-id>/status` while it is subscribed (QoS 1), and its Last
#: Will (or a clean stop) replaces it with `offline`. Every client may read it: an agent
#: resends its in-flight batches at once when a collector comes back or goes away.
COLLECTOR_PRESENCE_FILTER = f"{PREFIX}/_collectors/+/status"
PRESENCE_ONLINE, PRESENCE_OFFLINE = b"online", b"offline"


def collector_presence_topic(collector_id: str) -> str:
    """`cd/v1/_collectors/<collector-id>/status`, where that collector says online/offline."""
    if not SEGMENT_RE.match(collector_id):
        raise TopicError(f"{collector_id!r} is not a valid collector id")
    return f"{PREFIX}/_collectors/{collector_id}/status"


@dataclass(frozen=True, slots=True)
class GatewayTopics:
    district: str
    community: str
    gateway: str

    def topic(self, channel: Channel) -> str:
        return f"{PREFIX}/{self.district}/{self.community}/{self.gateway}/{channel}"

    @property
    def events(self) -> str:
        return self.topic("events")

    @property
    def ack(self) -> str:
        return self.topic("ack")

    @property
    def status(self) -> str:
        return self.topic("status")


class TopicError(ValueError):
    pass


def parse_topic(topic: str) -> tuple[GatewayTopics, Channel]:
    """Split a v1 topic into the gateway it speaks for and its channel."""
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != PREFIX:
        raise TopicError(f"{topic!r}: expected {PREFIX}/<district>/<community>/<gateway>/<channel>")
    district, community, gateway, channel = parts[2:]
    if not re.fullmatch(r"[0-9]{6}", district):
        raise TopicError(f"{topic!r}: district {district!r} is not a 6-digit admin code")
    for name, seg in (("community", community), ("gateway", gateway)):
        if not SEGMENT_RE.match(seg):
            raise TopicError(f"{topic!r}: {name} segment {seg!r} is not a valid id")
    if channel not in CHANNELS:
        raise TopicError(f"{topic!r}: unknown channel {channel!r}; expected one of {CHANNELS}")
    return GatewayTopics(district, community, gateway), channel


def shared_subscription(group: str, topic_filter: str = EVENTS_FILTER) -> str:
    return f"$share/{group}/{topic_filter}"
