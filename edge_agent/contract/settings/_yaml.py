"""Strict YAML text -> plain data and where each value sits.

The YAML is read defensively from the parser's event stream (never through a YAML
constructor): only the YAML 1.2 core scalars are resolved (`_scalars`: `true`/`false`, decimal,
`0o`, `0x`, floats with a dot or exponent, `null`), so the YAML 1.1 traps (`no`,
`on`, `0755`, `1:30`) stay text; each such plain scalar is marked with its trap, for the
message of a bool or number field that rejects it. Tags other than the standard
str/int/float/bool/null/map/seq, merge keys and duplicate keys are issues; aliases,
nesting depth and file size are capped. The result is a `Document`: the data, the
position map (`KeyPath` -> `Pos`) and the issues found while reading.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_agent.contract.settings._issues import ConfigError, ConfigIssue, KeyPath, dotted
from edge_agent.contract.settings._scalars import resolve_plain, trap_of

#: PyYAML's libyaml event parser, or None when PyYAML was built without libyaml.
LibyamlParser: Any
try:
    from yaml.cyaml import CParser as LibyamlParser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    LibyamlParser = None

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_NODES = 100_000


@dataclass
class Pos:
    """Where one value sits: its key (or list item) and the value itself (0-based)."""

    key_line: int
    key_col: int
    line: int
    col: int
    raw: str | None = None  # the source text of a scalar value
    trap: str | None = None  # a YAML 1.1 trap the plain scalar falls into


@dataclass
class Document:
    file: str
    root: dict[str, Any] = field(default_factory=dict)
    pos: dict[KeyPath, Pos] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)
    suppressed: set[KeyPath] = field(default_factory=set)  # paths already reported

    def issue(self, line: int, col: int, path: KeyPath, message: str, hint: str | None = None
              ) -> ConfigIssue:
        return ConfigIssue(self.file, line + 1, col + 1, dotted(path), message, hint)

    def at(self, path: KeyPath, message: str, hint: str | None = None, *, at_key: bool = False
           ) -> ConfigIssue:
        line, col = self.locate(path, at_key=at_key)
        return self.issue(line, col, path, message, hint)

    def locate(self, path: KeyPath, *, at_key: bool = False) -> tuple[int, int]:
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


def read_document(path: str | Path, event_parser: Any) -> Document:
    """Read `path` into a Document whose root is a mapping; ConfigError if it cannot be.
    `event_parser`: the YAML event parser class (`LibyamlParser`), or None for PyYAML's
    pure-Python one."""
    doc = Document(str(path))
    try:
        text = _read_text(doc, Path(path))
        root = _Builder(doc, text, event_parser).build()
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


def _read_text(doc: Document, path: Path) -> str:
    try:
        # O_NONBLOCK: a FIFO given as the config must not block until someone writes to it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            if not stat.S_ISREG(mode):
                raise _Fatal(doc.issue(0, 0, (), "this is not a regular file (a pipe, socket "
                                       "or device)", "give the path of the YAML file"))
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

_TAG_OF_TYPE = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str"}


_INVALID_KEY = object()


@dataclass
class _Frame:
    path: KeyPath
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

    def __init__(self, doc: Document, text: str, event_parser: Any) -> None:
        self.doc = doc
        self.text = text
        self.event_parser = event_parser
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.open_anchors: set[str] = set()
        self.aliases = 0
        self.nodes = 0
        self.root: Any = None
        self.documents = 0

    def build(self) -> Any:
        try:
            for event in _events(self.text, self.event_parser):
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

    def _scalar_value(self, event: yaml.ScalarEvent, path: KeyPath) -> tuple[Any, str | None]:
        text: str = event.value
        if event.tag is None and event.implicit[0]:
            return resolve_plain(text), trap_of(text)
        if event.tag in (None, "!", _STR):
            return text, None
        if event.tag in _SCALAR_TAGS:
            value = resolve_plain(text)
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

    def _child_path(self) -> KeyPath:
        if not self.stack:
            return ()
        frame = self.stack[-1]
        if isinstance(frame.value, list):
            return (*frame.path, len(frame.value))
        key = frame.key if isinstance(frame.key, str) else "?"
        return (*frame.path, key)

    def _record(self, path: KeyPath, line: int, col: int) -> Pos | None:
        if self._discarding():
            return None
        key_line, key_col = line, col
        if self.stack and isinstance(self.stack[-1].value, dict):
            key_line, key_col = self.stack[-1].key_line, self.stack[-1].key_col
        pos = Pos(key_line, key_col, line, col)
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

    def _tag_issue(self, event: yaml.NodeEvent, path: KeyPath, message: str) -> None:
        line, col = _mark(event)
        self._report(line, col, path, message,
                     "remove the tag; only plain YAML values are accepted")

    def _report(self, line: int, col: int, path: KeyPath, message: str, hint: str | None = None,
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


def _events(text: str, event_parser: Any) -> Iterator[yaml.Event]:
    parser: Any = (event_parser or _PyParser)(text)
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
    indent = here[: len(here) - len(here.lstrip(" \t-"))]  # `-\t` is a tab indent too
    if "\t" in indent or "'\\t'" in problem or "tab" in problem:
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "put quotes around a value that contains `: `, or fix the indentation"
    if "could not find expected ':'" in problem or "expected <block end>" in problem:
        return "check the indentation and that every key ends with `:`"
    if "found unexpected end of stream" in problem or "found unknown escape" in problem:
        return "check the quotes on this line"
    return None
