"""Validate one MQTT payload (a batch of envelope-v1 events) against the schema and its topic.

Pure: no I/O, no clock. Defensive about hostile input: the size is checked before
parsing, NaN/Infinity and deep nesting are refused, and every rejection carries a
precise reason such as ``event 3 (id 01J…): data.state must be one of ['raised', 'cleared']``.
Beyond the schema: times must be real (`9999-99-99…` matches the pattern), `seq` must be
a JSON integer (not `13.0`), every value must fit the store (`collector.storable`), and
the event's place must be the one its gateway is registered at (`collector.registry`).

Speed: a plainly good event (`collector.fast_envelope`: never looser than the schema)
skips the envelope schema; every other event takes it, which words the reasons. The
envelope schema is compiled without its `allOf` (the per-type `data` rules)
and each type's `data` schema is compiled on its own, so an event is checked by two
small validators instead of eighteen `if/then` branches.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fastjsonschema

from collector.fast_envelope import Rules, plainly_valid
from collector.model import EventRow, Rejected, Verdict
from collector.registry import Registry
from collector.storable import unstorable
from collector.text import storable
from edge_agent.contract import batch_v2
from edge_agent.contract.envelope import CATALOG, schema
from edge_agent.contract.topics import GatewayTopics

_EPOCH_RE = re.compile(r"^[0-9a-f]{16}$")
_MAX_SEQ = 9007199254740991
_ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
#: How much of an untrusted id a reason quotes.
_ID_SHOWN = 40
#: Longest reason kept (a hostile event can make fastjsonschema quote a lot of it).
REASON_MAX = 2000
#: The envelope fields that must equal the topic's segments.
_TOPIC_KEYS = ("district", "community", "gateway")

Check = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = 1024 * 1024
    max_events_per_batch: int = 5000


def _real_time(value: str) -> bool:
    """The time pattern admits `9999-99-99T99:99:99.999Z`; the calendar does not.
    (The pattern is checked too: this looks only at the numbers, faster than strptime.)"""
    try:
        datetime(int(value[0:4]), int(value[5:7]), int(value[8:10]), int(value[11:13]),
                 int(value[14:16]), int(value[17:19]))
    except ValueError:
        return False
    return True


@functools.cache
def _validators() -> tuple[Check, dict[str, Check]]:
    full = copy.deepcopy(schema())
    defs = full.get("$defs", {})
    if "time" in defs:
        defs["time"]["format"] = "real-time"
    formats = {"real-time": _real_time}
    envelope = fastjsonschema.compile({k: v for k, v in full.items() if k != "allOf"},
                                      formats=formats)
    by_type: dict[str, Check] = {}
    for branch in full.get("allOf", []):
        type_ = branch["if"]["properties"]["type"]["const"]
        data_schema = branch["then"]["properties"]["data"]
        by_type[type_] = fastjsonschema.compile({"$defs": defs, **data_schema}, formats=formats)
    plain_object = fastjsonschema.compile({"type": "object"})
    for type_ in CATALOG:
        by_type.setdefault(type_, plain_object)
    return envelope, by_type


@functools.cache
def _fast_rules() -> Rules | None:
    return Rules.of(schema())


def _describe(exc: fastjsonschema.JsonSchemaValueException, *, in_data: bool) -> str:
    """fastjsonschema names the root `data`; rename it to what the reader knows."""
    name = exc.name or "data"
    text = exc.message[len(name):].lstrip() if exc.message.startswith(name) else exc.message
    where = name if in_data else (name[5:] if name.startswith("data.") else "event")
    if exc.rule == "required" and isinstance(exc.value, dict):
        missing = [k for k in (exc.rule_definition or []) if k not in exc.value]
        return f"{where} is missing {', '.join(missing)}"
    if exc.rule == "format" and exc.rule_definition == "real-time":
        return (f"{where} {exc.value!r} is not a real date and time "
                "(YYYY-MM-DDTHH:MM:SS.mmmZ, UTC)")
    return f"{where} {text}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_kind(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string",
            type(None): "null"}.get(type(value), type(value).__name__)


#: One encoder for every event (`json.dumps` with options builds a new one per call).
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _compact(obj: Any) -> str:
    return _COMPACT.encode(obj)


def _raw(obj: Any) -> bytes:
    """The event as quarantine keeps it; a lone surrogate is kept as its `\\udXXX` escape."""
    try:
        return _compact(obj).encode()
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode()


def _ack_key(obj: dict[str, Any]) -> tuple[str | None, int | None]:
    """The (epoch, seq) of a rejected event when both are well formed, for the ack."""
    epoch, seq = obj.get("epoch"), obj.get("seq")
    ok_epoch = epoch if isinstance(epoch, str) and _EPOCH_RE.match(epoch) else None
    ok_seq = seq if type(seq) is int and 1 <= seq <= _MAX_SEQ else None
    return ok_epoch, ok_seq


def _problem(obj: dict[str, Any], topic: GatewayTopics, registry: Registry | None) -> str | None:
    """The first thing wrong with one decoded event object, or None."""
    rules = _fast_rules()
    if rules is not None and plainly_valid(obj, topic, rules):
        try:
            _validators()[1][obj["type"]](obj["data"])
        except fastjsonschema.JsonSchemaValueException as exc:
            return _describe(exc, in_data=True)
        return registry.misplaced(obj) if registry is not None else None
    return full_problem(obj, topic, registry)


def full_problem(obj: dict[str, Any], topic: GatewayTopics,
                 registry: Registry | None) -> str | None:
    """`_problem` without the fast path: every rule checked, in the order the reasons
    name them."""
    envelope, by_type = _validators()
    type_ = obj.get("type")
    data_check = by_type.get(type_) if isinstance(type_, str) else None
    if data_check is None:
        return f"type {type_!r} is not in catalog v1" if "type" in obj else "event is missing type"
    try:
        envelope(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        return _describe(exc, in_data=False)
    try:
        data_check(obj["data"])
    except fastjsonschema.JsonSchemaValueException as exc:
        return _describe(exc, in_data=True)
    if type(obj["seq"]) is not int:
        return f"seq must be a JSON integer, not {obj['seq']!r}"
    if obj["gateway"] != topic.gateway or obj["district"] != topic.district \
            or obj["community"] != topic.community:
        key = next(k for k in _TOPIC_KEYS if obj[k] != getattr(topic, k))
        return f"{key} {obj[key]!r} differs from the topic's {getattr(topic, key)!r}"
    expected = f"/{obj['district']}/{obj['street']}/{obj['community']}/{obj['gateway']}/" \
               f"{obj['subject']}"
    if obj["source"] != expected:
        return (f"source {obj['source']!r} does not match its hierarchy and subject "
                f"(expected {expected!r})")
    return registry.misplaced(obj) if registry is not None else None


def check_event(index: int, obj: Any, topic: GatewayTopics,
                registry: Registry | None = None) -> EventRow | Rejected:
    """Validate one decoded event from the batch at position `index` (0-based).

    `registry`: where each gateway is registered; None accepts any place.
    """
    if not isinstance(obj, dict):
        return Rejected(f"event {index}: is a JSON {_json_kind(obj)}, expected an object",
                        _raw(obj))
    problem = _problem(obj, topic, registry)
    data_text = ""
    if problem is None:
        data_text = _compact(obj["data"])
        problem = unstorable(obj, data_text)
    if problem is not None:
        given_id = obj.get("id") if isinstance(obj.get("id"), str) else None
        label = f"event {index} (id {storable(given_id, _ID_SHOWN)})" if given_id \
            else f"event {index}"
        event_id = given_id if given_id and _ULID_RE.match(given_id) else None
        epoch, seq = _ack_key(obj)
        return Rejected(storable(f"{label}: {problem}", REASON_MAX), _raw(obj), event_id, epoch,
                        seq)
    return EventRow(
        id=obj["id"], type=obj["type"], source=obj["source"], district=obj["district"],
        street=obj["street"], community=obj["community"], gateway=obj["gateway"],
        device=obj["subject"], time=obj["time"], epoch=obj["epoch"], seq=obj["seq"],
        severity=obj["severity"], data=data_text,
    )


def check_payload(payload: bytes, topic: GatewayTopics, limits: Limits = Limits(),
                  registry: Registry | None = None) -> Verdict:
    """Split one MQTT payload into accepted rows and quarantine entries."""
    if len(payload) > limits.max_payload_bytes:
        return _whole(payload, f"batch on {_on(topic)}: payload of {len(payload)} bytes exceeds "
                               f"ingest.max_payload_bytes ({limits.max_payload_bytes})")
    if batch_v2.is_v2(payload):
        return _check_v2(payload, topic, limits, registry)
    where = f"v1 batch on {_on(topic)}"
    try:
        decoded = json.loads(payload, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        return _whole(payload, f"{where}: payload is not UTF-8 JSON: {exc.reason} at byte "
                               f"{exc.start}")
    except ValueError as exc:
        return _whole(payload, f"{where}: payload is not JSON: {exc}")
    except RecursionError:
        return _whole(payload, f"{where}: payload is not JSON we accept: nested too deeply")
    if isinstance(decoded, dict):
        decoded = [decoded]
    elif not isinstance(decoded, list):
        return _whole(payload, f"{where}: payload is a JSON {_json_kind(decoded)}; expected an "
                               "array of events or one event object")
    if len(decoded) > limits.max_events_per_batch:
        return _whole(payload, f"{where}: batch of {len(decoded)} events exceeds "
                               f"ingest.max_events_per_batch ({limits.max_events_per_batch})")
    return _check_events(decoded, topic, registry)


def _on(topic: GatewayTopics) -> str:
    """Where a whole payload was refused, for its reason: `cd/v1/…/gw-b/events (gateway
    gw-b)`, as v1 and v2 reasons name it."""
    return f"{topic.events} (gateway {topic.gateway})"


def _check_v2(payload: bytes, topic: GatewayTopics, limits: Limits,
              registry: Registry | None) -> Verdict:
    """A v2 batch (`contract.batch_v2`): expanded within `max_payload_bytes` after
    decompression; its framing and its batch-level place checked once, then every event
    as in v1 (the fast path included)."""
    where = f"v2 batch on {_on(topic)}"
    try:
        common, decoded = batch_v2.decode(payload, max_bytes=limits.max_payload_bytes,
                                          max_events=limits.max_events_per_batch)
    except batch_v2.BatchV2Error as exc:
        return _whole(payload, f"{where}: {exc}")
    for key in _TOPIC_KEYS:
        if common[key] != getattr(topic, key):
            # the gateway speaks for itself only: every event is refused, each named by
            # its (epoch, seq) so that the edge is told (acked as rejected), as in v1
            reason = (f"{where}: batch {key} {common[key]!r} differs from the topic's "
                      f"{getattr(topic, key)!r}")
            return Verdict(rejected=[_refused(index, obj, reason)
                                     for index, obj in enumerate(decoded)])
    return _check_events(decoded, topic, registry)


def _refused(index: int, obj: Any, reason: str) -> Rejected:
    if not isinstance(obj, dict):
        return Rejected(storable(f"event {index}: {reason}", REASON_MAX), _raw(obj))
    given_id = obj.get("id") if isinstance(obj.get("id"), str) else None
    epoch, seq = _ack_key(obj)
    return Rejected(storable(f"event {index}: {reason}", REASON_MAX), _raw(obj),
                    given_id if given_id and _ULID_RE.match(given_id) else None, epoch, seq)


def _check_events(decoded: list[Any], topic: GatewayTopics,
                  registry: Registry | None) -> Verdict:
    verdict = Verdict()
    for index, obj in enumerate(decoded):
        result = check_event(index, obj, topic, registry)
        if isinstance(result, EventRow):
            verdict.accepted.append(result)
        else:
            verdict.rejected.append(result)
    return verdict


def _whole(payload: bytes, reason: str) -> Verdict:
    return Verdict(rejected=[Rejected(storable(reason, REASON_MAX), payload)])
