"""Deep lint of a loaded route table, for ``eventrouter check``.

Finds derived-event cycles across files (the graph and glob intersection live in ``loops``),
handler and events folders with nothing or something broken to run, template references to
fields an event does not carry, patterns that can never match an event, duplicate routes,
folders that one event would run twice, and event names not in the past tense.

templates.py owns rendering; lint never renders, it reads the Jinja2 syntax tree of each
template (``jinja2.nodes``), which is why it imports jinja2.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.defaults import DEFAULT_NAMESPACE

from eventrouter.config import LoadResult
from eventrouter.errors import Diagnostic
from eventrouter.loops import (
    SEGMENT,
    STAR,
    Glob,
    Neighbours,
    Token,
    channel_glob,
    contains,
    cycle_findings,
    emit_graph,
    overlap,
    pattern_glob,
)
from eventrouter.model import EVENT_MARK, SAFE_NAME, EmitAction, Route, RunAction
from eventrouter.schemas import EventSpec
from eventrouter.steps import is_ignored, list_steps
from eventrouter.templates import Value

_ENV = jinja2.Environment(keep_trailing_newline=True)
_MARKERS = ("{{", "{%", "{#")
#: Names a template sees (SPEC 3), and those Jinja2 itself provides.
CONTEXT = ("channel", "source", "name", "payload", "raw", "match", "route")
_BUILTIN = frozenset(DEFAULT_NAMESPACE) | {"loop", "caller", "self", "varargs", "kwargs"}
_EVENT_CHANNEL = pattern_glob("*/event/*")
_CONSTANTS = {"and", "or", "not", "is", "in", "true", "false", "none", "True", "False", "None"}
_KEYWORDS = _CONSTANTS | {
    "if", "else", "elif", "endif", "for", "endfor", "set", "endset", "recursive", "with",
    "endwith", "macro", "endmacro", "call", "endcall", "filter", "endfilter", "block", "endblock",
    "include", "import", "from", "as", "ignore", "missing", "context", "without", "extends", "do",
    "break", "continue",
}  # fmt: skip
_KNOWN = _KEYWORDS | set(CONTEXT) | _BUILTIN | set(_ENV.filters) | set(_ENV.tests)
_CODE = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.DOTALL)
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)
# payload.x / match['x'], unless protected (| default, is defined) or a method call.
_FIELD = re.compile(
    r"\b(payload|match)\s*(?:\.\s*([A-Za-z_]\w*+)|\[\s*(['\"])([^'\"]*)\3\s*\])"
    r"(?!\s*(?:\(|\|\s*d(?:efault)?\b|is\s+(?:not\s+)?(?:un)?defined\b))"
)
_WORD = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
_RAW = re.compile(r"\{%[-+]?\s*raw\b")
#: Tests and filters that may be given an undefined value without failing.
_GUARDS = ("defined", "undefined", "default", "d")
_SOURCE_GLOBS = {"cluster": "cluster", "node": "node/*", "module": "module/*"}
_NOT_LITERAL = frozenset("*?[]{}\\/%#")
_SKIPPED = {
    "not executable": "is not executable; it is skipped (chmod +x to run it)",
    "is a directory": "is a directory, not a step",
    "dangling symlink": "is a dangling symlink; it is skipped",
}
Key = tuple[str, ...]


def deep_check(result: LoadResult, events_dirs: list[Path]) -> list[Diagnostic]:
    """Return every deep-lint finding about a route table that loads without errors."""
    routes = result.routes
    emits = [[_emit_glob(a) for a in r.actions if isinstance(a, EmitAction)] for r in routes]
    graph = emit_graph(routes, emits)
    findings = cycle_findings(routes, graph, [_can_stop(route) for route in routes])
    findings += folder_findings(routes, events_dirs)
    for route in routes:
        findings += template_findings(route, result.schemas)
        findings += pattern_findings(route)
        findings += tense_findings(route)
    keys: dict[str, Any] = {}  # route name -> what it does, computed when needed
    findings += duplicate_findings(routes, keys)
    findings += twice_findings(routes, events_dirs, keys)
    return sorted(findings, key=lambda item: (item.file, item.line))


def _warning(where: Route | str, line: int, message: str) -> Diagnostic:
    if isinstance(where, Route):
        return Diagnostic(where.file, line, "warning", f"route {where.name}: {message}")
    return Diagnostic(where, line, "warning", message)


# --- Jinja2 syntax trees ---------------------------------------------------------------------


@lru_cache(maxsize=8192)
def _parse(source: str) -> nodes.Template | None:
    try:
        return _ENV.parse(source)
    except jinja2.TemplateSyntaxError:
        return None  # config.py refuses such templates; nothing to lint


def _expression(source: str) -> nodes.Template | None:
    return _parse("{{ " + source + " }}")


def _channel_part(node: nodes.Node) -> str | Sequence[Token]:
    """Return what one part of a channel template can render: text, a segment or anything."""
    if isinstance(node, nodes.TemplateData):
        return node.data
    key = _key(node)
    return SEGMENT if key is not None and key[0] == "match" and len(key) == 2 else (STAR,)


def _emit_glob(action: EmitAction) -> Glob:
    """Return the channels an emit can produce (a capture is one segment, other parts a star)."""
    source = action.channel.source
    if not any(marker in source for marker in _MARKERS):
        return channel_glob(source, [source])
    tree = _parse(source)
    parts: list[str | Sequence[Token]] = [(STAR,)]
    if tree is not None:
        parts = []
        for node in tree.body:  # text inside {% if %} / {% for %} may or may not appear
            if isinstance(node, nodes.Output):
                parts += [_channel_part(child) for child in node.nodes]
            else:
                parts.append((STAR,))
    return channel_glob(source, parts)


def _can_stop(route: Route) -> bool:
    """Return True when the route has a ``when:`` that is not always true."""
    if route.when is None:
        return False
    source = route.when.source
    if not set(_WORD.findall(_STRING.sub("''", source))) <= _CONSTANTS:
        return True  # it reads the event (or a name): not a constant
    tree = _expression(source)
    if tree is None or not isinstance(tree.body[0], nodes.Output):
        return True
    try:
        return not tree.body[0].nodes[0].as_const(nodes.EvalContext(_ENV))
    except Exception:  # not a constant after all
        return True


def _key(node: nodes.Node) -> Key | None:
    """Return ``(name,)`` or ``(name, field)`` for ``name``, ``name.field``, ``name['field']``."""
    if isinstance(node, nodes.Name) and node.ctx == "load":
        return (node.name,)
    if isinstance(node, nodes.Getattr | nodes.Getitem) and isinstance(node.node, nodes.Name):
        field = node.attr if isinstance(node, nodes.Getattr) else _const_text(node.arg)
        return None if field is None else (node.node.name, field)
    return None


def _const_text(node: nodes.Node) -> str | None:
    return node.value if isinstance(node, nodes.Const) and isinstance(node.value, str) else None


def _defined_if(test: nodes.Node, truth: bool) -> frozenset[Key]:
    """Return the references known to be defined when ``test`` is ``truth``."""
    if isinstance(test, nodes.Not):
        return _defined_if(test.node, not truth)
    if isinstance(test, nodes.Test) and test.name in ("defined", "undefined"):
        key = _key(test.node)
        return frozenset([key]) if key and truth == (test.name == "defined") else frozenset()
    if isinstance(test, nodes.And if truth else nodes.Or):
        return _defined_if(test.left, truth) | _defined_if(test.right, truth)
    if isinstance(test, nodes.Compare) and len(test.ops) == 1:  # 'field' in payload
        operand, field = test.ops[0], _const_text(test.expr)
        if operand.op == ("in" if truth else "notin") and isinstance(operand.expr, nodes.Name):
            return frozenset() if field is None else frozenset([(operand.expr.name, field)])
    return frozenset()


def _walk(node: nodes.Node, guarded: frozenset[Key], found: dict[Key, None]) -> None:
    """Collect the references of ``node`` that no ``is defined``/``default`` protects."""
    key = _key(node)
    if key is not None:
        if key not in guarded:
            found.setdefault(key)
        return
    skip: nodes.Node | None = None
    if isinstance(node, nodes.Test | nodes.Filter) and node.name in _GUARDS:
        skip = node.node  # its own reference is protected; what it is built from is not
        if skip is not None and _key(skip) is None:
            _walk_children(skip, guarded, found, None)
    elif isinstance(node, nodes.Call) and _key(node.node) is not None:
        skip = node.node  # a method call such as payload.get('field')
    if isinstance(node, nodes.And | nodes.Or):
        _walk(node.left, guarded, found)
        _walk(node.right, guarded | _defined_if(node.left, isinstance(node, nodes.And)), found)
    elif isinstance(node, nodes.CondExpr | nodes.If):
        body = node.expr1 if isinstance(node, nodes.CondExpr) else node.body
        other = node.expr2 if isinstance(node, nodes.CondExpr) else [*node.elif_, *node.else_]
        _walk(node.test, guarded, found)
        for item in body if isinstance(body, list) else [body]:
            _walk(item, guarded | _defined_if(node.test, True), found)
        for item in other if isinstance(other, list) else [other] if other else []:
            _walk(item, guarded | _defined_if(node.test, False), found)
    else:
        _walk_children(node, guarded, found, skip)


def _walk_children(
    node: nodes.Node, guarded: frozenset[Key], found: dict[Key, None], skip: nodes.Node | None
) -> None:
    for child in node.iter_child_nodes():
        if child is not skip:
            _walk(child, guarded, found)


def _references(tree: nodes.Template) -> list[Key]:
    """Return the unprotected references to template names, in order of first use."""
    local = {name.name for name in tree.find_all(nodes.Name) if name.ctx != "load"}
    found: dict[Key, None] = {}
    _walk(tree, frozenset(), found)
    return [key for key in found if key[0] not in local and key[0] not in _BUILTIN]


# --- templates against event schemas and captures --------------------------------------------


Template = tuple[str, int, str, bool]  # label, line, source, is a bare expression


def _templates(route: Route) -> Iterator[Template]:
    """Yield every template of a route."""
    if route.when is not None:
        yield "when", route.line, route.when.source, True
    for action in route.actions:
        if isinstance(action, EmitAction):
            yield "emit channel", action.line, action.channel.source, False
            if isinstance(action.payload, Value):
                yield from _value_templates("emit payload", action.line, action.payload)
        else:
            for name, template in action.env:
                yield f"env {name}", action.line, template.source, False


def _value_templates(label: str, line: int, value: Value) -> Iterator[Template]:
    if value.kind == "expr":
        yield label, line, value.items.source, True
    elif value.kind == "text":
        yield label, line, value.source, False
    elif value.kind in ("map", "list"):
        for key, item in value.items if value.kind == "map" else enumerate(value.items):
            where = f"{label}.{key}" if value.kind == "map" else f"{label}[{key}]"
            yield from _value_templates(where, line, item)


@lru_cache(maxsize=8192)
def _scan(source: str, expression: bool) -> tuple[Key, ...] | None:
    """Return the unprotected references a quick scan finds, or None when it cannot tell."""
    if expression:
        code = source
    elif not any(marker in source for marker in _MARKERS):
        return ()
    else:
        parts = [a or b for a, b in _CODE.findall(source)]
        if (
            "{#" in source
            or _RAW.search(source)
            or any("'" in part or '"' in part for part in map(partial(_STRING.sub, ""), parts))
        ):
            return None  # a comment, a raw block, "}}" in a string: only the parser can tell
        code = " ".join(parts)
    if not set(_WORD.findall(_STRING.sub("''", code))) <= _KNOWN:
        return None  # a name of its own ({% set %}, a typo): let the syntax tree decide
    return tuple((found[1], found[2] or found[4]) for found in _FIELD.finditer(code))


def _tree(source: str, expression: bool, route: Route, specs: Sequence[EventSpec]) -> Any:
    """Return the syntax tree of a template that may hold a problem, else None."""
    keys = _scan(source, expression)
    if keys is not None and not any(next(_problems(k, route, specs), None) for k in keys):
        return None  # parsing is slow; the quick scan proved every reference fine
    return _expression(source) if expression else _parse(source)


def _spec_of(pattern: str, schemas: dict[str, EventSpec]) -> EventSpec | None:
    """Return the schema of the one event ``pattern`` names literally, when its source fits."""
    source, sep, name = pattern.partition(EVENT_MARK)
    spec = schemas.get(name) if sep and not _NOT_LITERAL.intersection(name) else None
    if spec is None:
        return None
    fits = pattern_glob(_SOURCE_GLOBS.get(spec.sources, "*"))
    return spec if overlap(pattern_glob(source), fits) else None


def _problems(key: Key, route: Route, specs: Sequence[EventSpec]) -> Iterator[str]:
    """Yield why a reference fails for some event the route can receive."""
    if key[0] not in CONTEXT:
        yield f"{key[0]}, which is not defined (templates see: {', '.join(CONTEXT)})"
    elif key[0] == "match" and len(key) == 2:
        for pattern in route.patterns:
            captures = getattr(pattern, "captures", ())
            if key[1] not in captures:
                have = f"captures: {', '.join(captures)}" if captures else "it captures nothing"
                yield f"match.{key[1]}, which pattern {pattern.text} does not capture ({have})"
    elif key[0] == "payload" and len(key) == 2:
        for spec in specs:
            if key[1] not in spec.fields:
                fields = ", ".join(spec.fields) or "none"
                yield f"payload.{key[1]}, which {spec.name} does not carry (fields: {fields})"


def template_findings(route: Route, schemas: dict[str, EventSpec]) -> list[Diagnostic]:
    """Report template references to names, captures or payload fields an event lacks."""
    found = {spec.name: spec for p in route.patterns if (spec := _spec_of(p.text, schemas))}
    specs = list(found.values())
    findings = []
    for label, line, source, expression in _templates(route):
        tree = _tree(source, expression, route, specs)
        for key in _references(tree) if tree is not None else ():
            for problem in _problems(key, route, specs):
                findings.append(_warning(route, line, f"'{label}' uses {problem}"))
    return findings


# --- handler and events folders --------------------------------------------------------------


def _folder_findings(folder: Path, where: Route | str, line: int) -> list[Diagnostic]:
    """Report a handler folder with nothing runnable, or entries that will be skipped."""
    try:
        steps, skipped = list_steps(folder)
    except OSError as exc:
        return [_warning(where, line, f"handler folder {folder} cannot be read: {exc.strerror}")]
    findings = []
    for entry in skipped:
        why = _SKIPPED.get(entry.reason, f"cannot run ({entry.reason}); it is skipped")
        findings.append(_warning(where, line, f"{folder / entry.name} {why}"))
    if not steps:
        findings.append(_warning(where, line, f"handler folder {folder} has no runnable step"))
    return findings


def _event_folders(events_dirs: Sequence[Path]) -> Iterator[Path]:
    """Yield every folder directly under each events folder, by name."""
    for base in events_dirs:
        try:
            names = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
        except OSError:
            continue  # cli.cmd_check reports a missing events folder
        yield from (base / name for name in names if not is_ignored(name))


def folder_findings(routes: Sequence[Route], events_dirs: Sequence[Path]) -> list[Diagnostic]:
    """Check each handler folder of a run action, and every folder of the events folders."""
    findings: list[Diagnostic] = []
    seen: set[Path] = set()
    for route in routes:
        for action in route.actions:
            if isinstance(action, RunAction) and action.path not in seen:
                seen.add(action.path)
                findings += _folder_findings(action.path, route, action.line)
    for folder in _event_folders(events_dirs):
        if not SAFE_NAME.fullmatch(folder.name):
            message = "never runs: event names must match [A-Za-z0-9][A-Za-z0-9._-]*"
            findings.append(_warning(str(folder), 0, message))
        else:
            findings += _folder_findings(folder, str(folder), 0)
    return findings


# --- patterns, duplicates, folders run twice -------------------------------------------------


def pattern_findings(route: Route) -> list[Diagnostic]:
    """Report patterns that no event channel ``<source>/event/<name>`` can match."""
    return [
        _warning(
            route,
            route.line,
            f"pattern {p.text} can never match an event channel <source>/event/<name>",
        )
        for p in route.patterns
        if not contains(pattern_glob(p.text), EVENT_MARK)  # the quick, usual answer
        and not overlap(pattern_glob(p.text), _EVENT_CHANNEL)
    ]


def _value_key(value: Any) -> Any:
    if not isinstance(value, Value):
        return repr(value)
    if value.kind == "map":
        return ("map", tuple((key, _value_key(item)) for key, item in value.items))
    if value.kind == "list":
        return ("list", tuple(_value_key(item) for item in value.items))
    return (value.kind, value.source if value.kind != "const" else repr(value.items))


def _route_key(route: Route, keys: dict[str, Any]) -> Any:
    """Return what a route does, without its name or place (remembered in ``keys``)."""
    if route.name not in keys:
        actions = tuple(
            ("run", str(a.path), a.timeout, tuple((k, t.source) for k, t in a.env))
            if isinstance(a, RunAction)
            else ("emit", a.channel.source, _value_key(a.payload))
            for a in route.actions
        )
        when = route.when.source if route.when is not None else None
        patterns = tuple(p.text for p in route.patterns)
        keys[route.name] = patterns, when, actions, route.mode, route.schema
    return keys[route.name]


def _rough_key(route: Route) -> Any:
    """Return a key equal for identical routes, quick to compute, seldom equal otherwise."""
    when = route.when.source if route.when is not None else None
    return tuple(p.text for p in route.patterns), when, tuple(a.describe() for a in route.actions)


def duplicate_findings(routes: Sequence[Route], keys: dict[str, Any]) -> list[Diagnostic]:
    """Report enabled routes identical to an earlier one but for their name."""
    groups: dict[Any, list[Route]] = defaultdict(list)
    for route in routes:
        if route.enabled:
            groups[_rough_key(route)].append(route)
    findings = []
    for group in groups.values():
        first: dict[Any, Route] = {}
        for route in group if len(group) > 1 else ():
            earlier = first.setdefault(_route_key(route, keys), route)
            if earlier is not route:
                message = (
                    f"duplicates route {earlier.name} ({earlier.file}:{earlier.line}): same "
                    "patterns, condition and actions, so every event runs both"
                )
                findings.append(_warning(route, route.line, message))
    return findings


def _twice_message(folder: Path, other: Route | None, theirs: str, mine: str) -> str:
    if other is None:
        return (
            f"runs handler folder {folder}, which also runs by convention for {theirs}, and "
            f"pattern {mine} can match such a channel: one event would run the folder twice"
        )
    return (
        f"runs handler folder {folder}, as route {other.name} ({other.file}:{other.line}) "
        f"does, and patterns {theirs} and {mine} can match the same channel: one event would "
        "run the folder twice"
    )


def _first_clash(
    route: Route, seen: Neighbours[Route | None], keys: dict[str, Any]
) -> tuple[Route | None, str, str] | None:
    """Return an earlier user of the folder whose pattern overlaps one of ``route``'s."""
    for pattern in route.patterns:
        for text in seen.near[pattern.text]:
            for other in seen.owners.get(text, ()):
                if other is None or _route_key(other, keys) != _route_key(route, keys):
                    return other, text, pattern.text  # not a duplicate (reported as such)
    return None


def _twice(
    users: Sequence[tuple[Route, RunAction]], convention: str | None, keys: dict[str, Any]
) -> list[Diagnostic]:
    """Report each user of one folder whose patterns overlap an earlier user's (the first)."""
    seen: Neighbours[Route | None] = Neighbours()
    if convention is not None:
        seen.add(f"*/event/{convention}", None)
    findings = []
    for route, action in users:
        for pattern in route.patterns:
            seen.learn(pattern.text)
        clash = _first_clash(route, seen, keys)
        if clash is not None:
            message = _twice_message(action.path, *clash)
            findings.append(_warning(route, action.line, message))
        for pattern in route.patterns:
            seen.add(pattern.text, route)
    return findings


def twice_findings(
    routes: Sequence[Route], events_dirs: Sequence[Path], keys: dict[str, Any]
) -> list[Diagnostic]:
    """Report handler folders that one event would run twice (two routes, or route and events)."""
    users: dict[str, list[tuple[Route, RunAction]]] = defaultdict(list)
    real: dict[Path, str] = {}
    for route in routes:
        runs = {a.path: a for a in route.actions if isinstance(a, RunAction)}
        for path, action in runs.items() if route.enabled else ():
            if path not in real:
                real[path] = os.path.realpath(path)
            users[real[path]].append((route, action))
    conventions = {
        os.path.realpath(folder): folder.name
        for folder in _event_folders(events_dirs)
        if SAFE_NAME.fullmatch(folder.name)
    }
    findings = []
    for folder, found in users.items():
        if len(found) > 1 or folder in conventions:
            findings += _twice(found, conventions.get(folder), keys)
    return findings


# --- event names in the past tense -----------------------------------------------------------

_IRREGULAR = {
    "begin": "begun", "bind": "bound", "break": "broken", "bring": "brought", "build": "built",
    "buy": "bought", "catch": "caught", "choose": "chosen", "do": "done", "draw": "drawn",
    "drive": "driven", "fall": "fallen", "feel": "felt", "find": "found", "fly": "flown",
    "forget": "forgotten", "freeze": "frozen", "get": "got", "give": "given", "go": "gone",
    "grow": "grown", "hang": "hung", "hide": "hidden", "hold": "held", "keep": "kept",
    "know": "known", "lay": "laid", "lead": "led", "leave": "left", "lose": "lost",
    "make": "made", "meet": "met", "pay": "paid", "rebuild": "rebuilt", "redo": "redone",
    "resend": "resent", "rewrite": "rewritten", "ride": "ridden", "rise": "risen", "say": "said",
    "see": "seen", "sell": "sold", "send": "sent", "shake": "shaken", "show": "shown",
    "sleep": "slept", "speak": "spoken", "spend": "spent", "stand": "stood", "steal": "stolen",
    "stick": "stuck", "strike": "struck", "take": "taken", "teach": "taught", "tear": "torn",
    "tell": "told", "think": "thought", "throw": "thrown", "unbind": "unbound", "undo": "undone",
    "wake": "woken", "wear": "worn", "win": "won", "withdraw": "withdrawn", "write": "written",
    "overwrite": "overwritten",
}  # fmt: skip
_UNCHANGED = {
    "set", "reset", "preset", "upset", "offset", "run", "rerun", "cut", "put", "shut", "split",
    "spread", "read", "hit", "let", "quit", "cast", "broadcast", "cost", "hurt", "burst",
}  # fmt: skip
_PAST = frozenset(_IRREGULAR.values()) | _UNCHANGED | {"gotten"}
_DOUBLING = {
    "commit", "submit", "permit", "admit", "omit", "refer", "prefer", "occur", "recur",
    "control", "patrol", "transfer", "compel", "expel", "propel", "regret", "equip", "deter",
}  # fmt: skip
_VOWELS = "aeiou"


def _doubles(word: str) -> bool:
    """Return True when ``word`` doubles its last consonant: stop -> stopped."""
    if word in _DOUBLING:
        return True
    if len(word) < 3 or word[-1] in _VOWELS + "wxy" or word[-2] not in _VOWELS:
        return False
    return word[-3] not in _VOWELS and len(re.findall(f"[{_VOWELS}]+", word)) == 1


def _base(word: str) -> str:
    """Return the base form of ``starting``/``stopping``/``updates``."""
    if word.endswith("ing") and len(word) > 5:
        stem = word[:-3]
        return stem[:-1] if stem[-1] == stem[-2] and _doubles(stem[:-1]) else stem
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def past_tense(word: str) -> str:
    """Return the past participle of an English verb by simple rules: add -> added."""
    base = _base(word.lower())
    if base in _IRREGULAR:
        return _IRREGULAR[base]
    if base in _PAST or base.endswith("ed"):
        return base
    if base.endswith("e"):
        return base + "d"
    if len(base) > 1 and base.endswith("y") and base[-2] not in _VOWELS:
        return base[:-1] + "ied"
    return base + (base[-1] if _doubles(base) else "") + "ed"


def _tense_problem(name: str) -> str | None:
    """Return the suggested name when the last word of ``name`` is not in the past tense."""
    word = re.split(r"[-_.]", name)[-1].lower()
    if not word.isalpha() or word.endswith("ed") or word in _PAST:
        return None
    return name[: len(name) - len(word)] + past_tense(word)


def _literal_name(channel: str) -> str | None:
    _, sep, name = channel.partition(EVENT_MARK)
    return name if sep and name and not _NOT_LITERAL.intersection(name) else None


def tense_findings(route: Route) -> list[Diagnostic]:
    """Report literal event names, in patterns and emitted channels, not in the past tense."""
    places = [(route.line, f"pattern {p.text}", p.text) for p in route.patterns]
    places += [
        (a.line, f"emitted channel {a.channel.source}", a.channel.source)
        for a in route.actions
        if isinstance(a, EmitAction)
    ]
    findings = []
    for line, where, channel in places:
        name = _literal_name(channel)
        suggestion = _tense_problem(name) if name else None
        if name and suggestion:
            message = (
                f"event name {name!r} ({where}) is not in the past tense; event names say "
                f"what happened: did you mean {suggestion!r}?"
            )
            findings.append(_warning(route, line, message))
    return findings
