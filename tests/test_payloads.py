"""Tests of the payload checks `eventrouter publish` runs on well-known NS8 events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eventrouter.config.payloads import WELL_KNOWN, check_payload
from eventrouter.errors import PayloadError

# The sample payloads of /work/shared/NS8-NOTES.md, on the channels that publish them.
NS8_SAMPLES = [
    ("cluster/event/module-added", {"module": "traefik1", "node": 1}),
    ("cluster/event/module-removed", {"module": "traefik1", "node": 1}),
    ("cluster/event/module-domain-changed", {"modules": ["mail1"], "domains": ["example.org"]}),
    (
        "cluster/event/ldap-provider-changed",
        {"domain": "example.org", "key": "cluster/user_domain/ldap/example.org/providers"},
    ),
    (
        "module/ldapproxy1/event/user-domain-changed",
        {"node_id": 1, "domain": "example.org", "domains": ["example.org"]},
    ),
    ("cluster/event/leader-changed", {"node_id": 2, "endpoint": "10.5.4.2:55820"}),
    ("node/1/event/backup-status-changed", {"node_id": 1, "backup_id": 3, "module_id": "mail1"}),
    ("node/1/event/fqdn-changed", {"hostname": "ns1", "domain": "example.org", "node": 1}),
]


def refused(channel: str, payload: Any) -> str:
    """Return the message of the PayloadError that checking ``payload`` raises."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    with pytest.raises(PayloadError) as info:
        check_payload(channel, text)
    return str(info.value)


@pytest.mark.parametrize(("channel", "payload"), NS8_SAMPLES)
def test_ns8_sample_payloads_are_accepted(channel: str, payload: dict[str, Any]) -> None:
    assert check_payload(channel, json.dumps(payload)) == payload


def test_every_well_known_event_has_a_sample() -> None:
    assert {channel.rsplit("/", 1)[1] for channel, _ in NS8_SAMPLES} == set(WELL_KNOWN)


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        ("cluster/event/user-domain-changed", {"domain": "example.org"}),  # optional fields
        ("module/mail1/event/user-domain-changed", {"domain": "d", "domains": []}),
        ("node/2/event/user-domain-changed", {"domain": "d", "node_id": 2}),
        ("cluster/event/module-added", {"module": "mail1", "node": 1, "extra": [1]}),
        ("cluster/event/module-domain-changed", {"modules": [], "domains": []}),
        ("node/12/event/fqdn-changed", {"hostname": "h", "domain": "d", "node": 12}),
    ],
)
def test_optional_and_extra_fields_are_accepted(channel: str, payload: dict[str, Any]) -> None:
    assert check_payload(channel, json.dumps(payload)) == payload


@pytest.mark.parametrize("text", ["cluster/acls", "", "{", "{'module': 'x'}", '{"a": 1,}'])
def test_non_json_is_refused(text: str) -> None:
    assert "not JSON" in refused("cluster/event/acl-changed", text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [("[1, 2]", "list"), ('"text"', "str"), ("42", "int"), ("null", "NoneType"), ("true", "bool")],
)
def test_non_object_is_refused(text: str, kind: str) -> None:
    message = refused("module/x/event/anything", text)

    assert "JSON object" in message
    assert kind in message


@pytest.mark.parametrize(
    ("channel", "payload", "field"),
    [
        ("cluster/event/module-added", {"module": "traefik1"}, "node"),
        ("cluster/event/module-added", {"node": 1}, "module"),
        ("cluster/event/module-removed", {}, "module"),
        ("cluster/event/leader-changed", {"node_id": 2}, "endpoint"),
        ("node/1/event/backup-status-changed", {"node_id": 1, "module_id": "m"}, "backup_id"),
        ("node/1/event/fqdn-changed", {"hostname": "ns1", "node": 1}, "domain"),
        ("cluster/event/ldap-provider-changed", {"domain": "d"}, "key"),
        ("cluster/event/module-domain-changed", {"modules": []}, "domains"),
        ("module/ldapproxy1/event/user-domain-changed", {"node_id": 1}, "domain"),
    ],
)
def test_missing_fields_are_refused(channel: str, payload: dict[str, Any], field: str) -> None:
    message = refused(channel, payload)

    assert f"{field}: required key not provided" in message


@pytest.mark.parametrize(
    ("channel", "payload", "field"),
    [
        ("cluster/event/module-added", {"module": "traefik1", "node": True}, "node"),
        ("cluster/event/module-added", {"module": "traefik1", "node": "1"}, "node"),
        ("cluster/event/module-added", {"module": "traefik1", "node": 1.0}, "node"),
        ("cluster/event/module-added", {"module": 7, "node": 1}, "module"),
        ("cluster/event/module-added", {"module": None, "node": 1}, "module"),
        ("cluster/event/leader-changed", {"node_id": False, "endpoint": "e"}, "node_id"),
        ("cluster/event/module-domain-changed", {"modules": "mail1", "domains": []}, "modules"),
        ("cluster/event/module-domain-changed", {"modules": [1], "domains": []}, "modules.0"),
        ("cluster/event/user-domain-changed", {"domain": "d", "node_id": "1"}, "node_id"),
        ("cluster/event/user-domain-changed", {"domain": "d", "domains": "d"}, "domains"),
    ],
)
def test_wrong_types_are_refused(channel: str, payload: dict[str, Any], field: str) -> None:
    message = refused(channel, payload)

    assert f"{field}: expected" in message


def test_bool_is_not_an_integer_and_the_message_says_what_was_sent() -> None:
    message = refused("cluster/event/module-added", {"module": "traefik1", "node": True})

    assert "module-added payload does not match its documented fields" in message
    assert "node: expected an integer, got true" in message


def test_every_problem_is_listed() -> None:
    message = refused("node/1/event/backup-status-changed", {"node_id": "x"})

    for field in ("node_id", "module_id", "backup_id"):
        assert field in message


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        ("module/x/event/leader-changed", {"node_id": 2, "endpoint": "e"}),
        ("node/1/event/leader-changed", {"node_id": 2, "endpoint": "e"}),
        ("module/x/event/module-added", {"module": "m", "node": 1}),
        ("cluster/event/fqdn-changed", {"hostname": "h", "domain": "d", "node": 1}),
        ("module/x/event/backup-status-changed", {"node_id": 1, "module_id": "m", "backup_id": 1}),
        ("nodes/1/event/fqdn-changed", {"hostname": "h", "domain": "d", "node": 1}),
        ("node/event/fqdn-changed", {"hostname": "h", "domain": "d", "node": 1}),
    ],
)
def test_wrong_source_is_refused(channel: str, payload: dict[str, Any]) -> None:
    source = channel.split("/event/", maxsplit=1)[0]

    message = refused(channel, payload)

    assert "is published by the" in message
    assert repr(source) in message


def test_leader_changed_from_a_module_names_the_right_channel() -> None:
    message = refused("module/x/event/leader-changed", {"node_id": 2, "endpoint": "e"})

    assert "cluster/event/leader-changed" in message
    assert "'module/x'" in message


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        ("module/traefik1/event/certificate-changed", {"names": ["a.example"]}),
        ("module/x/event/something-new", {}),
        ("node/1/event/anything", {"node": "not-an-int"}),
        ("no-event-in-this-channel", {"x": 1}),
        ("cluster/event/module-added-later", {"module": 1}),  # not the same name
    ],
)
def test_unknown_events_are_let_through(channel: str, payload: dict[str, Any]) -> None:
    assert check_payload(channel, json.dumps(payload)) == payload
