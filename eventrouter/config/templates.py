"""Sandboxed Jinja2 templates: checked at load time, compiled on first use, rendered at run time.

Text and expression templates, and the context they render in, live here; structures whose
strings are templates (``payload:``, ``data:``) are in ``valuetemplates``, built of these.
Templates render in an immutable sandbox with ``StrictUndefined``: no file, environment or
attribute access beyond the context, and an undefined variable is an error
(``| default(...)`` and ``is defined`` still work).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser

from eventrouter.config.budget import WATCHDOG, BudgetExceeded
from eventrouter.config.sandbox import MAX_SIZE, make_environment
from eventrouter.config.stepenv import step_env
from eventrouter.config.suggest import did_you_mean
from eventrouter.errors import TemplateRenderError
from eventrouter.model import Event
from eventrouter.support.sharing import SharedTable

T = TypeVar("T")

_ENV = make_environment()
#: What starts a template's placeholder, block or comment: text without one is static.
MARKERS = ("{{", "{%", "{#")


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
            hint = did_you_mean(node.name, known) or f"; {kind}s: {', '.join(sorted(known))}"
            raise TemplateSyntaxError(f"no {kind} named {node.name!r}{hint}", node.lineno or 1)


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
def _names_read(source: str) -> frozenset[str]:
    """Return the context names an expression reads (loaded, not set by the expression)."""
    try:
        tree = Parser(_ENV, source, state="variable").parse_expression()
    except jinja2.TemplateSyntaxError:
        return frozenset()
    found = [tree] if isinstance(tree, nodes.Name) else []
    return frozenset(
        node.name for node in [*found, *tree.find_all(nodes.Name)] if node.ctx == "load"
    )


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


def set_timeout(seconds: float) -> None:
    """Set how long one render may take before it is aborted (``run --template-timeout``)."""
    WATCHDOG.timeout = seconds


def budgeted(kind: str, source: str, render: Callable[[], T]) -> T:
    """Return ``render()`` within the time budget; raise TemplateRenderError past it."""
    try:
        return WATCHDOG.run(render)
    except BudgetExceeded as exc:
        raise TemplateRenderError(f"{kind} {source!r} aborted: {exc}") from None


def _join_bounded(pieces: Iterable[str]) -> str:
    """Join rendered pieces as they come; refuse a text longer than MAX_SIZE."""
    parts, size = [], 0
    for piece in pieces:
        size += len(piece)
        if size > MAX_SIZE:
            raise SecurityError(f"rendered text exceeds the size limit ({MAX_SIZE} characters)")
        parts.append(piece)
    return "".join(parts)


class Text:
    """A template rendered as text (implements ``model.TextTemplate``)."""

    __slots__ = ("__weakref__", "source", "static")

    def __init__(self, source: str) -> None:
        self.source = source
        self.static = not any(marker in source for marker in MARKERS)
        if not self.static:
            _check_syntax(source)

    def render(self, context: Mapping[str, Any]) -> str:
        """Return the rendered text; raise TemplateRenderError."""
        if self.static:
            return self.source
        return budgeted("template", self.source, lambda: self._render(context))

    def _render(self, context: Mapping[str, Any]) -> str:
        try:
            return _join_bounded(_compiled_template(self.source).generate(context))
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
    """A ``when:`` expression (implements ``model.Expression``).

    ``label`` names it in messages when it is not a condition: the ``{{ expression }}`` of
    an emitted payload is a template, and its failure must say so.
    """

    __slots__ = ("__weakref__", "label", "path", "source")

    def __init__(self, source: str, label: str | None = None) -> None:
        self.source = source
        self.label = label
        _check_expression(source)
        stripped = source.strip()
        # A bare ``payload.module`` is the commonest expression: look it up directly.
        self.path = tuple(stripped.split(".")) if _PATH.fullmatch(stripped) else None

    def reads(self, name: str) -> bool:
        """Return True when the expression reads the context name ``name`` (``env``)."""
        if self.path is not None:
            return self.path[0] == name
        return name in _names_read(self.source)

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """Return the expression's value; raise TemplateRenderError."""
        if self.path is not None:
            value = _lookup(context, self.path)
            if value is not _MISSING:
                return value
        kind, shown = ("condition", self.source) if self.label is None else ("template", self.label)
        return budgeted(kind, shown, lambda: self._evaluate(context, kind, shown))

    def _evaluate(self, context: Mapping[str, Any], kind: str, shown: str) -> Any:
        try:
            value = _compiled_expression(self.source)(**context)
            if isinstance(value, jinja2.Undefined):
                value._fail_with_undefined_error()
            return value
        except Exception as exc:
            raise _fail(kind, shown, exc) from exc


_TEXTS: SharedTable[Text] = SharedTable()
_CONDITIONS: SharedTable[Condition] = SharedTable()


def text_of(source: str) -> Text:
    """Return the text template of ``source``: one object for every route that writes it."""
    return _TEXTS.get(source, lambda: Text(source))


def condition_of(source: str, label: str | None = None) -> Condition:
    """Return the expression ``source``: one object for every route that writes it."""
    return _CONDITIONS.get((source, label), lambda: Condition(source, label))


#: ``router`` when the caller says nothing about where it runs: a one-node cluster's leader.
_NO_ROUTER: dict[str, Any] = {"node": None, "agent": None, "instance": "", "leader": True}


def event_context(
    event: Event,
    *,
    match: Mapping[str, str] | None = None,
    route: str = "",
    router: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return the template context (README "Routes") for ``event``; ``router`` where it runs.

    ``env``: the router's environment and the module's environment file (none: empty).
    """
    return {
        "env": step_env(event, env),
        "router": dict(router) if router is not None else dict(_NO_ROUTER),
        "channel": event.channel,
        "source": event.source,
        "name": event.name,
        "payload": event.payload if event.is_json else None,
        "raw": event.text,
        "match": dict(match or {}),
        "route": route,
    }
