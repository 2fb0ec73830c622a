"""Event payload schemas: the well-known NS8 events (docs/operating.md), the operators' own.

An operator's event schema is declared under ``schemas:`` of a route file (built by
``routefile``). Here are the payload checks of ``publish`` and of ``schema: strict`` routes;
the schema of route files themselves is ``routefile``'s, their JSON Schema for editors
``editor_schema``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import voluptuous as vol

from eventrouter.errors import PayloadError
from eventrouter.model import Event, Source, split_channel


@dataclass(frozen=True)
class Field:
    """One documented payload field."""

    kind: type | tuple[type, ...]
    required: bool = True
    items: type | None = None  # the item type of a list field


@dataclass(frozen=True)
class EventSpec:
    """A well-known event: where it comes from and what its payload carries."""

    name: str
    sources: Source
    fields: dict[str, Field]


WELL_KNOWN: dict[str, EventSpec] = {
    spec.name: spec
    for spec in (
        EventSpec("module-added", "cluster", {"module": Field(str), "node": Field(int)}),
        EventSpec("module-removed", "cluster", {"module": Field(str), "node": Field(int)}),
        EventSpec(
            "module-domain-changed",
            "cluster",
            {"modules": Field(list, items=str), "domains": Field(list, items=str)},
        ),
        EventSpec(
            "user-domain-changed",
            "any",
            {
                "domain": Field(str),
                "node_id": Field(int, required=False),
                "domains": Field(list, required=False, items=str),
            },
        ),
        EventSpec("ldap-provider-changed", "cluster", {"domain": Field(str), "key": Field(str)}),
        EventSpec(
            "backup-status-changed",
            "node",
            {"node_id": Field(int), "module_id": Field(str), "backup_id": Field(int)},
        ),
        EventSpec("leader-changed", "cluster", {"node_id": Field(int), "endpoint": Field(str)}),
        EventSpec(
            "fqdn-changed",
            "node",
            {"hostname": Field(str), "domain": Field(str), "node": Field(int)},
        ),
    )
}


#: Type names operators use in declared schemas.
TYPE_NAMES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "any": object,
}


def _type_name(text: Any) -> type | tuple[type, ...]:
    if not isinstance(text, str) or text not in TYPE_NAMES:
        raise ValueError(
            f"unknown type {text!r}; use one of: {', '.join(TYPE_NAMES)} or [TYPE] for a list"
        )
    return TYPE_NAMES[text]


def parse_field(raw: Any) -> Field:
    """Return the field described by ``string``, ``integer``, ... or ``[TYPE]`` (a list)."""
    if isinstance(raw, list):
        if len(raw) != 1:
            raise ValueError("a list type is written [TYPE], with exactly one type")
        items = _type_name(raw[0])
        return Field(list, items=items if isinstance(items, type) else None)
    return Field(_type_name(raw))


def declared_spec(name: str, source: Source, fields: dict[str, Any]) -> EventSpec:
    """Return an operator's event schema; a field name ending in ``?`` is optional."""
    parsed: dict[str, Field] = {}
    for key, raw in fields.items():
        optional = key.endswith("?")
        field = parse_field(raw)
        parsed[key.rstrip("?")] = Field(field.kind, not optional, field.items)
    return EventSpec(name, source, parsed)


def payload_problem(spec: EventSpec | None, event: Event) -> str | None:
    """Return why an event does not fit its schema (``schema: strict``), or None."""
    if not event.is_json or not isinstance(event.payload, dict):
        return "payload is not a JSON object"
    if spec is None:
        return None
    if not source_fits(spec, event.source):
        return f"{spec.name} does not come from {spec.sources} (source {event.source!r})"
    try:
        schema_for(spec)(event.payload)
    except vol.MultipleInvalid as exc:
        return "; ".join(
            f"{'.'.join(str(p) for p in error.path) or 'payload'}: {error.error_message}"
            for error in exc.errors
        )
    return None


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise vol.Invalid(f"expected an integer, got {json.dumps(value)}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise vol.Invalid(f"expected a number, got {json.dumps(value)}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise vol.Invalid(f"expected true or false, got {json.dumps(value)}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise vol.Invalid(f"expected a string, got {json.dumps(value)}")
    return value


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise vol.Invalid(f"expected an object, got {json.dumps(value)}")
    return value


def _scalar(kind: type | tuple[type, ...]) -> Any:
    if kind is str:
        return _string
    if kind is dict:
        return _object
    if kind is int:
        return _integer
    if kind is bool:
        return _boolean
    if kind == (int, float):
        return _number
    return kind


def _validator(field: Field) -> Any:
    if field.kind is list:
        return [_scalar(field.items or object)]
    return _scalar(field.kind)


def schema_for(spec: EventSpec) -> vol.Schema:
    """Return the voluptuous schema of a well-known event's payload (extra fields allowed)."""
    return vol.Schema(
        {
            (vol.Required(key) if field.required else vol.Optional(key)): _validator(field)
            for key, field in spec.fields.items()
        },
        extra=vol.ALLOW_EXTRA,
    )


def source_fits(spec: EventSpec, source: str | None) -> bool:
    """Return True when ``source`` is one the event is documented to come from."""
    if spec.sources == "any" or source is None:
        return True
    if spec.sources == "cluster":
        return source == "cluster"
    return source.startswith(spec.sources + "/")


def check_payload(channel: str, text: str, schemas: dict[str, EventSpec] | None = None) -> Any:
    """Return the parsed payload of an event to publish; raise PayloadError saying what is wrong."""
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise PayloadError(f"payload is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(payload).__name__}")
    source, name = split_channel(channel)
    spec = (schemas or WELL_KNOWN).get(name or "")
    if spec is None:
        return payload
    if not source_fits(spec, source):
        raise PayloadError(
            f"{spec.name} is published by the {spec.sources} (channel "
            f"{'cluster' if spec.sources == 'cluster' else spec.sources + '/<id>'}"
            f"/event/{spec.name}), not by {source!r}"
        )
    problem = payload_problem(spec, Event(channel, b"", payload, True))
    if problem is not None:
        raise PayloadError(f"{spec.name} payload does not match its documented fields: {problem}")
    return payload
