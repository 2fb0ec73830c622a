"""The decision core alone: pure, no server, no process, no asyncio."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventrouter.config.loader import load_routes
from eventrouter.config.patterns import RouteIndex
from eventrouter.engine.decide import RouterContext, decide_message, retry_decision
from eventrouter.engine.events import parse_event
from eventrouter.engine.render import ActionRefused, action_context, render_emit
from eventrouter.model import EmitAction

FALSY = """
routes:
  - name: cond
    on: t/event/x
    when: {when}
    do: [{{emit: {{channel: out/event/y}}}}]
"""


def table(tmp_path: Path, text: str) -> RouteIndex:
    (tmp_path / "r.yml").write_text(text)
    result = load_routes([tmp_path])
    assert result.ok, result.diagnostics
    return RouteIndex(result.routes)


@pytest.mark.parametrize(
    ("when", "payload", "fires"),
    [
        ("payload.keys()", b"{}", False),
        ("payload.keys()", b'{"a": 1}', True),
        ("payload.items", b'{"items": []}', True),  # a dict method, not the key: Jinja2's rule
        ("payload.v", b'{"v": {}}', False),
        ("payload.v", b'{"v": []}', False),
        ("payload.v", b'{"v": 0}', False),
        ("payload.v", b'{"v": ""}', False),
        ("payload.v", b'{"v": null}', False),
        ("payload.v", b'{"v": "false"}', True),  # a non-empty string holds
        ("payload", b"[]", False),
        ("payload", b"0", False),
        ("payload", b"not json", False),
        ("raw", b"not json", True),
    ],
)
def test_one_truthiness_rule(tmp_path: Path, when: str, payload: bytes, fires: bool) -> None:
    index = table(tmp_path, FALSY.format(when=when))
    decision = decide_message(index, "t/event/x", payload, RouterContext())
    [item] = decision.routes
    assert item.fires is fires, item.reason


def test_condition_error_is_a_reason_not_a_fire(tmp_path: Path) -> None:
    index = table(tmp_path, FALSY.format(when="payload.a.b > 1"))
    [item] = decide_message(index, "t/event/x", b"{}", RouterContext()).routes
    assert not item.fires
    assert item.condition is not None and item.condition.error
    assert item.reason is not None and item.reason.startswith("when: ")


def test_json_that_defeats_the_parser_is_not_json() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    event = parse_event("a/event/b", deep)
    assert not event.is_json and event.payload is None and event.raw == deep


def test_event_name_too_long_for_a_file_name_is_refused(tmp_path: Path) -> None:
    def boom(folder: Path) -> bool:
        raise AssertionError(f"asked the filesystem about {folder}")

    context = RouterContext(events_dirs=(tmp_path,), folder_exists=boom)
    decision = decide_message(RouteIndex(()), "a/event/" + "n" * 300, b"{}", context)
    assert decision.name_refused is not None and "255" in decision.name_refused
    assert decision.routes == ()


def test_oversize_event_is_refused(tmp_path: Path) -> None:
    index = table(tmp_path, FALSY.format(when='"true"'))
    decision = decide_message(index, "t/event/x", b"x" * 11, RouterContext(max_payload=10))
    assert decision.refused is not None and "--max-payload" in decision.refused
    assert decision.routes == ()


def test_rendered_emit_larger_than_max_payload_is_refused(tmp_path: Path) -> None:
    index = table(
        tmp_path,
        """
routes:
  - name: big
    on: t/event/x
    do: [{emit: {channel: out/event/y, payload: {text: "{{ payload.s * 100 }}"}}}]
""",
    )
    [item] = decide_message(index, "t/event/x", b'{"s": "abc"}', RouterContext()).routes
    [action] = item.route.actions
    assert isinstance(action, EmitAction)
    event = parse_event("t/event/x", b'{"s": "abc"}')
    context = action_context(item.route, event, item.captures)
    assert len(render_emit(item.route, action, event, context, RouterContext()).data) > 300
    with pytest.raises(ActionRefused) as refused:
        render_emit(item.route, action, event, context, RouterContext(max_payload=100))
    assert refused.value.status == "too large"


RETRY = """
routes:
  - name: guarded
    on: t/event/{what}
    when: payload.ok
    do: [{emit: {channel: out/event/y}}]
  - name: strict
    on: cluster/event/module-added
    schema: strict
    do: [{emit: {channel: out/event/y}}]
  - name: off
    on: t/event/x
    enabled: false
    do: [{emit: {channel: out/event/y}}]
"""


def test_retry_runs_only_what_the_current_table_fires(tmp_path: Path) -> None:
    events = tmp_path / "events"
    (events / "x").mkdir(parents=True)
    routes = tmp_path / "routes"
    routes.mkdir()
    index = table(routes, RETRY)
    context = RouterContext(events_dirs=(events,), folder_exists=Path.is_dir)

    def retry(channel: str, payload: bytes, name: str) -> str:
        found = retry_decision(decide_message(index, channel, payload, context), name, index.routes)
        return found if isinstance(found, str) else f"runs {found.route.name}"

    assert retry("t/event/x", b'{"ok": 1}', "guarded") == "runs guarded"
    assert retry("t/event/x", b'{"ok": 0}', "guarded") == "when: payload.ok is false (0)"
    # false itself is said once, not "is false (false)"
    assert retry("t/event/x", b'{"ok": false}', "guarded") == "when: payload.ok is false"
    assert retry("t/event/x", b"{}", "off") == "route off is disabled"
    assert retry("t/event/x", b"{}", "gone") == "route gone no longer exists"
    assert "no longer matches" in retry("u/event/x", b'{"ok": 1}', "guarded")
    assert retry("cluster/event/module-added", b"{}", "strict").startswith("schema: strict")
    assert retry("t/event/x", b"{}", f"events:{events / 'x'}") == f"runs events:{events / 'x'}"
    for forged in ("events:/", f"events:{tmp_path}", f"events:{events / 'x' / '..' / 'x'}"):
        assert "is not an events folder" in retry("t/event/x", b"{}", forged), forged
    assert "is not an events folder" in retry("t/event/y", b"{}", f"events:{events / 'x'}")
