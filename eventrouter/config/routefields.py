"""The validators of a route file's values: names, channel patterns, templates, agents.

Each takes the raw YAML value and returns the typed one, or raises ValueError with a message
that says what to do; ``routefile`` wraps them into its voluptuous schema. The validators
that route test files share (text, durations, counts) are in ``validators``.
"""

from __future__ import annotations

from typing import Any

from eventrouter.config.excerpt import bound_message, excerpt
from eventrouter.config.patterns import ChannelPattern, PatternError
from eventrouter.config.payloads import WELL_KNOWN, parse_field
from eventrouter.config.templates import (
    Condition,
    TemplateSyntaxError,
    Text,
    condition_of,
    text_of,
)
from eventrouter.config.validators import kind, text
from eventrouter.config.valuetemplates import Value, value_of
from eventrouter.model import AGENT_ID, ROUTE_NAME, SAFE_NAME, TASK_ACTION


def route_name(value: Any) -> str:
    """Return a route name; raise ValueError when it is not one."""
    name = text(value)
    if not ROUTE_NAME.fullmatch(name):
        raise ValueError(f"route name {excerpt(name)} must match [a-z0-9][a-z0-9._-]*")
    return name


def channel_pattern(value: Any) -> ChannelPattern:
    """Return one parsed channel pattern."""
    try:
        return ChannelPattern.shared(text(value))
    except PatternError as exc:
        problem = bound_message(str(exc))
        raise ValueError(f"bad channel pattern {excerpt(value)}: {problem}") from exc


def channel_patterns(value: Any) -> tuple[ChannelPattern, ...]:
    """Return the patterns of ``on``: one, or a list of at least one."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected at least one channel pattern")
    return tuple(channel_pattern(item) for item in items)


def _template_error(kind: str, exc: TemplateSyntaxError) -> ValueError:
    where = f" (template line {exc.line})" if exc.line > 1 else ""
    return ValueError(f"{kind} syntax error: {bound_message(str(exc))}{where}")


def condition(value: Any) -> Condition:
    """Return the compiled ``when`` expression (written without ``{{ }}``)."""
    source = text(value).strip()
    if source.startswith("{{") and source.endswith("}}"):
        raise ValueError("'when' is an expression: write it without {{ }}")
    try:
        return condition_of(source)
    except TemplateSyntaxError as exc:
        raise _template_error("condition", exc) from exc


def text_template(value: Any) -> Text:
    """Return a compiled text template (a string or a number written as one)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a string, got {kind(value)}")
    try:
        return text_of(str(value))
    except TemplateSyntaxError as exc:
        raise _template_error("template", exc) from exc


def value_template(value: Any, what: str = "") -> Value:
    """Return a compiled value template (``payload``, ``data``, ``extra``)."""
    try:
        return value_of(value, what)
    except TemplateSyntaxError as exc:
        raise _template_error("template", exc) from exc


def runs_on(value: Any) -> Text:
    """``leader``, ``all``, a node id, or a template naming a node."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected leader, all or a node, got {kind(value)}")
    source = str(value).strip()
    if source in ("leader", "all") or source.isdigit() or any(m in source for m in "{}"):
        return text_template(source)
    raise ValueError(
        f"runs_on {source!r} is not 'leader', 'all', a node number or a template naming a "
        'node (runs_on: "{{ payload.node }}")'
    )


def agent_id(value: Any) -> Text:
    """Return the template of a task's agent, checked when it holds no template."""
    template = text_template(value)
    if template.static and not AGENT_ID.fullmatch(template.source):
        raise ValueError(
            f"agent {template.source!r} is not an NS8 agent id: cluster, node/<number> or "
            "module/<id> (module/traefik1)"
        )
    return template


def task_action(value: Any) -> str:
    """Return an NS8 action name."""
    name = text(value)
    if not TASK_ACTION.fullmatch(name):
        raise ValueError(f"action name {name!r} must match [a-z0-9-]+")
    return name


def event_name(value: Any) -> str:
    """Return the name of an operator's event schema (not a well-known event)."""
    name = text(value)
    if not SAFE_NAME.fullmatch(name):
        raise ValueError(f"event name {excerpt(name)} must match [A-Za-z0-9][A-Za-z0-9._-]*")
    if name in WELL_KNOWN:
        raise ValueError(f"{excerpt(name)} is a well-known NS8 event; its schema is built in")
    return name


def event_fields(value: Any) -> dict[str, Any]:
    """Return the ``fields`` of an event schema after checking each type."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of field names to types, got {kind(value)}")
    for key, raw in value.items():
        if not isinstance(key, str) or not key.rstrip("?"):
            raise ValueError(f"{excerpt(key)} is not a field name")
        try:
            parse_field(raw)
        except ValueError as exc:
            raise ValueError(bound_message(str(exc))) from exc
    return dict(value)
