"""``env`` in templates: what a step started by the router sees, current at each event.

The environment file as the step runner reads it (``runtime/envfile.py``), the template
context and its undefined names, values never shown unless a route renders them, ``explain
--env/--env-file`` and route tests' ``env:`` (never the shell's), and the daemon re-reading
the module's environment file that NS8's tools rewrite while it runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from eventrouter.cli.main import main
from eventrouter.config.loader import load_routes
from eventrouter.config.patterns import RouteIndex
from eventrouter.config.templates import Condition, event_context
from eventrouter.engine.decide import Decision, RouterContext, decide_message
from eventrouter.errors import TemplateRenderError
from eventrouter.model import Event
from eventrouter.runtime import envfile
from eventrouter.runtime.envfile import ModuleEnvironment
from eventrouter.testing import Harness
from tests.routerproc import (
    Router,
    clean_env,
    lines,
    run_here,
    wait_for,
    write_routes,
    write_step,
)

SECRET = "s3cret-Value-42"


def set_env(state: Path, **values: str) -> None:
    """Rewrite the environment file as NS8's agent library does: a new file renamed over."""
    temporary = state / ".environment.tmp"
    temporary.write_text("".join(f"{key}={value}\n" for key, value in sorted(values.items())))
    os.replace(temporary, state / "environment")


# --- the module's environment file ------------------------------------------------------------


def test_environment_is_the_routers_with_the_state_folders_file_over_it(tmp_path: Path) -> None:
    set_env(tmp_path, MODULE_ID="mail1", NODE_ID="1")
    source = ModuleEnvironment({"AGENT_STATE_DIR": str(tmp_path), "NODE_ID": "9", "PATH": "/x"})

    env = source.current()

    assert env["MODULE_ID"] == "mail1" and env["NODE_ID"] == "1"  # the file wins, as for steps
    assert env["PATH"] == "/x" and env["AGENT_STATE_DIR"] == str(tmp_path)


def test_the_file_is_parsed_again_only_when_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(tmp_path, POSTFIX_ORIGIN="example.org")
    reads: list[str] = []
    real = envfile.read_environment_file

    def counted(path: str | Path) -> dict[str, str]:
        reads.append(str(path))
        return real(path)

    monkeypatch.setattr(envfile, "read_environment_file", counted)
    source = ModuleEnvironment({"AGENT_STATE_DIR": str(tmp_path)})

    first = source.current()
    assert source.current() is first and source.current() is first
    assert len(reads) == 1  # three events, one parse

    set_env(tmp_path, POSTFIX_ORIGIN="example.com")  # set_env: a new file renamed over
    changed = source.current()
    assert changed["POSTFIX_ORIGIN"] == "example.com" and len(reads) == 2

    (tmp_path / "environment").unlink()
    assert "POSTFIX_ORIGIN" not in source.current()


def test_no_state_folder_reads_the_file_in_the_routers_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    set_env(tmp_path, HERE="1")
    # AGENT_STATE_DIR naming a folder that is not there: steps run in the router's folder.
    assert ModuleEnvironment({"AGENT_STATE_DIR": str(tmp_path / "gone")}).current()["HERE"] == "1"
    assert ModuleEnvironment({}).current()["HERE"] == "1"
    # A state folder without the file: the router's folder's file is not read.
    state = tmp_path / "state"
    state.mkdir()
    assert "HERE" not in ModuleEnvironment({"AGENT_STATE_DIR": str(state)}).current()


# --- env in templates ------------------------------------------------------------------------


def test_env_holds_the_events_variables_and_undefined_names_fail() -> None:
    event = Event("module/ldapproxy1/event/user-domain-changed", b"{}", {}, True)
    ctx = event_context(event, env={"LDAP_DOMAIN": "example.org"})

    assert Condition("env.LDAP_DOMAIN").evaluate(ctx) == "example.org"
    assert Condition("env.AGENT_EVENT_SOURCE").evaluate(ctx) == "module/ldapproxy1"
    assert Condition("env.AGENT_EVENT_NAME").evaluate(ctx) == "user-domain-changed"
    assert Condition("env.MISSING is defined").evaluate(ctx) is False
    assert Condition("env.MISSING | default('none')").evaluate(ctx) == "none"
    with pytest.raises(TemplateRenderError, match="undefined"):
        Condition("env.MISSING == 'x'").evaluate(ctx)


ROUTES = """
routes:
  - name: mine
    on: "*/event/user-domain-changed"
    when: payload.domain == env.POSTFIX_ORIGIN
    do: [{emit: {channel: "module/{{ env.MODULE_ID }}/event/reloaded"}}]
  - name: shows-env
    on: app/event/show
    when: env.SECRET
    do: [{emit: {channel: app/event/shown}}]
  - name: hides-false
    on: app/event/show
    when: env.EMPTY
    do: [{emit: {channel: app/event/never}}]
"""


def decide_with(tmp_path: Path, channel: str, payload: object, env: dict[str, str]) -> Decision:
    (tmp_path / "r.yml").write_text(ROUTES)
    index = RouteIndex(load_routes([tmp_path]).routes)
    data = json.dumps(payload).encode()
    return decide_message(index, channel, data, RouterContext(env=env))


def test_the_engine_decides_with_the_env_of_its_context(tmp_path: Path) -> None:
    env = {"POSTFIX_ORIGIN": "example.org", "MODULE_ID": "mail1"}
    mine = decide_with(tmp_path, "module/ldapproxy1/event/user-domain-changed",
                       {"domain": "example.org"}, env)  # fmt: skip
    other = decide_with(tmp_path, "module/ldapproxy1/event/user-domain-changed",
                        {"domain": "example.com"}, env)  # fmt: skip

    assert [item.route.name for item in mine.fired] == ["mine"]
    assert other.fired == []


def test_a_conditions_env_value_is_never_shown(tmp_path: Path) -> None:
    decision = decide_with(tmp_path, "app/event/show", {}, {"SECRET": SECRET, "EMPTY": ""})

    fired = decision.find("shows-env")
    quiet = decision.find("hides-false")
    assert fired is not None and quiet is not None
    assert fired.fires and SECRET not in repr(fired.condition)
    # Why it did not fire is logged, recorded in the history and shown by explain: no value.
    assert (
        not quiet.fires
        and quiet.reason == "when: env.EMPTY is false (<hidden: the expression reads env>)"
    )


# --- explain and test: the environment given, never the shell's --------------------------------


def write_route_folder(tmp_path: Path) -> Path:
    routes = tmp_path / "routes"
    write_routes(routes, "r.yml", ROUTES)
    return routes


def test_explain_takes_env_from_options_and_never_prints_a_value_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = write_route_folder(tmp_path)
    monkeypatch.setenv("POSTFIX_ORIGIN", "example.org")  # the shell's: not read
    monkeypatch.setenv("MODULE_ID", "shell1")
    file = tmp_path / "module.env"
    file.write_text("# a module's environment\nPOSTFIX_ORIGIN=example.org\nMODULE_ID=mail1\n")
    channel = "module/ldapproxy1/event/user-domain-changed"
    payload = '{"domain": "example.org"}'

    assert main(["explain", "--routes", str(routes), channel, payload]) == 0
    assert "when: payload.domain == env.POSTFIX_ORIGIN -> error" in capsys.readouterr().out

    assert (
        main(["explain", "--routes", str(routes), "--env-file", str(file), channel, payload]) == 0
    )
    out = capsys.readouterr().out
    assert "+ route mine fires" in out and "emit module/mail1/event/reloaded" in out

    argv = ["explain", "--routes", str(routes), "--env-file", str(file), "--env", "MODULE_ID=x2"]
    assert main([*argv, "--json", channel, payload]) == 0
    assert "module/x2/event/reloaded" in capsys.readouterr().out  # --env over --env-file

    argv = ["explain", "--routes", str(routes), "--env", f"SECRET={SECRET}", "--env", "EMPTY="]
    assert main([*argv, "app/event/show", "{}"]) == 0
    assert main([*argv, "--json", "app/event/show", "{}"]) == 0
    assert SECRET not in capsys.readouterr().out


def test_explain_env_file_that_cannot_be_read_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = write_route_folder(tmp_path)
    argv = ["explain", "--routes", str(routes), "--env-file", str(tmp_path / "nope")]

    assert main([*argv, "app/event/show"]) == 1
    assert "--env-file" in capsys.readouterr().err


TESTS = """
tests:
  - name: reloads for its own domain
    env: {POSTFIX_ORIGIN: example.org, MODULE_ID: mail1}
    event:
      channel: module/ldapproxy1/event/user-domain-changed
      payload: {domain: example.org}
    expect:
      fire_only: [mine]
      emits: [{channel: module/mail1/event/reloaded}]
  - name: another domain
    env: {POSTFIX_ORIGIN: example.org, MODULE_ID: mail1}
    event:
      channel: module/ldapproxy1/event/user-domain-changed
      payload: {domain: example.com}
    expect: {nothing: true}
  - name: no environment given is an empty one
    event:
      channel: module/ldapproxy1/event/user-domain-changed
      payload: {domain: example.org}
    expect: {nothing: true, errors: true}
"""


def test_route_tests_give_env_per_test_and_ignore_the_shells(tmp_path: Path) -> None:
    routes = write_route_folder(tmp_path)
    write_routes(routes / "tests", "t.yml", TESTS)
    shell = clean_env(POSTFIX_ORIGIN="example.com", MODULE_ID="shell1", NODE_ID="7")

    for env in (clean_env(), shell, {}):
        result = run_here("test", "--routes", str(routes), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "3 passed, 0 failed" in result.stdout


def test_route_test_env_must_be_a_mapping_of_values(tmp_path: Path) -> None:
    routes = write_route_folder(tmp_path)
    write_routes(
        routes / "tests",
        "t.yml",
        """
        tests:
          - name: bad
            env: {A: [1]}
            event: {channel: app/event/show}
            expect: {nothing: true}
        """,
    )

    result = run_here("test", "--routes", str(routes))

    assert result.returncode == 1
    assert "t.yml:4: error: tests[0].env: A: expected a value" in result.stdout


# --- the daemon: the file as it is when each event arrives --------------------------------------


def test_the_router_sees_the_module_environment_file_change_between_events(
    tmp_path: Path, redis_url: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    set_env(state, POSTFIX_ORIGIN="example.org", MODULE_ID="mail1")
    out = tmp_path / "out"
    write_step(tmp_path / "reload" / "10reload", f'echo "$MODULE_ID $(cat)" >> {out}')
    write_routes(
        tmp_path / "routes",
        "r.yml",
        """
        routes:
          - name: reload
            on: "*/event/user-domain-changed"
            when: payload.domain == env.POSTFIX_ORIGIN
            do: [{run: ../reload}]
          - name: secret
            on: app/event/secret
            when: env.TOKEN
            do: [{run: ../reload}]
        """,
    )
    env = clean_env(AGENT_STATE_DIR=str(state), TOKEN=SECRET)
    args = [
        "run",
        "--redis",
        redis_url,
        "--routes",
        str(tmp_path / "routes"),
        "--log-level",
        "DEBUG",
    ]
    router = Router(args, tmp_path / "log", env).ready()
    channel = "module/ldapproxy1/event/user-domain-changed"

    def publish(channel: str, payload: str) -> None:
        result = run_here("publish", "--redis", redis_url, "--raw", channel, payload)
        assert result.returncode == 0, result.stderr

    try:
        publish(channel, '{"domain": "example.com"}')
        router.wait_log("nothing runs")
        set_env(state, POSTFIX_ORIGIN="example.com", MODULE_ID="mail1")  # rewritten meanwhile
        publish(channel, '{"domain": "example.com"}')
        wait_for(lambda: lines(out) == ['mail1 {"domain": "example.com"}'], what="the reload")
        publish("app/event/secret", "{}")
        wait_for(lambda: len(lines(out)) == 2, what="the route reading a secret")
        history = run_here("history", "--redis", redis_url, "--json")
        assert history.returncode == 0, history.stderr
    finally:
        router.close()
    assert SECRET not in router.log and SECRET not in history.stdout


@pytest.mark.parametrize(
    ("route", "looks"),
    [
        ("do: [{emit: {channel: a/event/out, payload: {n: '{{ payload.n }}'}}}]", 0),
        ("when: env.MODULE_ID is defined\n    do: [{emit: {channel: a/event/out}}]", 3),
        ("do: [{exec: [/bin/true]}]", 3),  # its program is looked up on the env's PATH
    ],
)
async def test_the_environment_file_is_looked_at_only_for_a_table_that_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, route: str, looks: int
) -> None:
    routes = tmp_path / "routes.d"
    write_routes(routes, "r.yml", f"routes:\n  - name: r\n    on: a/event/in\n    {route}\n")
    seen: list[int] = []
    real = ModuleEnvironment.current

    def counted(self: ModuleEnvironment) -> Any:
        seen.append(1)
        return real(self)

    monkeypatch.setattr(ModuleEnvironment, "current", counted)
    async with Harness(routes) as router:
        seen.clear()
        for n in range(3):
            await router.send("a/event/in", json.dumps({"n": n}))
    assert len(seen) == looks
