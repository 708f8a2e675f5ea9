"""Pydantic validation errors -> `ConfigIssue`s people read.

Data is validated in pydantic's strict JSON mode; each error's `loc` is mapped back to
the line and column where the key or value was written, and its message is reworded:
the YAML 1.1 trap a value fell into, the key an unknown key was probably meant to be,
quotes to add or remove, secrets written inline. A value under a secret key is never
echoed.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from edge_agent.contract.settings._issues import ConfigIssue, KeyPath
from edge_agent.contract.settings._model_paths import (
    annotation_at,
    field_names,
    is_secret_path,
    is_secret_ref,
    model_at,
)
from edge_agent.contract.settings._scalars import is_number
from edge_agent.contract.settings._yaml import Document, Pos

M = TypeVar("M", bound=BaseModel)

_Handler = Callable[[ErrorDetails, str | None], tuple[str, str | None]]


def validate(doc: Document, model: type[M], data: Any, prefix: KeyPath,
             label: str | None = None) -> tuple[M | None, list[ConfigIssue]]:
    """Validate `data` (found at `prefix` in `doc`) in pydantic's strict JSON mode; map
    every error to a ConfigIssue. `label`: the device id the messages name."""
    bad: list[KeyPath] = []
    data = _without_non_finite(data, (), bad)
    issues = [doc.at((*prefix, *rel), for_device(label, "a number out of range (inf or nan)"),
                     "write a finite number (YAML reads 1e400 as infinity)") for rel in bad]
    try:
        validated = model.model_validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        issues += [error_issue(doc, model, prefix, err, label) for err in exc.errors()
                   if tuple(err["loc"]) not in bad]  # its own issue above
        return None, sorted(issues, key=lambda i: (i.line, i.col))
    return (None, issues) if issues else (validated, [])


def _without_non_finite(data: Any, at: KeyPath, bad: list[KeyPath]) -> Any:
    """`data` with each inf/nan (a YAML `1e400`) replaced by None, its path put in `bad`:
    one number out of range is one issue, and every other mistake is still reported."""
    if isinstance(data, float) and not math.isfinite(data):
        bad.append(at)
        return None
    if isinstance(data, dict):
        return {k: _without_non_finite(v, (*at, k), bad) for k, v in data.items()}
    if isinstance(data, list):
        return [_without_non_finite(v, (*at, i), bad) for i, v in enumerate(data)]
    return data


def error_issue(doc: Document, model: type[BaseModel], prefix: KeyPath, err: ErrorDetails,
                label: str | None) -> ConfigIssue:
    """The ConfigIssue of one pydantic error of `model`, validated at `prefix`."""
    loc: KeyPath = (*prefix, *(p if isinstance(p, int) else str(p) for p in err["loc"]))
    rel = loc[len(prefix):]
    secret = is_secret_path(model, rel)
    message, hint = _message(err, model, rel, doc.pos.get(loc), secret)
    if secret:
        message = _redact(message, doc, loc)
    at_key = err["type"] in ("extra_forbidden", "missing")
    return doc.at(loc, for_device(label, message), hint, at_key=at_key)


def for_device(label: str | None, message: str) -> str:
    """`message` naming the device it is about, if it has an id."""
    return f"device `{label}`: {message}" if label else message


def unknown_key(model: type[BaseModel], rel: KeyPath) -> tuple[str, str | None]:
    """Message and hint for the key at `rel` that `model` does not take."""
    key = str(rel[-1])
    parent = model_at(model, rel[:-1])
    names = field_names(parent) if parent is not None else []
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    stem = re.sub(r"_(file|env)$", "", key)
    if stem != key and parent is not None and stem in names \
            and is_secret_ref(annotation_at(parent, (stem,))):
        return (f"unknown key `{key}`; did you mean `{stem}`?",
                f"write {stem}: {{{key.rsplit('_', 1)[1]}: ...}}")
    if close:
        return f"unknown key `{key}`; did you mean `{close[0]}`?", None
    hint = f"allowed keys: {', '.join(names)}" if names else None
    return f"unknown key `{key}`", hint


def _message(err: ErrorDetails, model: type[BaseModel], rel: KeyPath, pos: Pos | None,
             secret: bool) -> tuple[str, str | None]:
    kind = err["type"]
    raw = pos.raw if pos is not None else None
    if kind == "missing":
        return "required key missing", None
    if kind == "extra_forbidden":
        return unknown_key(model, rel)
    if secret and raw and err.get("input") is not None \
            and is_secret_ref(annotation_at(model, rel)):
        return _inline_secret(rel), None
    if pos is not None and raw and pos.trap is not None and kind in _TRAP_KINDS[pos.trap]:
        digits = raw.lstrip("+-0") or "0"
        return _TRAP_MESSAGES[pos.trap].format(raw=raw, digits=digits), None
    handler = _HANDLERS.get(kind)
    message, hint = handler(err, raw) if handler else (_humane(err["msg"]), None)
    if raw and not secret and kind not in ("value_error", "assertion_error"):
        message += f"; got `{_clip(raw)}`"
    return message, hint


_TRAP_KINDS = {
    "bool": {"bool_type", "bool_parsing"},
    "sexagesimal": {"int_type", "int_parsing", "float_type", "float_parsing"},
    "octal": {"int_type", "int_parsing", "float_type", "float_parsing"},
}
_TRAP_MESSAGES = {
    "bool": "`{raw}` is a YAML 1.1 boolean word; write true or false",
    "sexagesimal": "`{raw}` is a YAML 1.1 base-60 number; write the plain number "
                   "(e.g. 1:30 -> 90), or quote it if it is text",
    "octal": "`{raw}` has a leading zero (a YAML 1.1 octal); write 0o{digits} for octal "
             "or the number without leading zeros",
}


def _inline_secret(rel: KeyPath) -> str:
    name = str(rel[-1])
    if rel[-2:] == ("uplink", "password") or rel == ("password",):
        file, env = "/etc/edge-agent/mqtt-password", "EDGE_MQTT_PASSWORD"
    else:
        file = f"/etc/edge-agent/{name.replace('_', '-')}"
        env = "EDGE_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()
    return f"do not write secrets inline; use {name}: {{file: {file}}} or {{env: {env}}}"


def _expected(what: str) -> _Handler:
    return lambda err, raw: (what, None)


def _string_type(err: ErrorDetails, raw: str | None) -> tuple[str, str | None]:
    hint = f'quote the value: "{raw}"' if raw is not None else None
    return "expected text", hint


def _number(what: str) -> _Handler:
    def handler(err: ErrorDetails, raw: str | None) -> tuple[str, str | None]:
        quoted = isinstance(err.get("input"), str) and raw is not None and is_number(raw)
        return what, "remove the quotes" if quoted else None
    return handler


def _mapping(err: ErrorDetails, raw: str | None) -> tuple[str, str | None]:
    if err.get("input") is None:
        return ("has no value; expected a mapping of `key: value` lines",
                "fill it in, or remove the key to use the defaults")
    return "expected a mapping of `key: value` lines", None


def _literal(err: ErrorDetails, raw: str | None) -> tuple[str, str | None]:
    expected = str(err.get("ctx", {}).get("expected", ""))
    hint = None
    if raw is not None and f"'{raw}'" in expected and not isinstance(err.get("input"), str):
        hint = f'quote the value: "{raw}"'
    return f"expected one of {expected}", hint


def _value_error(err: ErrorDetails, raw: str | None) -> tuple[str, str | None]:
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg, None


_HANDLERS: dict[str, _Handler] = {
    "model_type": _mapping,
    "model_attributes_type": _mapping,
    "dict_type": _mapping,
    "list_type": _expected("expected a list (`- item` lines)"),
    "bool_type": _expected("expected true or false"),
    "bool_parsing": _expected("expected true or false"),
    "int_type": _number("expected a whole number"),
    "int_parsing": _number("expected a whole number"),
    "int_from_float": _expected("expected a whole number"),
    "float_type": _number("expected a number"),
    "float_parsing": _number("expected a number"),
    "string_type": _string_type,
    "literal_error": _literal,
    "enum": _literal,
    "value_error": _value_error,
    "assertion_error": _value_error,
}


def _humane(msg: str) -> str:
    for lead in ("Input should ", "String should ", "Value should ", "List should ",
                 "Dictionary should ", "Tuple should ", "Set should "):
        if msg.startswith(lead):
            return "must " + msg[len(lead):]
    return msg


def _clip(text: str, limit: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _redact(message: str, doc: Document, loc: KeyPath) -> str:
    """Remove any scalar written under a secret key from a message, whatever its source."""
    for path, pos in doc.pos.items():
        if path[: len(loc)] == loc and pos.raw and len(pos.raw) >= 3:
            message = message.replace(pos.raw, "***")
    return message
