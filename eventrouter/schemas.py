"""The well-known NS8 events (SPEC 1) as voluptuous schemas, and payload checks for ``publish``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import voluptuous as vol

from eventrouter.errors import PayloadError
from eventrouter.model import split_channel


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
    sources: str  # "cluster", "node", "module" or "any"
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


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise vol.Invalid(f"expected an integer, got {json.dumps(value)}")
    return value


def _validator(field: Field) -> Any:
    if field.kind is int:
        return _integer
    if field.kind is list:
        return [field.items or object]
    return field.kind


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


def check_payload(channel: str, text: str) -> Any:
    """Return the parsed payload of an event to publish; raise PayloadError saying what is wrong."""
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise PayloadError(f"payload is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(payload).__name__}")
    source, name = split_channel(channel)
    spec = WELL_KNOWN.get(name or "")
    if spec is None:
        return payload
    if not source_fits(spec, source):
        raise PayloadError(
            f"{spec.name} is published by the {spec.sources} (channel "
            f"{'cluster' if spec.sources == 'cluster' else spec.sources + '/<id>'}"
            f"/event/{spec.name}), not by {source!r}"
        )
    try:
        schema_for(spec)(payload)
    except vol.MultipleInvalid as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error.path) or 'payload'}: {error.error_message}"
            for error in exc.errors
        )
        message = f"{spec.name} payload does not match its documented fields: {problems}"
        raise PayloadError(message) from exc
    return payload
