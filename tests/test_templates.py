"""Tests of the sandboxed templates: text, native values, conditions and the event context."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eventrouter.config.templates import Condition, TemplateSyntaxError, Text, event_context
from eventrouter.config.valuetemplates import Value
from eventrouter.errors import TemplateRenderError
from eventrouter.model import Event

PAYLOAD: dict[str, Any] = {
    "module": "mail1",
    "node": 1,
    "list": ["a", "b"],
    "nested": {"x": [1, {"y": None}]},
    "sneaky": "{{ 7*7 }}",
    "flag": False,
}


def json_event(channel: str, payload: Any) -> Event:
    """Return an event whose raw bytes are ``payload`` as JSON."""
    return Event(channel, json.dumps(payload).encode(), payload, is_json=True)


@pytest.fixture
def ctx() -> dict[str, Any]:
    """Return the context of a module-added event matched with a capture."""
    event = json_event("module/ldapproxy1/event/user-domain-changed", PAYLOAD)
    return event_context(event, match={"module": "ldapproxy1"}, route="r1")


# --- sandbox -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ payload.__class__ }}",
        "{{ raw | attr('__class__') }}",
        "{{ '{0.__class__}'.format(1) }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__ }}",
        "{{ payload.list.append('x') }}",
        "{{ payload.update(module='evil') }}",
    ],
)
def test_sandbox_escapes_fail_at_render(source: str, ctx: dict[str, Any]) -> None:
    template = Text(source)  # syntactically fine: accepted at load time

    with pytest.raises(TemplateRenderError, match="not allowed in the sandbox"):
        template.render(ctx)


def test_sandbox_escape_in_a_value_and_a_condition(ctx: dict[str, Any]) -> None:
    with pytest.raises(TemplateRenderError, match="not allowed in the sandbox"):
        Value({"a": ["{{ ''.__class__ }}"]}).render(ctx)
    with pytest.raises(TemplateRenderError, match="not allowed in the sandbox"):
        Condition("payload.__class__").evaluate(ctx)


def test_sandbox_leaves_the_payload_unchanged(ctx: dict[str, Any]) -> None:
    with pytest.raises(TemplateRenderError):
        Text("{{ payload.list.append('x') }}").render(ctx)

    assert ctx["payload"]["list"] == ["a", "b"]


def test_environment_is_not_reachable(ctx: dict[str, Any]) -> None:
    for source in ("{{ environ }}", "{{ os }}", "{{ config }}", "{{ request }}"):
        with pytest.raises(TemplateRenderError, match="undefined"):
            Text(source).render(ctx)


# --- strict undefined ----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["{{ nope }}", "{{ payload.nope }}", "x-{{ match.nope }}"])
def test_undefined_is_an_error_in_text(source: str, ctx: dict[str, Any]) -> None:
    with pytest.raises(TemplateRenderError, match="undefined"):
        Text(source).render(ctx)


def test_undefined_is_an_error_in_a_value_and_a_condition(ctx: dict[str, Any]) -> None:
    with pytest.raises(TemplateRenderError, match="undefined"):
        Value("{{ payload.nope }}").render(ctx)
    with pytest.raises(TemplateRenderError, match="undefined"):
        Value({"k": ["{{ nope }}"]}).render(ctx)
    with pytest.raises(TemplateRenderError, match="undefined"):
        Condition("payload.nope").evaluate(ctx)
    with pytest.raises(TemplateRenderError, match="undefined"):
        Condition("payload.nope == 1").evaluate(ctx)


def test_a_failing_value_says_where_it_is_and_calls_itself_a_template(
    ctx: dict[str, Any],
) -> None:
    value = Value({"a": "fine", "k": ["x", "{{ nope }}"]}, "payload")
    with pytest.raises(TemplateRenderError) as failed:
        value.render(ctx)
    message = str(failed.value)
    assert message.startswith("payload.k[1]: template '{{ nope }}' failed: undefined"), message
    assert "condition" not in message
    with pytest.raises(TemplateRenderError, match=r"^data\.n: template 'n={{ nope }}' failed"):
        Value({"n": "n={{ nope }}"}, "data").render(ctx)
    with pytest.raises(TemplateRenderError, match=r"^template '{{ nope }}' failed"):
        Value("{{ nope }}").render(ctx)
    with pytest.raises(TemplateRenderError, match=r"^condition 'nope' failed"):
        Condition("nope").evaluate(ctx)


def test_default_filter_and_is_defined_still_work(ctx: dict[str, Any]) -> None:
    assert Text("{{ payload.nope | default('x') }}").render(ctx) == "x"
    assert Value("{{ payload.nope | default([]) }}").render(ctx) == []
    assert Value("{{ payload.list | default([]) }}").render(ctx) == ["a", "b"]
    assert Condition("payload.nope is defined").evaluate(ctx) is False
    assert Condition("payload.module is defined").evaluate(ctx) is True
    assert Condition("payload.nope is not defined").evaluate(ctx) is True
    assert Condition("payload.nope is defined and payload.nope == 1").evaluate(ctx) is False


# --- text ----------------------------------------------------------------------------------


def test_text_renders_the_context(ctx: dict[str, Any]) -> None:
    text = Text("{{ source }}/{{ name }} from {{ route }}: {{ match.module }} {{ payload.node }}")

    assert text.render(ctx) == "module/ldapproxy1/user-domain-changed from r1: ldapproxy1 1"


def test_static_text_is_returned_as_is(ctx: dict[str, Any]) -> None:
    assert Text("cluster/event/module-domain-changed").render(ctx) == (
        "cluster/event/module-domain-changed"
    )
    assert Text("").render({}) == ""


def test_text_does_not_render_data_again(ctx: dict[str, Any]) -> None:
    assert Text("v={{ payload.sneaky }}").render(ctx) == "v={{ 7*7 }}"


def test_text_is_not_html_escaped(ctx: dict[str, Any]) -> None:
    event = json_event("cluster/event/x", {"s": "<a href='x'>&</a>"})

    assert Text("{{ payload.s }}").render(event_context(event)) == "<a href='x'>&</a>"


@pytest.mark.parametrize("source", ["{{ x", "{{ 1 + }}", "{% if %}", "{% for x in y %}"])
def test_text_syntax_errors_are_caught_at_construction(source: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        Text(source)


def test_syntax_error_reports_the_template_line() -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        Text("line one\nline two\n{{ oops +}}\n")
    assert info.value.line == 3


# --- values --------------------------------------------------------------------------------


def test_single_expression_yields_a_native_list(ctx: dict[str, Any]) -> None:
    assert Value("{{ payload.list }}").render(ctx) == ["a", "b"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ 3 }}", 3),
        ("{{ 1.5 }}", 1.5),
        ("{{ payload.node }}", 1),
        ("{{ payload.flag }}", False),
        ("{{ true }}", True),
        ("{{ none }}", None),
        ("{{ payload.nested }}", {"x": [1, {"y": None}]}),
        ("{{ payload.module }}", "mail1"),
        ("{{ payload.node + 1 }}", 2),
        ("{{- payload.node -}}", 1),
        ("{{ [payload.module, match.module] }}", ["mail1", "ldapproxy1"]),
        ("{{ {'m': payload.module} }}", {"m": "mail1"}),
        ("{{ (1, 2) }}", [1, 2]),
    ],
)
def test_single_expression_yields_the_native_value(
    source: str, expected: Any, ctx: dict[str, Any]
) -> None:
    value = Value(source).render(ctx)

    assert value == expected
    assert type(value) is type(expected) or isinstance(expected, tuple)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("n {{ 3 }}", "n 3"),
        ("{{ 3 }} n", "3 n"),
        (" {{ 3 }}", " 3"),
        ("{{ 3 }}{{ 4 }}", "34"),
        ("{{ payload.list }}!", "['a', 'b']!"),
        ("{% if payload.flag %}yes{% else %}no{% endif %}", "no"),
        ("plain", "plain"),
    ],
)
def test_anything_else_yields_text(source: str, expected: str, ctx: dict[str, Any]) -> None:
    assert Value(source).render(ctx) == expected


def test_structure_is_kept(ctx: dict[str, Any]) -> None:
    template = Value(
        {
            "modules": ["{{ payload.module }}", "{{ match.module }}"],
            "domains": "{{ payload.list }}",
            "count": "{{ payload.list | length }}",
            "label": "node {{ payload.node }}",
            "fixed": {"n": 5, "t": True, "z": None, "s": "x", "l": [1, [2]]},
        }
    )

    assert template.render(ctx) == {
        "modules": ["mail1", "ldapproxy1"],
        "domains": ["a", "b"],
        "count": 2,
        "label": "node 1",
        "fixed": {"n": 5, "t": True, "z": None, "s": "x", "l": [1, [2]]},
    }


def test_a_rendered_value_is_json(ctx: dict[str, Any]) -> None:
    rendered = Value({"a": "{{ payload.nested }}", "b": ["{{ payload.flag }}"]}).render(ctx)

    assert json.loads(json.dumps(rendered)) == rendered


def test_payload_data_is_never_rendered_again(ctx: dict[str, Any]) -> None:
    template = Value(
        {"native": "{{ payload.sneaky }}", "text": "s={{ payload.sneaky }}", "all": "{{ payload }}"}
    )

    rendered = template.render(ctx)
    assert rendered["native"] == "{{ 7*7 }}"
    assert rendered["text"] == "s={{ 7*7 }}"
    assert rendered["all"]["sneaky"] == "{{ 7*7 }}"


def test_value_render_does_not_share_the_payload(ctx: dict[str, Any]) -> None:
    rendered = Value("{{ payload.list }}").render(ctx)
    rendered.append("c")

    assert ctx["payload"]["list"] == ["a", "b"]


@pytest.mark.parametrize(
    "source",
    [
        "{{ range(3) }}",
        "{{ payload.items }}",
        "{{ payload.nested.items() }}",
        "{{ lipsum }}",
        "{{ cycler }}",
        "{{ [range(2)] }}",
        "{{ {'k': payload.keys} }}",
    ],
)
def test_non_json_values_are_a_render_error(source: str, ctx: dict[str, Any]) -> None:
    with pytest.raises(TemplateRenderError, match="not JSON data"):
        Value(source).render(ctx)


@pytest.mark.parametrize("source", ["{{ 1/0 }}", "{{ 1.0e400 }}", "{{ 'a' + 1 }}"])
def test_runtime_failures_are_a_render_error(source: str, ctx: dict[str, Any]) -> None:
    with pytest.raises(TemplateRenderError):
        Value(source).render(ctx)


def test_non_string_leaves_are_constants(ctx: dict[str, Any]) -> None:
    assert Value(7).render(ctx) == 7
    assert Value(None).render(ctx) is None
    assert Value([True, 1.5]).render(ctx) == [True, 1.5]
    assert Value({}).render(ctx) == {}


def test_value_syntax_error_anywhere_in_the_structure() -> None:
    with pytest.raises(TemplateSyntaxError):
        Value({"a": {"b": ["ok", "{{ broken"]}})


# --- conditions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "truthy"),
    [
        ("payload.module == 'mail1'", True),
        ("payload.module == 'mail2'", False),
        ("payload.node > 0 and match.module.startswith('ldap')", True),
        ("payload.list", True),
        ("[]", False),
        ("0", False),
        ("''", False),
        ("none", False),
        ("'false'", True),  # a non-empty string is true, whatever it says
        ("payload.flag", False),
        ("'mail1' in payload.module", True),
        ("route == 'r1' and source == 'module/ldapproxy1'", True),
    ],
)
def test_condition_truthiness(source: str, truthy: bool, ctx: dict[str, Any]) -> None:
    assert bool(Condition(source).evaluate(ctx)) is truthy


@pytest.mark.parametrize("source", ["payload.x ==", "a b", "payload.", "(1"])
def test_condition_syntax_errors_are_caught_at_construction(source: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        Condition(source)


def test_condition_on_a_non_json_payload() -> None:
    ctx = event_context(Event("cluster/event/acl-changed", b"cluster/acls"))

    assert Condition("payload is none").evaluate(ctx) is True
    assert Condition("payload.module is defined").evaluate(ctx) is False
    assert Condition("raw == 'cluster/acls'").evaluate(ctx) is True


# --- the event context ---------------------------------------------------------------------


def test_context_of_a_json_event() -> None:
    event = json_event("module/traefik1/event/certificate-changed", {"names": ["a.example"]})

    assert event_context(event, match={"m": "traefik1"}, route="certs") == {
        "channel": "module/traefik1/event/certificate-changed",
        "source": "module/traefik1",
        "name": "certificate-changed",
        "payload": {"names": ["a.example"]},
        "raw": '{"names": ["a.example"]}',
        "match": {"m": "traefik1"},
        "route": "certs",
        # No router given: a one-node cluster's leader, node unknown.
        "router": {"node": None, "agent": None, "instance": "", "leader": True},
        # No environment given: only what the step runner adds for the event itself.
        "env": {
            "AGENT_EVENT_NAME": "certificate-changed",
            "AGENT_EVENT_SOURCE": "module/traefik1",
            "AGENT_COMFD": "2",
        },
    }


def test_context_of_a_non_json_event() -> None:
    ctx = event_context(Event("cluster/event/acl-changed", b"cluster/acls"))

    assert ctx["payload"] is None
    assert ctx["raw"] == "cluster/acls"
    assert ctx["source"] == "cluster"
    assert ctx["name"] == "acl-changed"
    assert ctx["match"] == {}
    assert ctx["route"] == ""


def test_context_payload_is_none_whatever_the_parsed_value_when_not_json() -> None:
    ctx = event_context(Event("cluster/event/x", b"[1]", payload=[1], is_json=False))

    assert ctx["payload"] is None


def test_context_raw_replaces_invalid_utf8() -> None:
    ctx = event_context(Event("cluster/event/x", b"ok \xff"))

    assert ctx["raw"] == "ok \ufffd"


@pytest.mark.parametrize(
    ("channel", "source", "name"),
    [
        ("cluster/event/module-added", "cluster", "module-added"),
        ("node/1/event/fqdn-changed", "node/1", "fqdn-changed"),
        ("module/traefik1/event/certificate-changed", "module/traefik1", "certificate-changed"),
        ("a/event/b/event/c", "a", "b/event/c"),  # split at the first /event/
        ("x/y/z/event/e", "x/y/z", "e"),
        ("no-event-here", None, None),
        ("cluster/events/x", None, None),
    ],
)
def test_context_source_and_name(channel: str, source: str | None, name: str | None) -> None:
    ctx = event_context(Event(channel, b"{}", {}, is_json=True))

    assert (ctx["source"], ctx["name"]) == (source, name)


def test_context_match_is_a_copy() -> None:
    captures = {"module": "mail1"}
    ctx = event_context(Event("cluster/event/x", b""), match=captures)
    ctx["match"]["module"] = "other"

    assert captures == {"module": "mail1"}


@pytest.mark.parametrize(
    ("build", "source", "message"),
    [
        (
            Condition,
            "payload.x | defualt(1)",
            r"no filter named 'defualt' \(did you mean 'default'\?\)",
        ),
        (
            Condition,
            "payload.x is definedd",
            r"no test named 'definedd' \(did you mean 'defined'\?\)",
        ),
        (
            Text,
            "a {{ payload.y | lenght }}",
            r"no filter named 'lenght' \(did you mean 'length'\?\)",
        ),
        (Text, "a {{ payload.y | lowr }}", r"no filter named 'lowr' \(did you mean 'lower'\?\)"),
        (
            Value,
            {"a": ["{{ payload.z | tojsn }}"]},
            "no filter named 'tojsn' \\(did you mean 'tojson'",
        ),
        (Condition, "payload.x | zzzqqq", r"no filter named 'zzzqqq'; filters: .*\blower\b"),
    ],
)
def test_unknown_filters_and_tests_are_refused_at_load(
    build: Any, source: Any, message: str
) -> None:
    with pytest.raises(TemplateSyntaxError, match=message):
        build(source)
