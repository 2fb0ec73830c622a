"""A run's actions rendered by the engine, as the dispatcher carries them out and explain shows."""

from __future__ import annotations

from pathlib import Path

from eventrouter.config.loader import load_routes
from eventrouter.config.patterns import RouteIndex
from eventrouter.engine.decide import RouterContext, decide_message
from eventrouter.engine.render import RenderedEmit, RenderedTask, RenderRefused, render_run

ROUTES = """
routes:
  - name: three
    on: t/event/{kind}
    do:
      - emit: {channel: "out/event/{{ match.kind }}", payload: {n: "{{ payload.n }}"}}
      - task: {agent: "{{ payload.agent }}", action: act}
      - emit: {channel: out/event/last}
"""


def rendered(tmp_path: Path, payload: bytes, context: RouterContext) -> list[object]:
    (tmp_path / "r.yml").write_text(ROUTES)
    result = load_routes([tmp_path])
    assert result.ok, result.diagnostics
    decision = decide_message(RouteIndex(result.routes), "t/event/x", payload, context)
    [item] = decision.routes
    return list(render_run(item.route, decision.event, item.captures, context))


def test_every_action_rendered_in_order(tmp_path: Path) -> None:
    first, task, last = rendered(tmp_path, b'{"n": 1, "agent": "module/x1"}', RouterContext())
    assert isinstance(first, RenderedEmit) and first.emit.channel == "out/event/x"
    assert first.emit.payload == {"n": 1}
    assert isinstance(task, RenderedTask) and task.task.agent == "module/x1"
    assert isinstance(last, RenderedEmit) and last.emit.channel == "out/event/last"


def test_the_list_ends_at_the_first_refused_action(tmp_path: Path) -> None:
    first, task = rendered(tmp_path, b'{"n": 1, "agent": "../x"}', RouterContext())
    assert isinstance(first, RenderedEmit)
    assert isinstance(task, RenderRefused) and task.refused.status == "bad agent id"


def test_a_loop_guard_refusal_keeps_the_emit_it_cut(tmp_path: Path) -> None:
    [first] = rendered(tmp_path, b'{"n": 1, "agent": "module/x1"}', RouterContext(max_depth=0))
    assert isinstance(first, RenderRefused) and first.refused.status == "loop guard"
    assert first.refused.emit is not None and first.refused.emit.channel == "out/event/x"
