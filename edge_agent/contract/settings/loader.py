"""Strict YAML loading: untrusted text -> pydantic model, with every mistake at once.

The YAML is read defensively from the parser's event stream (never through a YAML
constructor): only the YAML 1.2 core scalars are resolved (`true`/`false`, decimal,
`0o`, `0x`, floats with a dot or exponent, `null`), so the YAML 1.1 traps (`no`,
`on`, `0755`, `1:30`) stay text and a bool or number field rejects them with a
message naming the trap. Tags other than the standard str/int/float/bool/null/map/seq,
merge keys and duplicate keys are issues; aliases, nesting depth and file size are
capped. The data is then validated in pydantic's strict JSON mode, and each error's
`loc` is mapped back to the line and column where the key or value was written.

This module is the public surface; the work is done in private modules, one job each:
`_yaml` (text -> data and positions), `_scalars` (YAML 1.2 scalars, YAML 1.1 traps),
`_messages` (pydantic errors -> issues with hints), `_model_paths` (what a model expects
at a path), `_secret_refs` / `_secret_files` (the secrets a config names, checked
without being read) and `_issues` (`ConfigIssue`, `ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from edge_agent.contract.settings._issues import ConfigError, ConfigIssue, dotted
from edge_agent.contract.settings._messages import validate
from edge_agent.contract.settings._secret_refs import secret_issues
from edge_agent.contract.settings._yaml import (
    MAX_ALIASES,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    Document,
    LibyamlParser,
    read_document,
)

__all__ = [
    "MAX_ALIASES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "ConfigError",
    "ConfigIssue",
    "Document",
    "check_model_secrets",
    "load_model",
    "raise_issues",
    "read_yaml",
]

M = TypeVar("M", bound=BaseModel)

# Defined in a private module, public here (tracebacks and pickles name this module).
ConfigIssue.__module__ = ConfigError.__module__ = __name__

#: The YAML event parser: libyaml's, or None for PyYAML's pure-Python one. Read at each
#: load (tests set it to None to compare the two).
_EventParser: Any = LibyamlParser


def read_yaml(path: str | Path) -> Document:
    """The YAML text of `path` as data with the position of every key and value; the
    problems of the reading itself are in `Document.issues`."""
    return read_document(path, _EventParser)


def load_model(path: str | Path, model: type[M]) -> M:
    """Load `path` as YAML into `model`, raising ConfigError with every issue found."""
    doc = read_yaml(path)
    result, issues = validate(doc, model, doc.root, ())
    raise_issues(doc, issues)
    assert result is not None
    return result


def check_model_secrets(path: str | Path, cfg: BaseModel
                        ) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """(errors, warnings) about the secret files, variables and TLS files `cfg` (loaded
    from `path`) names, each at the file:line of its key. Reads no secret: each file is
    checked for existence, type, size and readability, and warned about when group or
    others may read it; `insecure_skip_verify` is warned about."""
    return secret_issues(read_yaml(path), cfg)


def raise_issues(doc: Document, issues: list[ConfigIssue]) -> None:
    """ConfigError with the reading's issues and those of `issues` not under a path the
    reading already reported, in file order; nothing if there are none."""
    kept = [i for i in issues if not _is_suppressed(doc, i)]
    every = sorted(dict.fromkeys([*doc.issues, *kept]), key=lambda i: (i.line, i.col, i.key))
    if every:
        raise ConfigError(every)


def _is_suppressed(doc: Document, issue: ConfigIssue) -> bool:
    """Drop a validation issue under a path that the YAML reading already reported."""
    return any(
        path and (issue.key == dotted(path) or issue.key.startswith(dotted(path) + "."))
        for path in doc.suppressed
    )
