"""Sandboxed Jinja2 templates: checked at load time, compiled on first use, rendered at run time.

All of Jinja2 lives here. Templates render in an immutable sandbox with ``StrictUndefined``:
no file, environment or attribute access beyond the context, and an undefined variable is an
error (``| default(...)`` and ``is defined`` still work).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from eventrouter.errors import TemplateRenderError
from eventrouter.model import Event

_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)
_ENV.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
_MARKERS = ("{{", "{%", "{#")


class TemplateSyntaxError(ValueError):
    """A template does not parse; ``line`` is relative to the template text (1-based)."""

    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.line = line


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_LITERAL = r"""(?:'[^'\\]*'|"[^"\\]*"|-?[0-9]+(?:\.[0-9]+)?|\[\]|\{\}|true|false|none)"""
#: ``a.b.c | filter('x') | other`` : the shape most templates have, known to parse.
_SIMPLE = re.compile(
    rf"\s*{_IDENT}(?:\.{_IDENT})*(?:\s*\|\s*({_IDENT})(?:\(\s*(?:{_LITERAL}"
    rf"(?:\s*,\s*{_LITERAL})*)?\s*\))?)*\s*"
)
_PATH = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_FILTER_NAME = re.compile(rf"\|\s*({_IDENT})")
#: Sources already checked (bounded): generated route sets repeat the same templates.
_CHECKED: set[str] = set()
_CHECKED_MAX = 50_000


def _remember(source: str) -> None:
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED.add(source)


def _check_names(tree: nodes.Node) -> None:
    """Refuse unknown filters and tests, which parsing alone lets through."""
    found = [tree] if isinstance(tree, nodes.Filter | nodes.Test) else []
    for node in [*found, *tree.find_all((nodes.Filter, nodes.Test))]:
        known = _ENV.filters if isinstance(node, nodes.Filter) else _ENV.tests
        if node.name not in known:
            kind = "filter" if isinstance(node, nodes.Filter) else "test"
            raise TemplateSyntaxError(f"no {kind} named {node.name!r}", node.lineno or 1)


def _simple_expression(source: str) -> bool:
    """Return True for the common ``path | filter(literal)`` shape, with known filters."""
    if not _SIMPLE.fullmatch(source):
        return False
    return all(name in _ENV.filters for name in _FILTER_NAME.findall(source))


_PLACEHOLDER = re.compile(r"\{\{-?(.*?)-?\}\}", re.DOTALL)


def _simple_template(source: str) -> bool:
    """Return True for text with only simple ``{{ path | filter }}`` placeholders."""
    if "{%" in source or "{#" in source:
        return False
    rest = _PLACEHOLDER.sub("", source)
    if "{{" in rest:
        return False
    return all(_simple_expression(inner) for inner in _PLACEHOLDER.findall(source))


def _check_syntax(source: str) -> None:
    """Check a template's syntax and names without compiling it."""
    if source in _CHECKED or _simple_template(source):
        return
    try:
        _check_names(_ENV.parse(source))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateSyntaxError(exc.message or str(exc), exc.lineno or 1) from exc
    _remember(source)


def _check_expression(source: str) -> None:
    """Parse an expression as ``compile_expression`` does, without compiling it.

    Checking is all load time needs; compiling to Python code is done on first use (and
    cached), which keeps loading 10,000 routes fast and their memory small.
    """
    if source in _CHECKED or _simple_expression(source):
        return
    try:
        parser = Parser(_ENV, source, state="variable")
        expression = parser.parse_expression()
        if not parser.stream.eos:
            raise jinja2.TemplateSyntaxError(
                "chunk after expression", parser.stream.current.lineno, None, None
            )
        _check_names(expression)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateSyntaxError(exc.message or str(exc), exc.lineno or 1) from exc
    _remember(source)


@lru_cache(maxsize=4096)
def _compiled_template(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


@lru_cache(maxsize=4096)
def _compiled_expression(source: str) -> Any:
    return _ENV.compile_expression(source, undefined_to_none=False)


def _fail(kind: str, source: str, exc: Exception) -> TemplateRenderError:
    if isinstance(exc, jinja2.UndefinedError):
        reason = f"undefined: {exc.message}"
    elif isinstance(exc, SecurityError):
        reason = f"not allowed in the sandbox: {exc}"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return TemplateRenderError(f"{kind} {source!r} failed: {reason}")


class Text:
    """A template rendered as text (implements ``model.TextTemplate``)."""

    __slots__ = ("source", "static")

    def __init__(self, source: str) -> None:
        self.source = source
        self.static = not any(marker in source for marker in _MARKERS)
        if not self.static:
            _check_syntax(source)

    def render(self, context: Mapping[str, Any]) -> str:
        """Return the rendered text; raise TemplateRenderError."""
        if self.static:
            return self.source
        try:
            return _compiled_template(self.source).render(context)
        except Exception as exc:
            raise _fail("template", self.source, exc) from exc


_MISSING = object()


def _lookup(context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """Follow ``a.b.c`` through mappings as Jinja2 would; _MISSING when Jinja2 must decide.

    Jinja2 tries an attribute before an item, so a key that is also a dict method
    (``payload.items``) and anything that is not a present key is left to Jinja2.
    """
    value: Any = context
    for name in path:
        if not isinstance(value, dict) or name not in value or hasattr(dict, name):
            return _MISSING
        value = value[name]
    return value


class Condition:
    """A ``when:`` expression (implements ``model.Expression``)."""

    __slots__ = ("path", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        _check_expression(source)
        stripped = source.strip()
        # A bare ``payload.module`` is the commonest expression: look it up directly.
        self.path = tuple(stripped.split(".")) if _PATH.fullmatch(stripped) else None

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """Return the expression's value; raise TemplateRenderError."""
        if self.path is not None:
            value = _lookup(context, self.path)
            if value is not _MISSING:
                return value
        try:
            value = _compiled_expression(self.source)(**context)
            if isinstance(value, jinja2.Undefined):
                value._fail_with_undefined_error()
            return value
        except Exception as exc:
            raise _fail("condition", self.source, exc) from exc


def _single_expression(source: str) -> str | None:
    """Return the expression text when ``source`` is exactly one ``{{ expression }}``."""
    if not (source.startswith("{{") and source.endswith("}}")):
        return None
    inner = source[2:-2]
    if any(marker in inner for marker in ("{{", "}}", "{%", "%}", "{#", "#}")):
        return None
    return inner.strip("-+ \t\n") or None


def _check_json(value: Any, source: str) -> Any:
    """Return ``value`` when it is JSON data; raise TemplateRenderError otherwise."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TemplateRenderError(f"template {source!r} gave {value}, which JSON cannot carry")
        return value
    if isinstance(value, list | tuple):
        return [_check_json(item, source) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _check_json(item, source) for key, item in value.items()}
    raise TemplateRenderError(
        f"template {source!r} gave a {type(value).__name__}, which is not JSON data"
    )


class Value:
    """A structure whose strings are templates (implements ``model.ValueTemplate``).

    A string that is exactly one ``{{ expression }}`` yields the expression's native value;
    any other string yields text; mappings and lists keep their shape.
    """

    __slots__ = ("items", "kind", "source")

    def __init__(self, data: Any) -> None:
        self.items: Any = None
        self.source = ""
        if isinstance(data, str):
            self.source = data
            expression = _single_expression(data)
            if expression is not None:
                self.kind, self.items = "expr", Condition(expression)
            elif any(marker in data for marker in _MARKERS):
                self.kind, self.items = "text", Text(data)
            else:
                self.kind, self.items = "const", data
        elif not _has_template(data):
            self.kind, self.items = "const", _plain(data)  # one object, not a tree of them
        elif isinstance(data, Mapping):
            self.kind = "map"
            self.items = tuple((str(key), Value(item)) for key, item in data.items())
        elif isinstance(data, list | tuple):
            self.kind, self.items = "list", tuple(Value(item) for item in data)
        else:
            self.kind, self.items = "const", data

    def fingerprint(self) -> Any:
        """Return what the structure says, hashable, mapping order left out."""
        if self.kind == "const":
            return ("c", json.dumps(self.items, sort_keys=True, default=str))
        if self.kind in ("text", "expr"):
            return (self.kind, self.source)
        if self.kind == "map":
            return ("m", tuple(sorted((key, item.fingerprint()) for key, item in self.items)))
        return ("l", tuple(item.fingerprint() for item in self.items))

    def render(self, context: Mapping[str, Any]) -> Any:
        """Return the rendered JSON value; raise TemplateRenderError."""
        if self.kind == "const":
            return self.items
        if self.kind == "text":
            return self.items.render(context)
        if self.kind == "expr":
            return _check_json(self.items.evaluate(context), self.source)
        if self.kind == "map":
            return {key: item.render(context) for key, item in self.items}
        return [item.render(context) for item in self.items]


def _has_template(data: Any) -> bool:
    if isinstance(data, str):
        return any(marker in data for marker in _MARKERS)
    if isinstance(data, Mapping):
        return any(_has_template(item) for item in data.values())
    if isinstance(data, list | tuple):
        return any(_has_template(item) for item in data)
    return False


def _plain(data: Any) -> Any:
    """Return ``data`` as plain dicts and lists (not the loader's line-stamped ones)."""
    if isinstance(data, Mapping):
        return {str(key): _plain(item) for key, item in data.items()}
    if isinstance(data, list | tuple):
        return [_plain(item) for item in data]
    return data


#: ``router`` when the caller says nothing about where it runs: a one-node cluster's leader.
_NO_ROUTER: dict[str, Any] = {"node": None, "agent": None, "instance": "", "leader": True}


def event_context(
    event: Event,
    *,
    match: Mapping[str, str] | None = None,
    route: str = "",
    router: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the template context (README "Routes") for ``event``; ``router`` where it runs."""
    return {
        "router": dict(router) if router is not None else dict(_NO_ROUTER),
        "channel": event.channel,
        "source": event.source,
        "name": event.name,
        "payload": event.payload if event.is_json else None,
        "raw": event.text,
        "match": dict(match or {}),
        "route": route,
    }
