"""What a pydantic model expects at a path of its data.

Used to word messages: the field names allowed next to an unknown key, whether a path
leads into a secret (so its value is never echoed), whether a field takes a `SecretRef`.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

from edge_agent.contract.settings._issues import KeyPath
from edge_agent.contract.settings.types import SecretRef

_SECRET_NAME = re.compile(r"(password|passwd|secret|token|api_?key|private_key)$", re.I)


def field_names(model: type[BaseModel]) -> list[str]:
    """The keys `model` takes (aliases where it has them), in declaration order."""
    return [info.alias or name for name, info in model.model_fields.items()]


def annotation_at(model: type[BaseModel], rel: KeyPath) -> Any:
    """The annotation of the value at `rel` in `model`'s data; None if there is none."""
    current: Any = model
    for part in rel:
        current = _step(current, part)
        if current is None:
            return None
    return current


def model_at(model: type[BaseModel], rel: KeyPath) -> type[BaseModel] | None:
    for candidate in _unwrap(annotation_at(model, rel)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def is_secret_ref(annotation: Any) -> bool:
    return any(isinstance(t, type) and issubclass(t, SecretRef) for t in _unwrap(annotation))


def is_secret_path(model: type[BaseModel], rel: KeyPath) -> bool:
    """True when any step of the path is a secret field (SecretRef, SecretStr, by name)."""
    for depth in range(1, len(rel) + 1):
        part = rel[depth - 1]
        if isinstance(part, str) and _SECRET_NAME.search(part):
            return True
        for t in _unwrap(annotation_at(model, rel[:depth])):
            if isinstance(t, type) and issubclass(t, (SecretRef, SecretStr, SecretBytes)):
                return True
    return False


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation may hold (Optional/Union/Annotated flattened)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _step(annotation: Any, part: str | int) -> Any:
    for candidate in _unwrap(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            for name, info in candidate.model_fields.items():
                if part in (name, info.alias):
                    return info.annotation
        origin = typing.get_origin(candidate)
        args = typing.get_args(candidate)
        if isinstance(part, int) and origin in (list, tuple, set, frozenset, Sequence) and args:
            return args[0]
        if isinstance(part, str) and origin in (dict, Mapping) and len(args) == 2:
            return args[1]
    return None
