"""NS8 helpers in templates: ``payload is certificate_for(hostname)``, the agent library's rule.

The facts mirrored: traefik's ``certificate-changed`` payload carries ``node_id`` (a number)
and ``names``; a module's certificate changed when the node is its own (``NODE_ID``) and the
names hold its hostname or ``*.`` + the hostname's domain part. In process for the rule, and
the real daemon with a real step for a module's route built on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eventrouter.config.templates import Condition, event_context
from eventrouter.errors import TemplateRenderError
from eventrouter.model import Event
from tests.routerproc import (
    Router,
    clean_env,
    lines,
    run_here,
    wait_for,
    write_routes,
    write_step,
)

CHANNEL = "module/traefik1/event/certificate-changed"
ENV = {"NODE_ID": "1", "POSTFIX_HOSTNAME": "mail.example.org"}


def matches(payload: Any, expression: str = "payload is certificate_for(env.POSTFIX_HOSTNAME)",
            env: dict[str, str] | None = None) -> Any:  # fmt: skip
    event = Event(CHANNEL, json.dumps(payload).encode(), payload, True)
    return Condition(expression).evaluate(event_context(event, env=ENV if env is None else env))


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"node_id": 1, "module_id": "traefik1", "names": ["mail.example.org"]}, True),
        ({"node_id": 1, "names": ["www.example.org", "*.example.org"]}, True),  # wildcard
        ({"node_id": "1", "names": ["mail.example.org"]}, True),  # node compared as text
        ({"node_id": 2, "names": ["mail.example.org"]}, False),  # another node's traefik
        ({"node_id": 1, "names": ["example.org", "*.mail.example.org"]}, False),
        ({"node_id": 1, "names": ["*.org"]}, False),  # one level only
        ({"node_id": 1, "names": []}, False),
        ({"names": ["mail.example.org"]}, False),  # no node: no certificate for anyone
        ({"node_id": 1, "names": "mail.example.org"}, False),  # names is a list
        ("cluster/acls", False),
        (None, False),
    ],
)
def test_the_agent_librarys_certificate_rule(payload: Any, expected: bool) -> None:
    assert matches(payload) is expected


def test_a_hostname_without_a_domain_part_matches_only_itself() -> None:
    env = {"NODE_ID": "1", "HOSTNAME": "dc1"}
    expression = "payload is certificate_for(env.HOSTNAME)"
    assert matches({"node_id": 1, "names": ["dc1"]}, expression, env) is True
    assert matches({"node_id": 1, "names": ["*."]}, expression, env) is False


def test_the_node_can_be_given_and_must_otherwise_be_in_env() -> None:
    payload = {"node_id": 2, "names": ["mail.example.org"]}
    assert matches(payload, "payload is certificate_for(env.POSTFIX_HOSTNAME, 2)") is True
    assert matches(payload, "payload is not certificate_for('mail.example.org', '1')") is True
    with pytest.raises(TemplateRenderError, match=r"env\.NODE_ID is undefined"):
        matches(payload, "payload is certificate_for('mail.example.org')", {})


def test_an_undefined_hostname_fails_as_any_undefined_name() -> None:
    with pytest.raises(TemplateRenderError, match="undefined"):
        matches({"node_id": 1, "names": []}, "payload is certificate_for(env.EJABBERD_HOSTNAME)")
    guarded = (
        "env.EJABBERD_HOSTNAME is defined and payload is certificate_for(env.EJABBERD_HOSTNAME)"
    )
    assert matches({"node_id": 1, "names": []}, guarded) is False


def test_a_module_reloads_on_its_certificate_only(tmp_path: Path, redis_url: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "environment").write_text("NODE_ID=1\nPOSTFIX_HOSTNAME=mail.example.org\n")
    out = tmp_path / "out"
    write_step(tmp_path / "h" / "50get_certificate", f'echo "$POSTFIX_HOSTNAME" >> {out}')
    write_routes(
        tmp_path / "routes",
        "r.yml",
        """
        routes:
          - name: mail-certificate
            on: module/{traefik}/event/certificate-changed
            when: payload is certificate_for(env.POSTFIX_HOSTNAME)
            do: [{run: ../h}]
        """,
    )
    env = clean_env(AGENT_STATE_DIR=str(state))
    args = ["run", "--redis", redis_url, "--routes", str(tmp_path / "routes")]
    router = Router(args, tmp_path / "log", env).ready()
    try:
        for payload in (
            {"node_id": 2, "module_id": "traefik2", "names": ["mail.example.org"]},
            {"node_id": 1, "module_id": "traefik1", "names": ["www.example.org"]},
            {"node_id": 1, "module_id": "traefik1", "names": ["*.example.org"]},
        ):
            published = run_here("publish", "--redis", redis_url, "--raw", CHANNEL,
                                json.dumps(payload))  # fmt: skip
            assert published.returncode == 0, published.stderr
        wait_for(lambda: lines(out), what="the certificate step")
        router.wait_log("route mail-certificate: event .* run ok")
    finally:
        router.close()
    assert lines(out) == ["mail.example.org"]  # the wildcard of its domain, once
