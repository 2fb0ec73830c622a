"""What templates refer to: payload fields, captures and names, read from the Jinja2 syntax
tree (never rendered), for the deep lint; and the channels an emit can produce.

templates.py owns rendering; this module only reads syntax trees, which is why it imports
jinja2 too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from functools import lru_cache, partial
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.defaults import DEFAULT_NAMESPACE

from eventrouter.analysis.loops import (
    SEGMENT,
    STAR,
    Glob,
    Token,
    channel_glob,
    overlap,
    pattern_glob,
)
from eventrouter.config.ns8 import TESTS
from eventrouter.config.payloads import EventSpec
from eventrouter.config.suggest import close_match
from eventrouter.config.valuetemplates import ListPart, MappingPart, NativePart, TextPart, Value
from eventrouter.errors import Diagnostic, Severity
from eventrouter.model import (
    EVENT_MARK,
    Action,
    EmitAction,
    ExecAction,
    Route,
    RouterInfo,
    RunAction,
)

#: Parses only (lint never renders): a plain environment knows the same syntax.
_ENV = jinja2.Environment(keep_trailing_newline=True)


_MARKERS = ("{{", "{%", "{#")


#: Names a template sees (README "Routes"), and those Jinja2 itself provides.
#: ``env`` is a mapping of variables: which ones exist is only known where the router runs.
CONTEXT = ("channel", "source", "name", "payload", "raw", "match", "route", "router", "env")


_BUILTIN = frozenset(DEFAULT_NAMESPACE) | {"loop", "caller", "self", "varargs", "kwargs"}


_CONSTANTS = {"and", "or", "not", "is", "in", "true", "false", "none", "True", "False", "None"}


_KEYWORDS = _CONSTANTS | {
    "if", "else", "elif", "endif", "for", "endfor", "set", "endset", "recursive", "with",
    "endwith", "macro", "endmacro", "call", "endcall", "filter", "endfilter", "block", "endblock",
    "include", "import", "from", "as", "ignore", "missing", "context", "without", "extends", "do",
    "break", "continue",
}  # fmt: skip


_ROUTER_FIELDS = tuple(RouterInfo().template_value())
_ROUTER_LIST = f" (fields: {', '.join(_ROUTER_FIELDS)})"
_KNOWN = _KEYWORDS | set(CONTEXT) | _BUILTIN | set(_ENV.filters) | set(_ENV.tests) | set(TESTS)


_CODE = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.DOTALL)


_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)


_FIELD = re.compile(
    r"\b(payload|match|router)\s*(?:\.\s*([A-Za-z_]\w*+)|\[\s*(['\"])([^'\"]*)\3\s*\])"
    r"(?!\s*(?:\(|\|\s*d(?:efault)?\b|is\s+(?:not\s+)?(?:un)?defined\b))"
)


#: Every payload field a template names, guarded or not: `payload.f`, `payload['f']`,
#: `payload.get('f')`, `'f' in payload`. A guard keeps a template from failing, not a
#: misspelt field from making the route never fire. Only `| default(...)` says "this field
#: may come, here is its value" (the examples pass an optional `domains` on that way).
_ANY_FIELD = re.compile(
    r"\bpayload\s*(?:\.\s*([A-Za-z_]\w*+)(?!\s*\()|\[\s*(['\"])([^'\"]*)\2\s*\])"
    r"(?!\s*\|\s*d(?:efault)?\b)"
    r"|\bpayload\s*\.\s*get\s*\(\s*(['\"])([^'\"]*)\4"
    r"|(['\"])([^'\"]*)\6\s+(?:not\s+)?in\s+payload\b"
)


_WORD = re.compile(r"(?<![\w.])[A-Za-z_]\w*")


_RAW = re.compile(r"\{%[-+]?\s*raw\b")


#: Tests and filters that may be given an undefined value without failing.
_GUARDS = ("defined", "undefined", "default", "d")


_SOURCE_GLOBS = {"cluster": "cluster", "node": "node/*", "module": "module/*"}


NOT_LITERAL = frozenset("*?[]{}\\/%#")


Key = tuple[str, ...]


def warning(where: Route | str, line: int, message: str) -> Diagnostic:
    if isinstance(where, Route):
        return Diagnostic(where.file, line, "warning", f"route {where.name}: {message}")
    return Diagnostic(where, line, "warning", message)


@lru_cache(maxsize=8192)
def parse(source: str) -> nodes.Template | None:
    try:
        return _ENV.parse(source)
    except jinja2.TemplateSyntaxError:
        return None  # config.py refuses such templates; nothing to lint


def _expression(source: str) -> nodes.Template | None:
    return parse("{{ " + source + " }}")


def _channel_part(node: nodes.Node) -> str | Sequence[Token]:
    """Return what one part of a channel template can render: text, a segment or anything."""
    if isinstance(node, nodes.TemplateData):
        return node.data
    key = _key(node)
    return SEGMENT if key is not None and key[0] == "match" and len(key) == 2 else (STAR,)


def emit_glob(action: EmitAction) -> Glob:
    """Return the channels an emit can produce (a capture is one segment, other parts a star)."""
    source = action.channel.source
    if not any(marker in source for marker in _MARKERS):
        return channel_glob(source, [source])
    tree = parse(source)
    parts: list[str | Sequence[Token]] = [(STAR,)]
    if tree is not None:
        parts = []
        for node in tree.body:  # text inside {% if %} / {% for %} may or may not appear
            if isinstance(node, nodes.Output):
                parts += [_channel_part(child) for child in node.nodes]
            else:
                parts.append((STAR,))
    return channel_glob(source, parts)


def can_stop(route: Route) -> bool:
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


def _named_field(node: nodes.Node, parent: nodes.Node | None) -> Key | None:
    """Return ``("payload", field)`` when node names a payload field, guarded or not."""
    if isinstance(node, nodes.Compare) and len(node.ops) == 1:  # 'field' in payload
        operand, field = node.ops[0], _const_text(node.expr)
        is_payload = isinstance(operand.expr, nodes.Name) and operand.expr.name == "payload"
        if operand.op in ("in", "notin") and is_payload and field is not None:
            return ("payload", field)
        return None
    if isinstance(node, nodes.Call) and node.args:  # payload.get('field')
        key, field = _key(node.node), _const_text(node.args[0])
        return ("payload", field) if key == ("payload", "get") and field is not None else None
    key = _key(node)
    if key is None or key[0] != "payload" or len(key) != 2:
        return None
    called = isinstance(parent, nodes.Call) and parent.node is node
    defaulted = isinstance(parent, nodes.Filter) and parent.name in ("default", "d")
    return None if called or defaulted else key


def _payload_fields(node: nodes.Node, parent: nodes.Node | None = None) -> Iterator[Key]:
    """Yield every payload field the tree names, guards and defaults included."""
    found = _named_field(node, parent)
    if found is not None:
        yield found
    for child in node.iter_child_nodes():
        yield from _payload_fields(child, node)


def _all_references(tree: nodes.Template) -> list[Key]:
    """Return the unprotected references, then the payload fields named under a guard."""
    keys = dict.fromkeys(_references(tree))
    if not any(name.name == "payload" and name.ctx != "load" for name in tree.find_all(nodes.Name)):
        keys.update(dict.fromkeys(_payload_fields(tree)))
    return list(keys)


def reads(source: str) -> set[Key] | None:
    """Return all an expression reads, guarded or not: ``(name,)`` whole, ``(name, field)``
    one field (``payload.get(...)`` and ``'x' in payload`` read the whole payload)."""
    tree = _expression(source)
    if tree is None:
        return None
    found: set[Key] = set()

    def walk(node: nodes.Node, parent: nodes.Node | None) -> None:
        if isinstance(node, nodes.Name) and node.ctx == "load":
            found.add(_read(node, parent))
        for child in node.iter_child_nodes():
            walk(child, node)

    walk(tree, None)
    return {key for key in found if key[0] not in DEFAULT_NAMESPACE}


def _read(name: nodes.Name, parent: nodes.Node | None) -> Key:
    if isinstance(parent, nodes.Getattr) and not hasattr(dict, parent.attr):
        return (name.name, parent.attr)
    field = parent.arg if isinstance(parent, nodes.Getitem) else None
    if isinstance(field, nodes.Const) and isinstance(field.value, str):
        return (name.name, field.value)
    return (name.name,)  # the whole of it


Template = tuple[str, int, str, bool]  # label, line, source, is a bare expression


def _templates(route: Route) -> Iterator[Template]:
    """Yield every template of a route."""
    if route.when is not None:
        yield "when", route.line, route.when.source, True
    if route.runs_on is not None:
        yield "runs_on", route.line, route.runs_on.source, False
    if route.key is not None:
        yield "key", route.line, route.key.source, False
    for action in route.actions:
        yield from _action_templates(action)


def _action_templates(action: Action) -> Iterator[Template]:
    """Yield every template of one action."""
    if isinstance(action, EmitAction):
        yield "emit channel", action.line, action.channel.source, False
        if isinstance(action.payload, Value):
            yield from _value_templates("emit payload", action.line, action.payload)
        return
    if isinstance(action, ExecAction):
        for index, template in enumerate(action.args, 1):
            yield f"exec argument {index}", action.line, template.source, False
    if isinstance(action, RunAction | ExecAction):
        for name, template in action.env:
            yield f"env {name}", action.line, template.source, False
        return
    yield "task agent", action.line, action.agent.source, False
    for label, value in (("task data", action.data), ("task extra", action.extra)):
        if isinstance(value, Value):
            yield from _value_templates(label, action.line, value)


def _value_templates(label: str, line: int, value: Value) -> Iterator[Template]:
    part = value.part
    if isinstance(part, NativePart):
        yield label, line, part.expression.source, True
    elif isinstance(part, TextPart):
        yield label, line, value.source, False
    elif isinstance(part, MappingPart):
        for key, item in part.items:
            yield from _value_templates(f"{label}.{key}", line, item)
    elif isinstance(part, ListPart):
        for index, child in enumerate(part.items):
            yield from _value_templates(f"{label}[{index}]", line, child)


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
    keys = [(found[1], found[2] or found[4]) for found in _FIELD.finditer(code)]
    fields = [
        next(text for text in found.groups()[::2] if text is not None)
        for found in _ANY_FIELD.finditer(code)
    ]
    return tuple(keys + [("payload", field) for field in fields])


def _tree(source: str, expression: bool, route: Route, specs: Sequence[EventSpec]) -> Any:
    """Return the syntax tree of a template that may hold a problem, else None."""
    keys = _scan(source, expression)
    if keys is not None and not any(next(_problems(k, route, specs), None) for k in keys):
        return None  # parsing is slow; the quick scan proved every reference fine
    return _expression(source) if expression else parse(source)


def _spec_of(pattern: str, schemas: dict[str, EventSpec]) -> EventSpec | None:
    """Return the schema of the one event ``pattern`` names literally, when its source fits."""
    source, sep, name = pattern.partition(EVENT_MARK)
    spec = schemas.get(name) if sep and not NOT_LITERAL.intersection(name) else None
    if spec is None:
        return None
    fits = pattern_glob(_SOURCE_GLOBS.get(spec.sources, "*"))
    return spec if overlap(pattern_glob(source), fits) else None


Problem = tuple[Severity, str]  # what is wrong


def _problems(key: Key, route: Route, specs: Sequence[EventSpec]) -> Iterator[Problem]:
    """Yield why a reference fails for some event the route can receive.

    A name, router field or capture that does not exist fails at every such event: an error.
    A payload field is data: an event may carry more than its schema says, so a warning.
    """
    if key[0] not in CONTEXT:
        fix = did_you_mean(key[0], CONTEXT, "") or f" (templates see: {', '.join(CONTEXT)})"
        yield "error", f"{key[0]}, which is not defined{fix}"
    elif key[0] == "router" and len(key) == 2 and key[1] not in _ROUTER_FIELDS:
        fix = did_you_mean(key[1], _ROUTER_FIELDS, "router.")
        yield "error", f"router.{key[1]}, which the router does not have{fix or _ROUTER_LIST}"
    elif key[0] == "match" and len(key) == 2:
        for pattern in route.patterns:
            captures = getattr(pattern, "captures", ())
            if key[1] not in captures:
                have = f"captures: {', '.join(captures)}" if captures else "it captures nothing"
                fix = did_you_mean(key[1], captures, "match.") or f" ({have})"
                yield "error", f"match.{key[1]}, which pattern {pattern.text} does not capture{fix}"
    elif key[0] == "payload" and len(key) == 2:
        for spec in specs:
            if key[1] not in spec.fields:
                fields = ", ".join(spec.fields) or "none"
                yield (
                    "warning",
                    f"payload.{key[1]}, which {spec.name} does not carry (fields: {fields})",
                )


def did_you_mean(word: str, known: Sequence[str], prefix: str) -> str:
    """Return `` (did you mean PREFIX+name?)`` for a known name close to ``word``, else ""."""
    close = close_match(word, known)
    return f" (did you mean {prefix}{close}?)" if close is not None else ""


def template_findings(route: Route, schemas: dict[str, EventSpec]) -> list[Diagnostic]:
    """Report template references to names, captures or payload fields an event lacks."""
    found = {spec.name: spec for p in route.patterns if (spec := _spec_of(p.text, schemas))}
    specs = list(found.values())
    findings = []
    for label, line, source, expression in _templates(route):
        tree = _tree(source, expression, route, specs)
        for key in _all_references(tree) if tree is not None else ():
            for severity, problem in _problems(key, route, specs):
                message = f"route {route.name}: '{label}' uses {problem}"
                findings.append(Diagnostic(route.file, line, severity, message))
    return findings


def forget() -> None:
    """Drop the syntax trees and scans kept for the table being checked."""
    parse.cache_clear()
    _scan.cache_clear()
