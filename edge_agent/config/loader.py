"""Strict YAML loading: untrusted text -> pydantic model, with every mistake at once.

The YAML is read defensively from the parser's event stream (never through a YAML
constructor): only the YAML 1.2 core scalars are resolved (`true`/`false`, decimal,
`0o`, `0x`, floats with a dot or exponent, `null`), so the YAML 1.1 traps (`no`,
`on`, `0755`, `1:30`) stay text and a bool or number field rejects them with a
message naming the trap. Tags other than the standard str/int/float/bool/null/map/seq,
merge keys and duplicate keys are issues; aliases, nesting depth and file size are
capped. The data is then validated in pydantic's strict JSON mode, and each error's
`loc` is mapped back to the line and column where the key or value was written.
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError
from pydantic_core import ErrorDetails

from edge_agent.config.models import DeviceConfig, GatewayConfig, SecretRef

_EventParser: Any
try:  # the libyaml parser when PyYAML was built with it
    from yaml.cyaml import CParser as _EventParser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    _EventParser = None

__all__ = [
    "MAX_ALIASES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "ConfigError",
    "ConfigIssue",
    "load_gateway_config",
    "load_model",
]

M = TypeVar("M", bound=BaseModel)
Path_ = tuple[str | int, ...]

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_NODES = 100_000


@dataclass(frozen=True)
class ConfigIssue:
    """One mistake in a config file; `line` and `col` are 1-based."""

    file: str
    line: int
    col: int
    key: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        head = f"{self.file}:{self.line}:{self.col}: "
        if self.key:
            head += f"{self.key}: "
        text = head + self.message
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(Exception):
    """All the issues of one config file; `str()` gives one issue per line."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


# --------------------------------------------------------------------------- public API


def load_model(path: str | Path, model: type[M]) -> M:
    """Load `path` as YAML into `model`, raising ConfigError with every issue found."""
    doc = _read_document(path)
    result, issues = _validate(doc, model, doc.root, ())
    _raise_if(doc, issues)
    assert result is not None
    return result


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Load a gateway config; each device entry is validated by its driver's options.

    The returned `devices` hold instances of the drivers' option models.
    """
    doc = _read_document(path)
    top = {k: v for k, v in doc.root.items() if k != "devices"}
    cfg, issues = _validate(doc, GatewayConfig, top, ())
    devices, device_issues = _validate_devices(doc)
    issues += device_issues
    _raise_if(doc, issues)
    assert cfg is not None
    return _assemble(doc, cfg, devices)


# --------------------------------------------------------------------------- reading


@dataclass
class _Pos:
    """Where one value sits: its key (or list item) and the value itself (0-based)."""

    key_line: int
    key_col: int
    line: int
    col: int
    raw: str | None = None  # the source text of a scalar value
    trap: str | None = None  # a YAML 1.1 trap the plain scalar falls into


@dataclass
class _Document:
    file: str
    root: dict[str, Any] = field(default_factory=dict)
    pos: dict[Path_, _Pos] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)
    suppressed: set[Path_] = field(default_factory=set)  # paths already reported

    def issue(self, line: int, col: int, path: Path_, message: str, hint: str | None = None
              ) -> ConfigIssue:
        return ConfigIssue(self.file, line + 1, col + 1, _dotted(path), message, hint)

    def at(self, path: Path_, message: str, hint: str | None = None, *, at_key: bool = False
           ) -> ConfigIssue:
        line, col = self.locate(path, at_key=at_key)
        return self.issue(line, col, path, message, hint)

    def locate(self, path: Path_, *, at_key: bool = False) -> tuple[int, int]:
        """The nearest known position; a path not written in the file gets its parent's key."""
        known = path
        while known and known not in self.pos:
            known = known[:-1]
        pos = self.pos.get(known)
        if pos is None:
            return 0, 0
        if known != path or at_key or not pos.raw:  # collections and empty values: the key
            return pos.key_line, pos.key_col
        return pos.line, pos.col


class _Fatal(Exception):
    """Stops reading: the issue makes the rest of the file meaningless."""

    def __init__(self, issue: ConfigIssue) -> None:
        super().__init__(str(issue))
        self.issue = issue


def _read_document(path: str | Path) -> _Document:
    doc = _Document(str(path))
    try:
        text = _read_text(doc, Path(path))
        root = _Builder(doc, text).build()
    except _Fatal as exc:
        raise ConfigError([*doc.issues, exc.issue]) from None
    except RecursionError:
        raise ConfigError([doc.issue(0, 0, (), "the file is nested too deeply to read")]) from None
    if root is None:
        raise ConfigError([doc.issue(0, 0, (), "the file holds no settings (it is empty)",
                                     "start from configs/gateway.example.yaml")])
    if not isinstance(root, dict):
        line, col = doc.locate(())
        kind = "a list" if isinstance(root, list) else "a single value"
        raise ConfigError([doc.issue(line, col, (), f"the top level must be a mapping of "
                                     f"`key: value` lines, not {kind}")])
    doc.root = root
    return doc


def _read_text(doc: _Document, path: Path) -> str:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise _Fatal(doc.issue(0, 0, (), "file not found", "check the path")) from None
    except IsADirectoryError:
        raise _Fatal(doc.issue(0, 0, (), "this is a directory, not a config file")) from None
    except PermissionError:
        raise _Fatal(doc.issue(0, 0, (), "cannot read the file: permission denied",
                               "run as a user that may read it")) from None
    except OSError as exc:
        raise _Fatal(doc.issue(0, 0, (), f"cannot read the file: {exc.strerror or exc}")) from None
    if len(data) > MAX_FILE_BYTES:
        raise _Fatal(doc.issue(0, 0, (), f"the file is larger than {MAX_FILE_BYTES} bytes",
                               "a gateway config is a few kilobytes; is this the right file?"))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n")
        col = len(before) - (before.rfind(b"\n") + 1)
        raise _Fatal(doc.issue(line, col, (), "the file is not valid UTF-8 text",
                               "save it as UTF-8")) from None


# --------------------------------------------------------------------------- YAML -> data

_STR = "tag:yaml.org,2002:str"
_SCALAR_TAGS = {_STR, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"}
_MAP_TAGS = {None, "!", "tag:yaml.org,2002:map"}
_SEQ_TAGS = {None, "!", "tag:yaml.org,2002:seq"}

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|false)$", re.IGNORECASE)
_INT10 = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_INT8 = re.compile(r"^0o[0-7]+$")
_INT16 = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(
    r"^[-+]?(?:(?:0|[1-9][0-9]*)\.[0-9]*(?:[eE][-+]?[0-9]+)?"
    r"|\.[0-9]+(?:[eE][-+]?[0-9]+)?|(?:0|[1-9][0-9]*)[eE][-+]?[0-9]+)$"
)
_TRAPS = (
    ("bool", re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$")),
    ("sexagesimal", re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")),
    ("octal", re.compile(r"^[-+]?0[0-9_]+$")),
)
_TAG_OF_TYPE = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str"}


def _resolve_plain(text: str) -> Any:
    """YAML 1.2 core schema resolution of an untagged plain scalar."""
    if _NULL.match(text):
        return None
    if _BOOL.match(text):
        return text.lower() == "true"
    if _INT10.match(text):
        return int(text)
    if _INT8.match(text):
        return int(text[2:], 8)
    if _INT16.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    return text


def _trap_of(text: str) -> str | None:
    for name, pattern in _TRAPS:
        if pattern.match(text):
            return name
    return None


_INVALID_KEY = object()


@dataclass
class _Frame:
    path: Path_
    value: dict[str, Any] | list[Any]
    anchor: str | None
    nodes: int = 1
    key: Any = None  # pending mapping key: None (expect a key), str, or _INVALID_KEY
    key_line: int = 0
    key_col: int = 0
    seen: dict[str, int] = field(default_factory=dict)  # key -> 0-based line
    discard: bool = False  # parsed, then thrown away (a bad key or the value of one)
    is_key: bool = False  # this collection was written where a key belongs


class _Builder:
    """Builds plain data and the position map from the parser's events, iteratively."""

    def __init__(self, doc: _Document, text: str) -> None:
        self.doc = doc
        self.text = text
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.open_anchors: set[str] = set()
        self.aliases = 0
        self.nodes = 0
        self.root: Any = None
        self.documents = 0

    def build(self) -> Any:
        try:
            for event in _events(self.text):
                self._event(event)
        except yaml.MarkedYAMLError as exc:
            raise _Fatal(self._syntax_issue(exc)) from None
        except yaml.reader.ReaderError as exc:
            raise _Fatal(self._reader_issue(exc)) from None
        except yaml.YAMLError as exc:
            raise _Fatal(self.doc.issue(0, 0, (), f"YAML error: {exc}")) from None
        return self.root

    def _reader_issue(self, exc: yaml.reader.ReaderError) -> ConfigIssue:
        before = self.text[: exc.position]
        line, col = before.count("\n"), len(before) - (before.rfind("\n") + 1)
        char = exc.character
        if not isinstance(char, int):
            char = ord(str(char)[:1] or " ")
        return self.doc.issue(line, col, (), f"the character U+{char:04X} is not allowed in "
                              f"YAML ({exc.reason})", "remove it or write it as an escape "
                              "inside double quotes")

    # -- events

    def _event(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                line, col = _mark(event)
                raise _Fatal(self.doc.issue(line, col, (), "a second YAML document "
                                            "(`---`) was found", "keep one document per file"))
        elif isinstance(event, yaml.ScalarEvent):
            self._scalar(event)
        elif isinstance(event, yaml.AliasEvent):
            self._alias(event)
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            self._start(event)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            self._end()

    def _scalar(self, event: yaml.ScalarEvent) -> None:
        line, col = _mark(event)
        if self._expecting_key():
            self._key(event)
            return
        path = self._child_path()
        value, trap = self._scalar_value(event, path)
        pos = self._record(path, line, col)
        if pos is not None:
            pos.raw, pos.trap = event.value, trap
        self._count(1, line, col)
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, 1)
        self._attach(value)

    def _scalar_value(self, event: yaml.ScalarEvent, path: Path_) -> tuple[Any, str | None]:
        text: str = event.value
        if event.tag is None and event.implicit[0]:
            return _resolve_plain(text), _trap_of(text)
        if event.tag in (None, "!", _STR):
            return text, None
        if event.tag in _SCALAR_TAGS:
            value = _resolve_plain(text)
            wanted = event.tag.rsplit(":", 1)[1]
            if wanted == "float" and type(value) is int:
                return float(value), None
            if _TAG_OF_TYPE[type(value)] == wanted:
                return value, None
            self._tag_issue(event, path, f"`{text}` is not a valid {_short_tag(event.tag)}")
            return text, None
        self._tag_issue(event, path, f"the tag {_short_tag(event.tag)} is not allowed")
        return text, None

    def _key(self, event: yaml.ScalarEvent) -> None:
        frame = self.stack[-1]
        line, col = _mark(event)
        key: str = event.value
        frame.key_line, frame.key_col, frame.key = line, col, key
        if event.tag not in (None, "!", _STR):
            self._tag_issue(event, (*frame.path, key), f"the tag {_short_tag(event.tag)} is "
                            "not allowed on a key")
        if key == "<<" and event.implicit[0]:
            self._report(line, col, (*frame.path, key), "merge keys (`<<`) are "
                         "not supported", "write the keys out in full")
            frame.key = _INVALID_KEY
        elif key in frame.seen:
            first = frame.seen[key] + 1
            self._report(line, col, (*frame.path, key), f"duplicate key `{key}`: "
                         f"first on line {first}, again on line {line + 1}",
                         "keep one of them; the first is used", suppress=False)
        frame.seen.setdefault(key, line)

    def _alias(self, event: yaml.AliasEvent) -> None:
        line, col = _mark(event)
        if self._expecting_key():
            self._bad_key(line, col)
            self.stack[-1].key = _INVALID_KEY
            return
        path = self._child_path()
        anchor = event.anchor
        if anchor in self.open_anchors:
            raise _Fatal(self.doc.issue(line, col, path,
                                        f"alias `*{anchor}` refers to itself"))
        if anchor not in self.anchors:
            raise _Fatal(self.doc.issue(line, col, path,
                                        f"alias `*{anchor}` has no anchor `&{anchor}` before it"))
        self.aliases += 1
        if self.aliases > MAX_ALIASES:
            raise _Fatal(self.doc.issue(line, col, path,
                                        f"more than {MAX_ALIASES} aliases (`*name`)",
                                        "write the values out"))
        value, nodes = self.anchors[anchor]
        self._record(path, line, col)
        self._count(nodes, line, col)
        self._attach(value)

    def _start(self, event: yaml.MappingStartEvent | yaml.SequenceStartEvent) -> None:
        line, col = _mark(event)
        is_map = isinstance(event, yaml.MappingStartEvent)
        is_key = self._expecting_key()
        if is_key:
            self._bad_key(line, col)
        discard = is_key or self._discarding()
        path = self._child_path()
        if len(self.stack) >= MAX_DEPTH:
            raise _Fatal(self.doc.issue(line, col, path,
                                        f"nested deeper than {MAX_DEPTH} levels"))
        allowed = _MAP_TAGS if is_map else _SEQ_TAGS
        if event.tag not in allowed:
            self._tag_issue(event, path, f"the tag {_short_tag(event.tag)} is not allowed")
        if not discard:
            self._record(path, line, col)
        self._count(1, line, col, local=False)
        value: dict[str, Any] | list[Any] = {} if is_map else []
        self.stack.append(_Frame(path, value, event.anchor, discard=discard, is_key=is_key))
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)

    def _end(self) -> None:
        frame = self.stack.pop()
        if frame.anchor is not None:
            self.open_anchors.discard(frame.anchor)
            self.anchors[frame.anchor] = (frame.value, frame.nodes)
        if self.stack:
            self.stack[-1].nodes += frame.nodes
        if frame.is_key:
            self.stack[-1].key = _INVALID_KEY
        else:
            self._attach(frame.value)

    # -- helpers

    def _expecting_key(self) -> bool:
        return bool(self.stack) and isinstance(self.stack[-1].value, dict) \
            and self.stack[-1].key is None

    def _discarding(self) -> bool:
        return bool(self.stack) and (self.stack[-1].discard or self.stack[-1].key is _INVALID_KEY)

    def _child_path(self) -> Path_:
        if not self.stack:
            return ()
        frame = self.stack[-1]
        if isinstance(frame.value, list):
            return (*frame.path, len(frame.value))
        key = frame.key if isinstance(frame.key, str) else "?"
        return (*frame.path, key)

    def _record(self, path: Path_, line: int, col: int) -> _Pos | None:
        if self._discarding():
            return None
        key_line, key_col = line, col
        if self.stack and isinstance(self.stack[-1].value, dict):
            key_line, key_col = self.stack[-1].key_line, self.stack[-1].key_col
        pos = _Pos(key_line, key_col, line, col)
        self.doc.pos.setdefault(path, pos)
        return pos

    def _attach(self, value: Any) -> None:
        if not self.stack:
            self.root = value
            return
        frame = self.stack[-1]
        if isinstance(frame.value, list):
            frame.value.append(value)
            return
        if isinstance(frame.key, str):
            frame.value.setdefault(frame.key, value)
        frame.key = None

    def _count(self, nodes: int, line: int, col: int, *, local: bool = True) -> None:
        self.nodes += nodes
        if self.nodes > MAX_NODES:
            raise _Fatal(self.doc.issue(line, col, (), f"the file expands to more than {MAX_NODES} "
                                        "values (too many aliases?)", "write the values out"))
        if local and self.stack:
            self.stack[-1].nodes += nodes

    def _bad_key(self, line: int, col: int) -> None:
        path = self.stack[-1].path
        self._report(line, col, path, "a key must be plain text, not a list, mapping or alias")

    def _tag_issue(self, event: yaml.NodeEvent, path: Path_, message: str) -> None:
        line, col = _mark(event)
        self._report(line, col, path, message,
                     "remove the tag; only plain YAML values are accepted")

    def _report(self, line: int, col: int, path: Path_, message: str, hint: str | None = None,
                *, suppress: bool = True) -> None:
        self.doc.issues.append(self.doc.issue(line, col, path, message, hint))
        if suppress:
            self.doc.suppressed.add(path)

    def _syntax_issue(self, exc: yaml.MarkedYAMLError) -> ConfigIssue:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line, mark.column) if mark is not None else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem and exc.context_mark is not None:
            problem = f"{problem} ({exc.context} on line {exc.context_mark.line + 1})"
        return self.doc.issue(line, col, (), f"YAML syntax error: {problem}",
                              _syntax_hint(self.text, line, problem))


def _mark(event: yaml.Event) -> tuple[int, int]:
    mark = event.start_mark
    return (mark.line, mark.column) if mark is not None else (0, 0)


def _events(text: str) -> Iterator[yaml.Event]:
    parser: Any = _EventParser(text) if _EventParser is not None else _PyParser(text)
    try:
        while True:
            event = parser.get_event()
            yield event
            if isinstance(event, yaml.StreamEndEvent):
                return
    finally:
        parser.dispose()


class _PyParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """The pure-Python event parser, used when PyYAML has no libyaml."""

    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


def _short_tag(tag: str | None) -> str:
    if tag is None:
        return "!"
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def _syntax_hint(text: str, line: int, problem: str) -> str | None:
    lines = text.splitlines()
    here = lines[line] if 0 <= line < len(lines) else ""
    indent = here[: len(here) - len(here.lstrip(" \t"))]
    if "\t" in indent or "'\\t'" in problem or "tab" in problem:
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "put quotes around a value that contains `: `, or fix the indentation"
    if "could not find expected ':'" in problem or "expected <block end>" in problem:
        return "check the indentation and that every key ends with `:`"
    if "found unexpected end of stream" in problem or "found unknown escape" in problem:
        return "check the quotes on this line"
    return None


# --------------------------------------------------------------------------- validation


def _validate(doc: _Document, model: type[M], data: Any, prefix: Path_,
              label: str | None = None) -> tuple[M | None, list[ConfigIssue]]:
    """Validate in pydantic's strict JSON mode; map every error to a ConfigIssue."""
    try:
        payload = json.dumps(data, allow_nan=False)
    except (ValueError, TypeError):
        return None, [doc.at(prefix, "a number is out of range (inf or nan)")]
    try:
        return model.model_validate_json(payload, strict=True), []
    except ValidationError as exc:
        return None, [_issue(doc, model, prefix, err, label) for err in exc.errors()]


def _issue(doc: _Document, model: type[BaseModel], prefix: Path_, err: ErrorDetails,
           label: str | None) -> ConfigIssue:
    loc: Path_ = (*prefix, *(p if isinstance(p, int) else str(p) for p in err["loc"]))
    rel = loc[len(prefix):]
    secret = _is_secret_path(model, rel)
    pos = doc.pos.get(loc)
    message, hint = _message(err, model, rel, pos, secret)
    if secret:
        message = _redact(message, doc, loc)
    if label:
        message = f"device `{label}`: {message}"
    at_key = err["type"] in ("extra_forbidden", "missing")
    return doc.at(loc, message, hint, at_key=at_key)


def _message(err: ErrorDetails, model: type[BaseModel], rel: Path_, pos: _Pos | None,
             secret: bool) -> tuple[str, str | None]:
    kind = err["type"]
    raw = pos.raw if pos is not None else None
    if kind == "missing":
        return "required key missing", None
    if kind == "extra_forbidden":
        return _unknown_key(model, rel)
    if secret and raw and err.get("input") is not None \
            and _is_secret_ref(_annotation_at(model, rel)):
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


def _unknown_key(model: type[BaseModel], rel: Path_) -> tuple[str, str | None]:
    key = str(rel[-1])
    parent = _model_at(model, rel[:-1])
    names = _field_names(parent) if parent is not None else []
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    stem = re.sub(r"_(file|env)$", "", key)
    if stem != key and parent is not None and stem in names \
            and _is_secret_ref(_annotation_at(parent, (stem,))):
        return (f"unknown key `{key}`; did you mean `{stem}`?",
                f"write {stem}: {{{key.rsplit('_', 1)[1]}: ...}}")
    if close:
        return f"unknown key `{key}`; did you mean `{close[0]}`?", None
    hint = f"allowed keys: {', '.join(names)}" if names else None
    return f"unknown key `{key}`", hint


def _inline_secret(rel: Path_) -> str:
    name = str(rel[-1])
    if rel[-2:] == ("uplink", "password") or rel == ("password",):
        file, env = "/etc/edge-agent/mqtt-password", "EDGE_MQTT_PASSWORD"
    else:
        file = f"/etc/edge-agent/{name.replace('_', '-')}"
        env = "EDGE_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()
    return f"do not write secrets inline; use {name}: {{file: {file}}} or {{env: {env}}}"


def _expected(what: str, hint: str | None = None) -> Callable[[ErrorDetails, str | None],
                                                             tuple[str, str | None]]:
    return lambda err, raw: (what, hint)


def _string_type(err: ErrorDetails, raw: str | None) -> tuple[str, str | None]:
    hint = f'quote the value: "{raw}"' if raw is not None else None
    return "expected text", hint


def _number(what: str) -> Callable[[ErrorDetails, str | None], tuple[str, str | None]]:
    def handler(err: ErrorDetails, raw: str | None) -> tuple[str, str | None]:
        quoted = isinstance(err.get("input"), str) and raw is not None and _is_number(raw)
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


_HANDLERS: dict[str, Callable[[ErrorDetails, str | None], tuple[str, str | None]]] = {
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


def _is_number(text: str) -> bool:
    return bool(_INT10.match(text) or _FLOAT.match(text))


def _clip(text: str, limit: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _redact(message: str, doc: _Document, loc: Path_) -> str:
    """Remove any scalar written under a secret key from a message, whatever its source."""
    for path, pos in doc.pos.items():
        if path[: len(loc)] == loc and pos.raw and len(pos.raw) >= 3:
            message = message.replace(pos.raw, "***")
    return message


# --------------------------------------------------------------------------- model walking

_SECRET_NAME = re.compile(r"(password|passwd|secret|token|api_?key|private_key)$", re.I)


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation may hold (Optional/Union/Annotated flattened)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, _UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


_UnionType = type(int | None)


def _field_names(model: type[BaseModel]) -> list[str]:
    names: list[str] = []
    for name, info in model.model_fields.items():
        names.append(info.alias or name)
    return names


def _annotation_at(model: type[BaseModel], rel: Path_) -> Any:
    current: Any = model
    for part in rel:
        current = _step(current, part)
        if current is None:
            return None
    return current


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


def _model_at(model: type[BaseModel], rel: Path_) -> type[BaseModel] | None:
    for candidate in _unwrap(_annotation_at(model, rel)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_secret_ref(annotation: Any) -> bool:
    return any(isinstance(t, type) and issubclass(t, SecretRef) for t in _unwrap(annotation))


def _is_secret_path(model: type[BaseModel], rel: Path_) -> bool:
    """True when any step of the path is a secret field (SecretRef, SecretStr, by name)."""
    for depth in range(1, len(rel) + 1):
        part = rel[depth - 1]
        if isinstance(part, str) and _SECRET_NAME.search(part):
            return True
        for t in _unwrap(_annotation_at(model, rel[:depth])):
            if isinstance(t, type) and issubclass(t, (SecretRef, SecretStr, SecretBytes)):
                return True
    return False


# --------------------------------------------------------------------------- devices


def _validate_devices(doc: _Document) -> tuple[list[DeviceConfig], list[ConfigIssue]]:
    if "devices" not in doc.root:
        return [], []
    raw = doc.root["devices"]
    if not isinstance(raw, list):
        what = "has no value" if raw is None else "must be a list"
        return [], [doc.at(("devices",), f"{what}; expected a list of device entries "
                           "(`- id: ...` lines)", "write `devices: []` for none")]
    drivers, issues = _drivers(doc, bool(raw))
    devices: list[DeviceConfig] = []
    for index, entry in enumerate(raw):
        device, found = _validate_device(doc, drivers, index, entry)
        issues += found
        if device is not None:
            devices.append(device)
    issues += _duplicate_ids(doc, raw)
    return devices, issues


def _drivers(doc: _Document, needed: bool) -> tuple[dict[str, Any] | None, list[ConfigIssue]]:
    if not needed:
        return {}, []
    from edge_agent import registry  # late: registry -> driver_api -> config.models

    try:
        return dict(registry.available()), []
    except registry.DriverLoadError as exc:
        return None, [doc.at(("devices",), f"the installed drivers failed to load: {exc}",
                             "reinstall the agent or the broken driver package")]


def _validate_device(doc: _Document, drivers: dict[str, Any] | None, index: int, entry: Any
                     ) -> tuple[DeviceConfig | None, list[ConfigIssue]]:
    path: Path_ = ("devices", index)
    if not isinstance(entry, dict):
        return None, [doc.at(path, "a device entry must be a mapping with `id`, `driver` and "
                             "the driver's options")]
    label = entry.get("id") if isinstance(entry.get("id"), str) else None
    driver = entry.get("driver")
    issues: list[ConfigIssue] = []
    model: type[DeviceConfig] = DeviceConfig
    if drivers is not None and isinstance(driver, str) and driver:
        if driver in drivers:
            model = drivers[driver].options
        else:
            issues.append(_unknown_driver(doc, path, driver, sorted(drivers), label))
    device, found = _validate(doc, model, entry, path, label)
    if model is not DeviceConfig:
        found += _unknown_options(doc, model, entry, path, label)
    return device, issues + found


def _unknown_options(doc: _Document, model: type[DeviceConfig], entry: dict[str, Any],
                     path: Path_, label: str | None) -> list[ConfigIssue]:
    """DeviceConfig allows extra keys; a driver's options model must not let typos pass."""
    if model.model_config.get("extra") == "forbid":
        return []  # pydantic reports them itself
    names = set(_field_names(model))
    issues = []
    for key in entry:
        if key not in names:
            message, hint = _unknown_key(model, (key,))
            prefix = f"device `{label}`: " if label else ""
            issues.append(doc.at((*path, key), prefix + message, hint, at_key=True))
    return issues


def _unknown_driver(doc: _Document, path: Path_, driver: str, names: list[str],
                    label: str | None) -> ConfigIssue:
    installed = ", ".join(names) if names else "none"
    close = difflib.get_close_matches(driver, names, n=1, cutoff=0.6)
    message = f"unknown driver `{driver}`; installed drivers: {installed}"
    if label:
        message = f"device `{label}`: {message}"
    hint = f"did you mean `{close[0]}`?" if close else None
    return doc.at((*path, "driver"), message, hint)


def _duplicate_ids(doc: _Document, raw: list[Any]) -> list[ConfigIssue]:
    first: dict[str, int] = {}
    issues: list[ConfigIssue] = []
    for index, entry in enumerate(raw):
        dev_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(dev_id, str):
            continue
        line = doc.locate(("devices", index, "id"))[0] + 1
        if dev_id in first:
            issues.append(doc.at(("devices", index, "id"), f"device id `{dev_id}` is used twice: "
                                 f"first on line {first[dev_id]}, again on line {line}",
                                 "every device needs its own id"))
        else:
            first[dev_id] = line
    return issues


def _assemble(doc: _Document, cfg: GatewayConfig, devices: list[DeviceConfig]) -> GatewayConfig:
    """The final config with the drivers' device models; re-runs GatewayConfig's checks."""
    values = {name: getattr(cfg, name) for name in GatewayConfig.model_fields}
    values["devices"] = devices
    try:
        return GatewayConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError([_issue(doc, GatewayConfig, (), err, None)
                           for err in exc.errors()]) from None


# --------------------------------------------------------------------------- finishing


def _raise_if(doc: _Document, issues: list[ConfigIssue]) -> None:
    kept = [i for i in issues if not _is_suppressed(doc, i)]
    every = sorted(dict.fromkeys([*doc.issues, *kept]), key=lambda i: (i.line, i.col, i.key))
    if every:
        raise ConfigError(every)


def _is_suppressed(doc: _Document, issue: ConfigIssue) -> bool:
    """Drop a validation issue under a path that the YAML reading already reported."""
    return any(
        path and (issue.key == _dotted(path) or issue.key.startswith(_dotted(path) + "."))
        for path in doc.suppressed
    )


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)
