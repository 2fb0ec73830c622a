"""Safe YAML loading that remembers the line of every mapping key and list item.

All of PyYAML lives here. Two departures from PyYAML's ``SafeLoader``:

* booleans are YAML 1.2's ``true``/``false`` only, so a bare ``on:``, ``yes:`` or ``off:``
  key stays the string written; ``enabled: yes`` is then a type error, not a guess;
* aliases are allowed but their expansion is bounded, so an alias bomb is an error and not
  an out-of-memory kill.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from eventrouter.config.excerpt import bound_message, excerpt
from eventrouter.config.stable import ReadError, read_whole

#: Most nodes a document may expand to once its aliases are followed.
MAX_EXPANDED_NODES = 100_000
#: Largest route file read, in bytes.
MAX_FILE_SIZE = 8 * 1024 * 1024
#: Longest a route file is waited for while it is being written, in seconds.
PATIENCE = 2.0


class YamlError(Exception):
    """A file could not be read or parsed; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class LineDict(dict[Any, Any]):
    """A mapping that knows its own line and the line of each key."""

    # No instance dict: a route file makes thousands of these (set as each is built).
    __slots__ = ("key_lines", "line")
    line: int
    key_lines: dict[Any, int]


class LineList(list[Any]):
    """A sequence that knows its own line and the line of each item."""

    __slots__ = ("item_lines", "line")
    line: int
    item_lines: list[int]


# libyaml's parser when PyYAML was built with it (about ten times faster), else PyYAML's own;
# both give nodes with marks, so line numbers are the same.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """SafeLoader with YAML 1.2 booleans and line-stamped containers."""


# Drop the YAML 1.1 bool resolver (yes/no/on/off) and put back true/false only.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


_STR = "tag:yaml.org,2002:str"


def _tab_at(text: str, mark: yaml.Mark | None) -> str:
    """Return the message for a tab where YAML found a token it cannot start, else ""."""
    if mark is None or mark.index >= len(text) or text[mark.index] != "\t":
        return ""
    return (
        f"a tab at column {mark.column + 1}: YAML does not allow tabs for indentation; "
        "indent with spaces"
    )


def _construct(loader: _Loader, node: yaml.Node) -> Any:
    # Most nodes are plain strings: take them as they are, skipping the generic machinery.
    if node.tag == _STR and isinstance(node, yaml.ScalarNode):
        return node.value
    return loader.construct_object(node, deep=True)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    explicit_nodes = {id(key) for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)  # merged pairs come first; explicit keys override them
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    explicit: set[Any] = set()
    for key_node, value_node in node.value:
        key = _construct(loader, key_node)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            )
        if key in explicit and id(key_node) in explicit_nodes:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {excerpt(key)}", key_node.start_mark
            )
        if id(key_node) in explicit_nodes:
            explicit.add(key)
        result[key] = _construct(loader, value_node)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(_construct(loader, child) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Return how many nodes ``node`` stands for once aliases are expanded."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = 1  # a recursive alias counts once instead of looping
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            size += _expanded_size(key, memo) + _expanded_size(value, memo)
            if size > MAX_EXPANDED_NODES:
                break
    memo[id(node)] = size
    return size


_MISPLACED_KEY = (
    ": a 'key:' where no key can start; check the indentation of this line against the lines "
    "above, or quote a value that holds ': '"
)
#: What to do about the YAML errors an edit makes most, by the parser's problem.
_FIXES = {
    "could not find expected ':'": ": write 'key: value', with a space after the ':'",
    "mapping values are not allowed here": _MISPLACED_KEY,  # PyYAML's parser
    "mapping values are not allowed in this context": _MISPLACED_KEY,  # libyaml's
}


def _where(text: str, exc: yaml.MarkedYAMLError) -> tuple[yaml.Mark | None, str]:
    """Return where a YAML error is, and its problem as an operator reads it."""
    mark = exc.problem_mark or exc.context_mark
    if exc.context_mark is not None and mark is not None and mark.index >= len(text):
        mark = exc.context_mark  # an unterminated construct: point where it opens
    problem = bound_message(exc.problem or "")
    if problem == "could not find expected ':'" and exc.context_mark is not None:
        # The key without its ':' is where the scan started, not the line where it gave up.
        mark = exc.context_mark
        key = text[mark.index :].split("\n", 1)[0].strip()
        problem = f"could not find the ':' after {excerpt(key)}"
    return mark, problem


def loads(text: str) -> Any:
    """Parse one YAML document with line-stamped containers; raise YamlError."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        # No anchor, no alias to expand: skip the walk for the usual file.
        if "&" in text and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise YamlError(
                node.start_mark.line + 1,
                f"document expands to more than {MAX_EXPANDED_NODES} nodes "
                "through aliases; write it out or use fewer aliases",
            )
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark, problem = _where(text, exc)
        line = mark.line + 1 if mark is not None else 1
        fix = _FIXES.get(exc.problem or "", "")
        if problem == "found undefined alias" and exc.problem_mark is not None:
            # libyaml does not name the alias; the mark points at it.
            alias = re.match(r"\*([^\s,\]}]+)", text[exc.problem_mark.index :])
            problem += f" {excerpt(alias.group(1))}" if alias else ""
        context = f" ({bound_message(exc.context)})" if exc.context else ""
        tab = _tab_at(text, exc.problem_mark)
        if tab:
            line, problem, context, fix = exc.problem_mark.line + 1, tab, "", ""  # type: ignore[union-attr]
        raise YamlError(line, f"invalid YAML: {problem}{context}{fix}") from exc
    except yaml.YAMLError as exc:
        raise YamlError(1, f"invalid YAML: {bound_message(str(exc))}") from exc
    except RecursionError as exc:
        raise YamlError(1, "invalid YAML: nested too deeply") from exc
    except ValueError as exc:  # int() refuses numbers of more than 4300 digits
        raise YamlError(1, "invalid YAML: a number too long to read") from exc
    finally:
        loader.dispose()


def load_file(path: Path) -> Any:
    """Read and parse a YAML file; raise YamlError for I/O and syntax problems."""
    return loads(read_text(path))


def read_text(path: Path, settle: float = 0.0, patience: float = PATIENCE) -> str:
    """Read a YAML file as text once it is whole; raise YamlError when it cannot be read,
    is not UTF-8, or is still being written after ``patience`` seconds.

    With ``settle`` (a reload), a file is never read while a process has it open for
    writing, nor within ``settle`` seconds of its last change (see ``stable``).
    """
    try:
        return _decode(read_whole(path, MAX_FILE_SIZE, settle, patience))
    except ReadError as exc:
        raise YamlError(1, str(exc)) from exc


def _decode(data: bytes) -> str:
    if len(data) > MAX_FILE_SIZE:
        raise YamlError(1, f"file is larger than {MAX_FILE_SIZE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YamlError(line, "file is not valid UTF-8") from exc


def line_of(data: Any, path: list[Any], default: int) -> int:
    """Return the line of the deepest node named by ``path`` (keys and indexes) in ``data``."""
    line = getattr(data, "line", default) or default
    node = data
    for step in path:
        if isinstance(node, LineDict) and step in node:
            line = node.key_lines.get(step, line)
            node = node[step]
        elif isinstance(node, LineList) and isinstance(step, int) and 0 <= step < len(node):
            line = node.item_lines[step]
            node = node[step]
        else:
            break
    return line
