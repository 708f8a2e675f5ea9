"""ONVIF event topics -> catalog types: a pure, data-driven table.

A camera's notification names a topic (`tns1:RuleEngine/CellMotionDetector/Motion`),
source items (which video source, which analytics rule) and data items (`IsMotion` =
true). `map_notification` turns one into a `Mapped` observation, or None for topics the
catalog has no type for. Stateful topics (motion, tamper, intrusion, signal loss) carry
`active`; pulses (a line crossed) carry `active=None` and become one record each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["CAMERA_EVENT_TYPES", "RULES", "Mapped", "Notification", "TopicRule",
           "map_notification", "normalize_topic"]


@dataclass(frozen=True)
class Notification:
    """One ONVIF NotificationMessage, reduced to text (from `notifications.parse_messages`)."""

    topic: str
    source: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    #: Initialized / Changed / Deleted for property events, "" for others
    operation: str = ""
    utc_time: float | None = None


@dataclass(frozen=True)
class TopicRule:
    #: regex over the normalized topic (prefix stripped), case-insensitive
    pattern: str
    type: str
    #: data items holding the state, first found wins; empty: a pulse
    state_items: tuple[str, ...] = ()
    #: `reason` put in the event data (tamper, video loss)
    reason: str = ""


@dataclass(frozen=True)
class Mapped:
    type: str
    #: True raised, False cleared, None a pulse (a record, no state)
    active: bool | None
    #: which alarm this is on the camera: the type plus its source items
    key: str
    data: dict[str, str]


#: The table, most specific first. Topics from ONVIF Core/Analytics specs and the usual
#: vendor spellings (the `tns1:` prefix is removed before matching).
RULES: tuple[TopicRule, ...] = (
    TopicRule(r"RuleEngine/CellMotionDetector/Motion", "camera.motion", ("IsMotion", "State")),
    TopicRule(r"RuleEngine/MotionRegionDetector/Motion", "camera.motion", ("State", "IsMotion")),
    TopicRule(r"VideoSource/MotionAlarm", "camera.motion", ("State", "IsMotion")),
    TopicRule(r"RuleEngine/TamperDetector/Tamper", "camera.tamper", ("IsTamper", "State"),
              "tamper"),
    TopicRule(r"VideoSource/ImageTooBlurry(/.*)?", "camera.tamper", ("State",), "image_too_blurry"),
    TopicRule(r"VideoSource/ImageTooDark(/.*)?", "camera.tamper", ("State",), "image_too_dark"),
    TopicRule(r"VideoSource/ImageTooBright(/.*)?", "camera.tamper", ("State",),
              "image_too_bright"),
    TopicRule(r"VideoSource/GlobalSceneChange(/.*)?", "camera.tamper", ("State",),
              "global_scene_change"),
    TopicRule(r"VideoSource/SignalLoss", "camera.video_loss", ("State",), "signal_loss"),
    TopicRule(r"RuleEngine/FieldDetector/ObjectsInside", "camera.intrusion", ("IsInside",)),
    TopicRule(r"RuleEngine/LineDetector/Crossed", "camera.line_crossing", ()),
)

_COMPILED = tuple((re.compile(rf"^{r.pattern}$", re.IGNORECASE), r) for r in RULES)

#: Catalog types this driver emits from camera topics (and snapshots may be taken for).
CAMERA_EVENT_TYPES = frozenset(r.type for r in RULES)

_TRUE, _FALSE = {"true", "1", "on", "yes"}, {"false", "0", "off", "no"}
_SOURCE_KEYS = {
    "video_source": ("VideoSourceToken", "VideoSourceConfigurationToken", "Source",
                     "InputToken"),
    "rule": ("Rule", "RuleName"),
}


def normalize_topic(topic: str) -> str:
    """`tns1:RuleEngine/CellMotionDetector/Motion//.` -> `RuleEngine/CellMotionDetector/Motion`."""
    text = topic.strip()
    parts = [p.split(":", 1)[-1] for p in text.split("/")]
    while parts and parts[-1] in ("", "."):
        parts.pop()
    return "/".join(p for p in parts if p)


def _state(data: dict[str, str], names: tuple[str, ...]) -> bool | None:
    lowered = {k.lower(): v.strip().lower() for k, v in data.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
    return None


def map_notification(msg: Notification) -> Mapped | None:
    """The catalog observation of one notification, or None (unmapped topic, no state)."""
    topic = normalize_topic(msg.topic)
    rule = next((r for regex, r in _COMPILED if regex.match(topic)), None)
    if rule is None:
        return None
    data: dict[str, str] = {"onvif_topic": topic}
    for out, names in _SOURCE_KEYS.items():
        value = next((msg.source[n] for n in names if msg.source.get(n)), None)
        if value:
            data[out] = value[:64]
    if rule.reason:
        data["reason"] = rule.reason
    key = "|".join([rule.type, rule.reason, *(f"{k}={v}" for k, v in sorted(msg.source.items()))])
    if not rule.state_items:
        if msg.operation.lower() == "initialized":
            return None  # a pulse topic's initial state is no crossing
        return Mapped(rule.type, None, key, data)
    active = _state(msg.data, rule.state_items)
    if msg.operation.lower() == "deleted":
        active = False
    if active is None:
        return None
    return Mapped(rule.type, active, key, data)
