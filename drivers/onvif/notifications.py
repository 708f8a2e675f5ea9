"""PullMessages replies (zeep objects) -> `topics.Notification`s, read defensively.

Cameras differ: the message may be a parsed `tt:Message` or a raw lxml element, items
may be missing, names may repeat. Anything odd yields fewer notifications, never an
exception; every string is bounded and cleaned of control and bidi characters.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from lxml import etree

from .topics import Notification

__all__ = ["one_line", "parse_messages"]

_MAX_TEXT = 256
_MAX_ITEMS = 32


def one_line(text: str) -> str:
    """A camera-supplied text on one line: control, format (bidi overrides such as U+202E)
    and line/paragraph separators become spaces."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _s(value: Any) -> str:
    """A camera-supplied value as bounded one-line text."""
    return "" if value is None else one_line(str(value)[:_MAX_TEXT])


def _items(block: Any) -> dict[str, str]:
    if block is None:
        return {}
    if isinstance(block, etree._Element):
        found = (el for el in block.iter() if isinstance(el.tag, str)
                 and etree.QName(el).localname == "SimpleItem" and el.get("Name"))
        return {_s(el.get("Name")): _s(el.get("Value"))
                for el in itertools.islice(found, _MAX_ITEMS)}
    items = getattr(block, "SimpleItem", None) or []
    out: dict[str, str] = {}
    for item in list(items)[:_MAX_ITEMS]:
        name = getattr(item, "Name", None)
        if name:
            out[_s(name)] = _s(getattr(item, "Value", ""))
    return out


def _element_child(el: etree._Element, local: str) -> etree._Element | None:
    return next((c for c in el if isinstance(c.tag, str)
                 and etree.QName(c).localname == local), None)


def _one(raw: Any) -> Notification | None:
    topic_obj = getattr(raw, "Topic", None)
    topic = _s(getattr(topic_obj, "_value_1", topic_obj)).strip()
    message = getattr(getattr(raw, "Message", None), "_value_1", None)
    if not topic or message is None:
        return None
    if isinstance(message, etree._Element):
        utc_text = message.get("UtcTime")
        try:
            utc: float | None = (datetime.fromisoformat(utc_text.replace("Z", "+00:00"))
                                 .timestamp() if utc_text else None)
        except ValueError:
            utc = None
        return Notification(topic, _items(_element_child(message, "Source")),
                            _items(_element_child(message, "Data")),
                            _s(message.get("PropertyOperation")), utc)
    when = getattr(message, "UtcTime", None)
    return Notification(topic, _items(getattr(message, "Source", None)),
                        _items(getattr(message, "Data", None)),
                        _s(getattr(message, "PropertyOperation", None)),
                        when.timestamp() if isinstance(when, datetime) else None)


def parse_messages(reply: Any, limit: int = 1024) -> list[Notification]:
    """The notifications of one PullMessages reply (at most `limit`)."""
    raw = getattr(reply, "NotificationMessage", None) or []
    out: list[Notification] = []
    for item in list(raw)[:limit]:
        try:
            parsed = _one(item)
        except (AttributeError, TypeError, ValueError):
            parsed = None
        if parsed is not None:
            out.append(parsed)
    return out
