"""Responses checked against the API's published OpenAPI file (collector/stream/openapi.yaml):
every route's tests validate what they got with `check`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

import collector.stream

SPEC: dict[str, Any] = yaml.safe_load(
    (Path(collector.stream.__file__).parent / "openapi.yaml").read_text())


def check(path: str, status: int, body: Any) -> None:
    """`body` is what openapi.yaml promises for `path` and `status`."""
    responses = SPEC["paths"][path]["get"]["responses"]
    assert str(status) in responses, f"{path} {status} is not documented"
    resp = responses[str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    schema = resp["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": SPEC["components"]})


def check_sse(kind: str, data: str) -> None:
    """`data` of an SSE message of type `kind` is what openapi.yaml promises for it."""
    media = SPEC["paths"]["/v1/events/stream"]["get"]["responses"]["200"]["content"]
    schema = media["text/event-stream"]["x-event-data"][kind]
    jsonschema.validate(json.loads(data), {**schema, "components": SPEC["components"]})
