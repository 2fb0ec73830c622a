"""Where each key of a route file goes, and what to say about a key in the wrong place.

A ``Layout`` maps each place of a file (its key path without list indexes, ``*`` for a name
the author chooses, ``schemas.*``) to the keys allowed there. The loader validates with it,
the JSON Schema is checked against it, and a key unknown where it is but allowed one or two
levels up or down gets a hint: most such keys are indented one level too far or too little.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eventrouter.config.excerpt import excerpt
from eventrouter.config.suggest import did_you_mean
from eventrouter.config.yamlload import LineDict, line_of

Layout = Mapping[str, Sequence[str]]

FILE_KEYS = ("routes", "schemas")
ROUTE_KEYS = (
    "name",
    "description",
    "on",
    "when",
    "do",
    "enabled",
    "mode",
    "max",
    "key",
    "debounce",
    "throttle",
    "retry",
    "schema",
    "runs_on",
)
#: The keys of an action, by its kind (the key that names the kind comes first).
ACTION_KEYS = {
    "run": ("run", "timeout", "env"),
    "emit": ("emit",),
    "task": ("task",),
    "exec": ("exec",),
}
EMIT_KEYS = ("channel", "payload")
#: The keys of ``exec:``'s mapping form (its list form has none).
EXEC_KEYS = ("command", "timeout", "env")
TASK_KEYS = ("agent", "action", "data", "extra", "timeout", "wait")
RETRY_KEYS = ("attempts", "backoff", "max_backoff")
SCHEMA_KEYS = ("source", "fields", "description")

ROUTE_LAYOUT: Layout = {
    "": FILE_KEYS,
    "routes": ROUTE_KEYS,
    "routes.do": tuple(dict.fromkeys(key for keys in ACTION_KEYS.values() for key in keys)),
    "routes.do.emit": EMIT_KEYS,
    "routes.do.task": TASK_KEYS,
    "routes.do.exec": EXEC_KEYS,
    "routes.retry": RETRY_KEYS,
    "schemas.*": SCHEMA_KEYS,
}
#: How messages name a place; any other place is named by its last key (``'emit:'``).
LABELS = {
    "": "the top level of the file",
    "routes": "a route",
    "routes.do": "an action (an item of 'do:')",
    "schemas.*": "an event schema",
    "tests": "a test",
}
_LEVELS = {1: "one level", 2: "two levels"}


def place(layout: Layout, path: Sequence[Any]) -> str | None:
    """Return the place of ``layout`` that a key path (list indexes included) stands in."""
    position = ""
    for step in path:
        if isinstance(step, int):
            continue
        for name in (str(step), "*"):
            candidate = f"{position}.{name}" if position else name
            if any(p == candidate or p.startswith(candidate + ".") for p in layout):
                position = candidate
                break
        else:
            return None
    return position


def _label(position: str) -> str:
    return LABELS.get(position, f"'{position.rpartition('.')[2]}:'")


def _parts(position: str) -> list[str]:
    return position.split(".") if position else []


def misplaced(layout: Layout, position: str, key: object) -> str:
    """Return where ``key``, unknown at ``position``, belongs when it is one or two levels off."""
    if not isinstance(key, str):
        return ""
    parts = _parts(position)
    for up in range(1, min(len(parts), 2) + 1):
        above = ".".join(parts[:-up])
        if key in layout.get(above, ()):
            return (
                f"'{key}' is a key of {_label(above)}: outdent it {_LEVELS[up]}, to line up "
                f"with '{parts[-up]}:'"
            )
    below = [
        p
        for p in layout
        if key in layout[p]
        and len(_parts(p)) - len(parts) in (1, 2)
        and _parts(p)[: len(parts)] == parts
        and "*" not in _parts(p)[len(parts) :]
    ]
    if not below:
        return ""
    target = min(below, key=lambda p: len(_parts(p)))
    rest = _parts(target)[len(parts) :]
    within = f" of {_label('.'.join(_parts(target)[:-1]))}" if len(rest) > 1 else ""
    return f"'{key}' is a key of {_label(target)}: indent it under '{rest[-1]}:'{within}"


def empty_mapping(layout: Layout, data: Any, where: Sequence[Any]) -> str:
    """Return a hint for ``key:`` left empty above keys that belong inside it, else ""."""
    position = place(layout, where)
    above = place(layout, where[:-1])
    parent = value_at(data, where[:-1])
    if position is None or position not in layout or above is None:
        return ""
    if not isinstance(parent, LineDict):
        return ""
    for key in parent:
        if key in layout[position] and key not in layout.get(above, ()):
            line = line_of(data, [*where[:-1], key], 0)
            return (
                f"'{key}' (line {line}) is a key of {_label(position)}: indent it under "
                f"'{where[-1]}:'"
            )
    return ""


def value_at(data: Any, path: Sequence[Any]) -> Any:
    """Return the node at ``path`` (keys and list indexes) in ``data``, or None."""
    node = data
    for step in path:
        found = isinstance(node, dict) and step in node
        found = found or (
            isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        )
        if not found:
            return None
        node = node[step]
    return node


def action_kind_problem(raw: Any) -> str:
    """Return what to fix in an item of ``do:`` that names no action kind, or more than one."""
    kinds = [name for name in ACTION_KEYS if isinstance(raw, dict) and name in raw]
    if len(kinds) > 1:
        return f"; it has {' and '.join(map(repr, kinds))}: make them two items of 'do:'"
    for key in raw if isinstance(raw, dict) else ():
        close = did_you_mean(key, ACTION_KEYS)
        if close:
            return f"; {excerpt(key)} is not one{close}"
        where = misplaced(ROUTE_LAYOUT, "routes.do", key)
        if where:
            return f"; {where}"
    return ""
