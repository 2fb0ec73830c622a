"""Value templates: structures whose strings are templates (``payload:``, ``data:``, ``extra:``).

A string that is exactly one ``{{ expression }}`` yields the expression's JSON value, any
other string with a placeholder yields text, and mappings and lists keep their shape. Built
once at load time into typed parts (``Constant``, ``TextPart``, ``NativePart``,
``MappingPart``, ``ListPart``), which the deep check reads too; rendered with ``templates``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2

from eventrouter.config.templates import MARKERS, Condition, Text, budgeted, condition_of, text_of
from eventrouter.errors import TemplateRenderError
from eventrouter.support.sharing import SharedTable


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


@dataclass(frozen=True, slots=True)
class Constant:
    """A value with no template in it, rendered as is."""

    value: Any


@dataclass(frozen=True, slots=True)
class TextPart:
    """A string with placeholders, rendered as text."""

    template: Text


@dataclass(frozen=True, slots=True)
class NativePart:
    """A string that is exactly one ``{{ expression }}``: the expression's JSON value."""

    expression: Condition


@dataclass(frozen=True, slots=True)
class MappingPart:
    """A mapping whose values hold templates."""

    items: tuple[tuple[str, Value], ...]


@dataclass(frozen=True, slots=True)
class ListPart:
    """A list whose items hold templates."""

    items: tuple[Value, ...]


Part = Constant | TextPart | NativePart | MappingPart | ListPart


def _part(data: Any) -> Part:
    """Return the typed part for ``data``: strings are sorted by their template markers."""
    if isinstance(data, str):
        expression = _single_expression(data)
        if expression is not None:
            return NativePart(condition_of(expression, data))
        if any(marker in data for marker in MARKERS):
            return TextPart(text_of(data))
        return Constant(data)
    if not _has_template(data):
        return Constant(_plain(data))  # one object, not a tree of them
    if isinstance(data, Mapping):
        # Keys repeat across routes (``module``, ``domains``): one string each.
        return MappingPart(
            tuple((sys.intern(str(key)), value_of(item)) for key, item in data.items())
        )
    if isinstance(data, list | tuple):
        return ListPart(tuple(value_of(item) for item in data))
    return Constant(data)


class _Where(TemplateRenderError):
    """A failure inside a structure, with the key path to it (``.k[1]``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path.lstrip('.')}: {reason}")
        self.path = path
        self.reason = reason


class Value:
    """A structure whose strings are templates (implements ``model.ValueTemplate``).

    A string that is exactly one ``{{ expression }}`` yields the expression's native value;
    any other string yields text; mappings and lists keep their shape. ``what`` names the
    structure (``payload``) in the message of a failure, with the key path inside it.
    """

    __slots__ = ("__weakref__", "direct", "part", "source", "what")

    def __init__(self, data: Any, what: str = "") -> None:
        self.source = data if isinstance(data, str) else ""
        self.part = _part(data)
        self.what = what
        #: Constants and bare ``{{ a.b }}`` lookups only: rendered without arming the time
        #: budget, since a lookup of a value the event holds cannot run away (one that
        #: Jinja2 must decide after all is budgeted by ``Condition.evaluate``).
        self.direct = _direct(self.part)

    def fingerprint(self) -> Any:
        """Return what the structure says, hashable, mapping order left out."""
        part = self.part
        if isinstance(part, Constant):
            return ("c", json.dumps(part.value, sort_keys=True, default=str))
        if isinstance(part, TextPart):
            return ("text", self.source)
        if isinstance(part, NativePart):
            return ("expr", self.source)
        if isinstance(part, MappingPart):
            return ("m", tuple(sorted((key, item.fingerprint()) for key, item in part.items)))
        return ("l", tuple(item.fingerprint() for item in part.items))

    def render(self, context: Mapping[str, Any]) -> Any:
        """Return the rendered JSON value; raise TemplateRenderError."""
        if isinstance(self.part, Constant):
            return self.part.value
        try:
            if self.direct:
                return self._render(context)
            shown = self.source or f"<{self.what or 'payload'}>"
            return budgeted("template", shown, lambda: self._render(context))
        except TemplateRenderError as exc:
            if not self.what:
                raise
            path, reason = (exc.path, exc.reason) if isinstance(exc, _Where) else ("", str(exc))
            raise TemplateRenderError(f"{self.what}{path}: {reason}") from exc

    def _render(self, context: Mapping[str, Any]) -> Any:
        part = self.part
        if isinstance(part, NativePart):
            return _check_json(part.expression.evaluate(context), self.source)
        if isinstance(part, MappingPart):
            rendered = {}
            for key, item in part.items:
                try:
                    rendered[key] = item.render(context)
                except TemplateRenderError as exc:  # the key path is built only for a failure
                    raise _nested(f".{key}", exc) from exc
            return rendered
        if isinstance(part, TextPart):
            return part.template.render(context)
        if isinstance(part, Constant):
            return part.value
        values = []
        for index, item in enumerate(part.items):
            try:
                values.append(item.render(context))
            except TemplateRenderError as exc:
                raise _nested(f"[{index}]", exc) from exc
        return values


_VALUES: SharedTable[Value] = SharedTable()
#: The scalars a leaf may be; the type is part of the key (``1 == True == 1.0``).
_SCALARS = (str, int, float, bool, type(None))


def value_of(data: Any, what: str = "") -> Value:
    """Return ``Value(data, what)``; a scalar's is one object for every route that writes it.

    Mappings and lists are built afresh (their leaves are shared): a key for them would cost
    a walk of the whole structure.
    """
    if type(data) not in _SCALARS:
        return Value(data, what)
    return _VALUES.get((type(data), data, what), lambda: Value(data, what))


def _direct(part: Part) -> bool:
    """Return True when ``part`` holds only constants and bare lookups (``payload.n``)."""
    if isinstance(part, Constant):
        return True
    if isinstance(part, NativePart):
        return part.expression.path is not None
    if isinstance(part, MappingPart):
        return all(item.direct for _, item in part.items)
    if isinstance(part, ListPart):
        return all(item.direct for item in part.items)
    return False


def _nested(step: str, exc: TemplateRenderError) -> _Where:
    """Return the failure of an item of a structure, with ``step`` before its key path."""
    if isinstance(exc, _Where):
        return _Where(step + exc.path, exc.reason)
    return _Where(step, str(exc))


def _has_template(data: Any) -> bool:
    if isinstance(data, str):
        return any(marker in data for marker in MARKERS)
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
