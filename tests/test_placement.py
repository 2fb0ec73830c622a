"""Where a route acts and what it asks of other agents: ``router``, ``runs_on``, ``task:``.

The engine alone (no server), ``check``'s findings, and ``explain`` / ``test`` from a chosen
node; the multi-node behaviour is in test_cluster.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eventrouter.cli.main import main
from eventrouter.config.loader import load_routes
from eventrouter.config.patterns import RouteIndex
from eventrouter.engine.decide import RouterContext, decide_message
from eventrouter.engine.events import parse_event
from eventrouter.engine.render import ActionRefused, action_context, render_task
from eventrouter.model import RouterInfo, TaskAction
from eventrouter.runtime.identity import router_identity
from tests.routerproc import (
    Router,
    clean_env,
    lines,
    run_here,
    wait_for,
    write_routes,
    write_step,
)

ROUTES = """
routes:
  - name: on-leader
    on: cluster/event/module-added
    runs_on: leader
    do: [{emit: {channel: cluster/event/leader-acted}}]
  - name: on-named-node
    on: cluster/event/module-added
    runs_on: "{{ payload.node }}"
    do: [{emit: {channel: cluster/event/node-acted}}]
  - name: here-by-condition
    on: cluster/event/module-added
    when: payload.node == router.node
    do: [{emit: {channel: cluster/event/here}}]
  - name: reload-certificate
    on: module/{module}/event/certificate-changed
    do:
      - task:
          agent: "module/{{ payload.user }}"
          action: reload-certificate
          data:
            domain: "{{ payload.domain }}"
            names: "{{ payload.names }}"
            by: "{{ router.node }}"
          timeout: 5m
"""
ADDED_ON_2 = json.dumps({"module": "mail1", "node": 2}).encode()


def table(tmp_path: Path, text: str = ROUTES) -> RouteIndex:
    (tmp_path / "r.yml").write_text(text)
    result = load_routes([tmp_path])
    assert result.ok, result.diagnostics
    return RouteIndex(result.routes)


def fired(index: RouteIndex, router: RouterInfo, data: bytes = ADDED_ON_2) -> dict[str, str | None]:
    decision = decide_message(
        index, "cluster/event/module-added", data, RouterContext(router=router)
    )
    return {item.route.name: item.reason for item in decision.routes}


def test_runs_on_and_router_node_decide_where_a_route_acts(tmp_path: Path) -> None:
    index = table(tmp_path)
    assert fired(index, RouterInfo(node=2, leader=False)) == {
        "on-leader": "runs_on: leader, and this router's Redis is a replica",
        "on-named-node": None,
        "here-by-condition": None,
    }
    assert fired(index, RouterInfo(node=1, leader=True)) == {
        "on-leader": None,
        "on-named-node": "runs_on: node '2', and this router is node 1",
        "here-by-condition": "when: payload.node == router.node is false",
    }


def test_with_no_cluster_settings_a_router_is_the_leader_of_one_node(tmp_path: Path) -> None:
    reasons = fired(table(tmp_path), RouterContext().router)
    assert reasons["on-leader"] is None
    assert reasons["on-named-node"] == (
        "runs_on: node '2', and this router's node is unknown (--node, NODE_ID)"
    )


def test_a_runs_on_template_error_is_an_error_not_a_skip(tmp_path: Path) -> None:
    index = table(tmp_path)
    decision = decide_message(
        index, "cluster/event/module-added", b'{"module": "x"}', RouterContext()
    )
    found = decision.find("on-named-node")
    assert found is not None and found.runs_on_error is not None
    assert found.reason is not None and "undefined" in found.reason


def render(tmp_path: Path, payload: dict[str, object], router: RouterInfo) -> object:
    index = table(tmp_path)
    route = next(r for r in index.routes if r.name == "reload-certificate")
    action = route.actions[0]
    assert isinstance(action, TaskAction)
    event = parse_event("module/traefik1/event/certificate-changed", json.dumps(payload).encode())
    return render_task(route, action, event, action_context(route, event, {}, router))


def test_a_task_renders_its_agent_and_data_with_native_types(tmp_path: Path) -> None:
    payload = {"user": "mail1", "domain": "example.org", "names": ["a.example.org"]}
    task = render(tmp_path, payload, RouterInfo(node=3))
    assert task == render(tmp_path, payload, RouterInfo(node=3))  # no random part here
    assert (task.agent, task.action, task.timeout, task.wait, task.parent) == (  # type: ignore[attr-defined]
        "module/mail1",
        "reload-certificate",
        300.0,
        True,
        "",
    )
    assert task.data == {"domain": "example.org", "names": ["a.example.org"], "by": 3}  # type: ignore[attr-defined]


def test_a_task_whose_rendered_agent_is_not_an_agent_id_is_refused(tmp_path: Path) -> None:
    payload = {"user": "../x", "domain": "d", "names": []}
    with pytest.raises(ActionRefused, match=r"agent 'module/\.\./x' is not an NS8 agent id"):
        render(tmp_path, payload, RouterInfo())


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        ("runs_on: leadr", "runs_on 'leadr' is not 'leader', 'all', a node number or a template"),
        ("runs_on: [1]", "expected leader, all or a node, got a list"),
        (
            "do: [{task: {agent: traefik1, action: reload}}]",
            "agent 'traefik1' is not an NS8 agent id",
        ),
        (
            "do: [{task: {agent: module/traefik1, action: Reload_It}}]",
            "action name 'Reload_It' must match [a-z0-9-]+",
        ),
        (
            "do: [{task: {agent: module/traefik1, action: reload, wiat: true}}]",
            "unknown key 'wiat' (did you mean 'wait'?)",
        ),
        ("do: [{task: {agent: module/traefik1}}]", "action"),
    ],
)
def test_check_reports_bad_runs_on_and_task_keys(
    tmp_path: Path, fragment: str, message: str
) -> None:
    base = "routes:\n  - name: r\n    on: a/event/b\n"
    body = fragment if fragment.startswith("do:") else fragment + "\n    do: [{emit: {channel: x}}]"
    (tmp_path / "r.yml").write_text(base + "    " + body + "\n")
    result = load_routes([tmp_path])
    assert not result.ok
    assert any(message in item.message for item in result.diagnostics), result.diagnostics


def test_check_reports_an_unknown_router_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = tmp_path / "routes.d"
    routes.mkdir()
    (routes / "r.yml").write_text(
        "routes:\n  - name: r\n    on: a/event/b\n    when: router.nod == 1\n"
        "    do: [{emit: {channel: x/event/y}}]\n"
    )
    main(["check", "--routes", str(routes)])
    assert "router.nod, which the router does not have" in capsys.readouterr().out


def test_the_node_comes_from_the_option_the_environment_or_the_state_folder(
    tmp_path: Path,
) -> None:
    (tmp_path / "environment").write_text("MODULE_ID=traefik1\nNODE_ID=4\n")
    state = {"AGENT_STATE_DIR": str(tmp_path), "AGENT_ID": "module/traefik1"}
    assert router_identity(None, None, state) == RouterInfo(node=4, agent="module/traefik1")
    assert router_identity(None, None, {**state, "NODE_ID": "2"}).node == 2
    assert router_identity("7", "node/7", {**state, "NODE_ID": "2"}) == RouterInfo(
        node=7, agent="node/7"
    )
    assert router_identity(None, None, {}) == RouterInfo()


def test_explain_decides_as_the_router_named_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table(tmp_path)
    args = ["explain", "--routes", str(tmp_path), "cluster/event/module-added", ADDED_ON_2.decode()]
    assert main([*args[:3], "--node", "1", "--no-leader", *args[3:]]) == 0
    text = capsys.readouterr().out
    assert "runs_on: leader, and this router's Redis is a replica  (not on this router)" in text
    assert "runs_on: node '2', and this router is node 1  (not on this router)" in text
    assert main([*args[:3], "--node", "2", *args[3:]]) == 0
    text = capsys.readouterr().out
    assert "+ route on-leader fires" in text and "+ route here-by-condition fires" in text


def test_explain_shows_the_rendered_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table(tmp_path)
    payload = json.dumps({"user": "mail1", "domain": "example.org", "names": []})
    channel = "module/traefik1/event/certificate-changed"
    assert main(["explain", "--routes", str(tmp_path), "--node", "5", channel, payload]) == 0
    text = capsys.readouterr().out
    assert "1. task reload-certificate on module/mail1  (wait up to 300s)" in text
    assert "LPUSH module/mail1/tasks" in text
    assert 'data {"domain": "example.org", "names": [], "by": 5}' in text


def test_route_tests_may_set_the_router_and_expect_tasks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table(tmp_path)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.yml").write_text(
        """
tests:
  - name: on node 2, a replica
    router: {node: 2, leader: false}
    event: {channel: cluster/event/module-added, payload: {module: mail1, node: 2}}
    expect: {fire_only: [on-named-node, here-by-condition]}
  - name: on the leader, node 1
    router: {node: 1}
    event: {channel: cluster/event/module-added, payload: {module: mail1, node: 2}}
    expect: {fire_only: [on-leader]}
  - name: the task
    event:
      channel: module/traefik1/event/certificate-changed
      payload: {user: mail1, domain: example.org, names: [a]}
    expect:
      tasks: [{agent: module/mail1, action: reload-certificate, data: {names: [a]}}]
  - name: a wrong expectation fails
    event:
      channel: module/traefik1/event/certificate-changed
      payload: {user: mail1, domain: example.org, names: [a]}
    expect:
      tasks: [{agent: module/mail2, action: reload-certificate}]
"""
    )
    assert main(["test", "--routes", str(tmp_path), "--node", "9", "--leader"]) == 1
    out = capsys.readouterr().out
    assert "FAIL a wrong expectation fails" in out
    assert "task 1: expected reload-certificate on module/mail2" in out
    assert out.rstrip().endswith("3 passed, 1 failed")


def test_with_no_cluster_settings_the_embedded_router_is_the_leader(
    short_tmp: Path, tmp_path: Path
) -> None:
    routes = """
        routes:
          - name: leader-only
            on: cluster/event/module-added
            runs_on: leader
            do:
              - run: ../handlers/mark
                env: {MARK: "{{ payload.module }} leader={{ router.leader }}"}
    """
    write_routes(tmp_path / "routes.d", "10.yml", routes)
    write_step(tmp_path / "handlers" / "mark" / "10mark", f'echo "$MARK" >> {tmp_path}/marks')
    env = clean_env(EVENTROUTER_STATE_DIR=str(short_tmp))
    router = Router(
        ["run", "--routes", str(tmp_path / "routes.d")], tmp_path / "router.log", env
    ).ready()
    try:
        router.wait_log("this router is the leader")
        published = run_here(
            "publish", "cluster/event/module-added", '{"module": "mail1", "node": 1}', env=env
        )
        assert published.returncode == 0, published.stderr
        wait_for(lambda: lines(tmp_path / "marks"), what="the leader route ran")
    finally:
        router.stop()
    assert lines(tmp_path / "marks") == ["mail1 leader=True"]


def test_check_reads_the_templates_of_tasks_and_runs_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = tmp_path / "routes.d"
    routes.mkdir()
    (routes / "r.yml").write_text(
        "routes:\n  - name: r\n    on: cluster/event/module-added\n"
        '    runs_on: "{{ payload.nod }}"\n'
        "    do:\n      - task:\n          agent: module/mail1\n          action: configure\n"
        '          data: {m: "{{ payload.modul }}"}\n'
    )
    main(["check", "--routes", str(routes)])
    out = capsys.readouterr().out
    assert "'runs_on' uses payload.nod, which module-added does not carry" in out
    assert "'task data.m' uses payload.modul, which module-added does not carry" in out
