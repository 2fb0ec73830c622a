"""Tests of route files: loading, every error with FILE:LINE and key path, and the CLI check."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from eventrouter.cli.main import build_parser
from eventrouter.config.loader import (
    LoadResult,
    load_file_routes,
    load_routes,
    parse_duration,
    route_files,
)
from eventrouter.config.patterns import ChannelPattern
from eventrouter.config.templates import event_context
from eventrouter.errors import Diagnostic
from eventrouter.model import EmitAction, Event, Route, RunAction
from tests.routerproc import HERE, handler, run_cli, run_here
from tests.routerproc import write_routes as write

REPO = Path(__file__).resolve().parent.parent


def errors(result: LoadResult) -> list[Diagnostic]:
    """Return the error diagnostics of ``result``."""
    return [d for d in result.diagnostics if d.severity == "error"]


def find(diagnostics: list[Diagnostic], path: Path, line: int, *words: str) -> Diagnostic:
    """Return the one error at path:line whose message holds every word; fail otherwise."""
    found = [
        d
        for d in diagnostics
        if d.file == str(path) and d.line == line and all(word in d.message for word in words)
    ]
    listing = "\n".join(str(d) for d in diagnostics)
    assert len(found) == 1, f"expected one {path.name}:{line} {words} among:\n{listing}"
    return found[0]


def route_named(result: LoadResult, name: str) -> Route:
    """Return the route called ``name``."""
    [found] = [route for route in result.routes if route.name == name]
    return found


GOOD = """\
# NS8 reactions
routes:
  - name: module-added-announces-domains
    description: tell the domain handlers
    on: cluster/event/module-added
    when: payload.module is defined
    do:
      - emit:
          channel: cluster/event/module-domain-changed
          payload:
            modules: ["{{ payload.module }}"]
            domains: "{{ payload.domains | default([]) }}"
      - run: handlers/refresh-domains
        timeout: 30s
        env:
          TARGET_MODULE: "{{ payload.module }}"
          FIXED: 5
    enabled: true
    mode: queued

  - name: backups
    on:
      - module/{module}/event/backup-*
      - node/*/event/backup-status-changed
    enabled: false
    do:
      - emit:
          channel: "cluster/event/backup-seen"
"""


# --- a valid file --------------------------------------------------------------------------


def test_valid_file_loads_into_routes(tmp_path: Path) -> None:
    routes_dir = tmp_path / "routes.d"
    target = handler(routes_dir / "handlers" / "refresh-domains")
    path = write(routes_dir, "10-ns8.yml", GOOD)

    result = load_routes([routes_dir])

    assert result.diagnostics == ()
    assert result.ok
    first, second = result.routes
    assert first.name == "module-added-announces-domains"
    assert first.description == "tell the domain handlers"
    assert [p.text for p in first.patterns] == ["cluster/event/module-added"]
    assert (first.file, first.line) == (str(path), 3)
    assert first.enabled is True
    assert first.mode == "queued"
    assert first.when is not None
    assert first.when.source == "payload.module is defined"

    emit, run = first.actions
    assert isinstance(emit, EmitAction)
    assert isinstance(run, RunAction)
    assert emit.line == 8
    assert run.line == 13
    assert run.path == target
    assert run.path.is_absolute()
    assert run.timeout == 30.0
    assert [name for name, _ in run.env] == ["TARGET_MODULE", "FIXED"]

    event = Event("cluster/event/module-added", b'{"module":"mail1"}', {"module": "mail1"}, True)
    ctx = event_context(event, route=first.name)
    assert first.when.evaluate(ctx) is True
    assert emit.channel.render(ctx) == "cluster/event/module-domain-changed"
    assert emit.payload.render(ctx) == {"modules": ["mail1"], "domains": []}
    assert {name: text.render(ctx) for name, text in run.env} == {
        "TARGET_MODULE": "mail1",
        "FIXED": "5",
    }

    assert [p.text for p in second.patterns] == [
        "module/{module}/event/backup-*",
        "node/*/event/backup-status-changed",
    ]
    assert all(isinstance(p, ChannelPattern) for p in second.patterns)
    assert second.enabled is False
    assert second.when is None
    assert second.description == ""
    assert second.line == 21
    [only] = second.actions
    assert isinstance(only, EmitAction)
    assert only.payload.render(ctx) == {}  # payload left out: {}


def test_relative_run_path_is_relative_to_the_route_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = handler(tmp_path / "shared" / "h")
    write(tmp_path / "etc" / "routes.d", "r.yml", GOOD.replace("handlers/refresh-domains", "x"))
    path = write(
        tmp_path / "routes.d",
        "r.yml",
        """\
        routes:
          - name: r
            on: x
            do:
              - run: ../shared/./h
        """,
    )
    monkeypatch.chdir(tmp_path / "etc")  # the working directory plays no part

    routes, diagnostics = load_file_routes(path)

    assert diagnostics == []
    [action] = routes[0].actions
    assert isinstance(action, RunAction)
    assert action.path == target
    assert action.timeout is None
    assert action.env == ()


def test_absolute_run_path_is_kept(tmp_path: Path) -> None:
    target = handler(tmp_path / "abs" / "h")
    path = write(
        tmp_path / "routes.d",
        "r.yml",
        f"""\
        routes:
          - name: r
            on: x
            do:
              - run: {target}
        """,
    )

    routes, _ = load_file_routes(path)

    [action] = routes[0].actions
    assert isinstance(action, RunAction)
    assert action.path == target


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("5", 5.0), ("1.5s", 1.5)],
)
def test_timeouts(written: str, seconds: float, tmp_path: Path) -> None:
    handler(tmp_path / "h")
    path = write(
        tmp_path,
        "r.yml",
        f"""\
        routes:
          - name: r
            on: x
            do:
              - run: h
                timeout: {written}
        """,
    )

    routes, diagnostics = load_file_routes(path)

    assert diagnostics == []
    [action] = routes[0].actions
    assert isinstance(action, RunAction)
    assert action.timeout == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), (5, 5.0), (0.25, 0.25)],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "0", 0, "-1s", "5 days", "1e3", True, "", "ms"])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("written", "patterns"),
    [
        ("cluster/event/module-added", ["cluster/event/module-added"]),
        ('"*/event/*"', ["*/event/*"]),
        ("[cluster/event/a, node/1/event/b]", ["cluster/event/a", "node/1/event/b"]),
    ],
)
def test_on_is_a_string_or_a_list(written: str, patterns: list[str], tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yml",
        f"""\
        routes:
          - name: r
            on: {written}
            do:
              - emit: {{channel: cluster/event/x}}
        """,
    )

    routes, diagnostics = load_file_routes(path)

    assert diagnostics == []
    assert [p.text for p in routes[0].patterns] == patterns


# --- every error, all at once --------------------------------------------------------------

BAD_ROUTES = """\
routes:
  - name: Bad_Name
    onn: cluster/event/x
    do: []
  - name: typo
    on: cluster/event/a
    whne: payload.x
    do:
      - run: ../h
        timout: 3s
  - name: types
    on: 5
    description: [1]
    enabled: yes
    mode: sometimes
    do: not-a-list
  - name: templates
    on: "module/{module/event/x"
    when: "{{ payload.x }}"
    do:
      - run: ../missing-handler
      - emit:
          channel: cluster/event/x
        run: ../h
      - emit:
          channel: "{{ payload.x"
      - emit:
          channel: cluster/event/y
          payload:
            a: ["{% if %}"]
      - run: ../h
        timeout: soon
      - emit:
          chanel: x
      - "string"
  - "not a mapping"
  - name: condition
    on: x
    when: "payload.x =="
    do:
      - emit: {channel: x}
  - description: no name, no on, no do
"""


@pytest.fixture
def bad_load(tmp_path: Path) -> tuple[LoadResult, Path]:
    """Load a folder with errors in several files, in one call."""
    handler(tmp_path / "h")
    folder = tmp_path / "routes.d"
    write(folder, "20-bad.yml", BAD_ROUTES)
    write(folder, "30-list.yml", "- a\n- b\n")
    write(folder, "40-scalar.yml", "just words\n")
    write(folder, "50-top.yml", "routes: []\nextra: 1\n")
    write(folder, "60-typo.yml", "\nrouts: []\n")
    write(folder, "70-yaml.yml", "routes:\n  - name: a\n    on: x\n   do: y\n")
    return load_routes([folder]), folder


@pytest.mark.parametrize(
    ("name", "line", "words"),
    [
        ("20-bad.yml", 2, ("routes[0].name", "'Bad_Name'", "[a-z0-9][a-z0-9._-]*")),
        ("20-bad.yml", 3, ("routes[0].onn", "unknown key 'onn'", "did you mean 'on'")),
        ("20-bad.yml", 2, ("routes[0].on", "missing required key 'on'")),
        ("20-bad.yml", 4, ("routes[0].do", "at least one action")),
        ("20-bad.yml", 7, ("routes[1].whne", "unknown key", "did you mean 'when'")),
        ("20-bad.yml", 10, ("routes[1].do[0].timout", "did you mean 'timeout'")),
        ("20-bad.yml", 12, ("routes[2].on", "expected a string")),
        ("20-bad.yml", 13, ("routes[2].description", "expected a string")),
        ("20-bad.yml", 14, ("routes[2].enabled", "true or false", "'yes'")),
        ("20-bad.yml", 15, ("routes[2].mode", "queued")),
        ("20-bad.yml", 16, ("routes[2].do", "expected a list")),
        ("20-bad.yml", 18, ("routes[3].on", "module/{module/event/x", "unclosed '{'")),
        ("20-bad.yml", 19, ("routes[3].when", "without {{ }}")),
        ("20-bad.yml", 21, ("routes[3].do[0].run", "missing-handler", "does not exist")),
        ("20-bad.yml", 22, ("routes[3].do[1]", "one of 'run', 'emit', 'task', 'exec'")),
        ("20-bad.yml", 26, ("routes[3].do[2].emit.channel", "syntax error")),
        ("20-bad.yml", 29, ("routes[3].do[3].emit.payload", "syntax error")),
        ("20-bad.yml", 32, ("routes[3].do[4].timeout", "'soon'", "duration")),
        ("20-bad.yml", 34, ("routes[3].do[5].emit.chanel", "did you mean 'channel'")),
        ("20-bad.yml", 33, ("routes[3].do[5].emit.channel", "missing required key 'channel'")),
        ("20-bad.yml", 35, ("routes[3].do[6]", "one of 'run', 'emit', 'task', 'exec'")),
        ("20-bad.yml", 36, ("routes[4]", "a route is a mapping")),
        ("20-bad.yml", 39, ("routes[5].when", "condition syntax error")),
        ("20-bad.yml", 42, ("routes[6].name", "missing required key 'name'")),
        ("20-bad.yml", 42, ("routes[6].on", "missing required key 'on'")),
        ("20-bad.yml", 42, ("routes[6].do", "missing required key 'do'")),
        ("30-list.yml", 1, ("expected a mapping with the key 'routes'",)),
        ("40-scalar.yml", 1, ("expected a mapping with the key 'routes'", "a string")),
        ("50-top.yml", 2, ("unknown key 'extra'", "allowed keys: routes")),
        ("60-typo.yml", 2, ("unknown key 'routs'", "did you mean 'routes'")),
        ("70-yaml.yml", 4, ("invalid YAML",)),
    ],
)
def test_every_error_is_reported_with_file_line_and_key_path(
    bad_load: tuple[LoadResult, Path], name: str, line: int, words: tuple[str, ...]
) -> None:
    result, folder = bad_load

    find(errors(result), folder / name, line, *words)


def test_all_errors_come_at_once_and_no_route_is_kept(bad_load: tuple[LoadResult, Path]) -> None:
    result, folder = bad_load

    assert not result.ok
    assert result.routes == ()  # a file with errors contributes no routes
    files = {Path(d.file).name for d in errors(result)}
    assert files == {
        "20-bad.yml",
        "30-list.yml",
        "40-scalar.yml",
        "50-top.yml",
        "60-typo.yml",
        "70-yaml.yml",
    }
    assert len([d for d in errors(result) if d.file == str(folder / "20-bad.yml")]) == 26


def test_diagnostics_print_as_file_line_severity_message(
    bad_load: tuple[LoadResult, Path],
) -> None:
    result, folder = bad_load

    for item in result.diagnostics:
        assert re.fullmatch(rf"{re.escape(str(folder))}/[^:]+:\d+: error: .+", str(item))


def test_type_errors_name_the_kinds_users_know(bad_load: tuple[LoadResult, Path]) -> None:
    # A list is "a list" and a number a number: never an internal class name, never "a int".
    result, folder = bad_load

    listed = find(errors(result), folder / "30-list.yml", 1, "expected a mapping")
    description = find(errors(result), folder / "20-bad.yml", 13, "routes[2].description")
    number = find(errors(result), folder / "20-bad.yml", 12, "routes[2].on")
    assert "got a list" in listed.message, listed.message
    assert "got a list" in description.message, description.message
    assert re.search(r"got an? (int|integer|number)\b", number.message), number.message
    assert "a int" not in number.message


def test_error_in_a_good_file_does_not_drop_the_other_files_routes(tmp_path: Path) -> None:
    folder = tmp_path / "routes.d"
    write(folder, "a.yml", "routes:\n  - name: good\n    on: x\n    do: [{emit: {channel: y}}]\n")
    write(folder, "b.yml", "routes:\n  - name: bad\n    on: x\n    do: []\n")

    result = load_routes([folder])

    assert not result.ok
    assert [route.name for route in result.routes] == ["good"]
    find(errors(result), folder / "b.yml", 4, "at least one action")


def test_duplicate_route_names_across_files(tmp_path: Path) -> None:
    first = write(
        tmp_path / "one",
        "r.yml",
        "routes:\n\n  - name: same\n    on: x\n    do: [{emit: {channel: y}}]\n",
    )
    second = write(
        tmp_path / "two",
        "r.yml",
        "# another folder\nroutes:\n  - name: other\n    on: x\n    do: [{emit: {channel: y}}]\n"
        "  - name: same\n    on: z\n    do: [{emit: {channel: y}}]\n",
    )

    result = load_routes([tmp_path / "one", tmp_path / "two"])

    [error] = errors(result)
    assert (error.file, error.line) == (str(second), 6)
    assert "duplicate route name 'same'" in error.message
    assert f"{first}:3" in error.message
    assert [route.name for route in result.routes] == ["same", "other"]
    assert route_named(result, "same").file == str(first)


def test_duplicate_route_names_in_one_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yml",
        "routes:\n  - name: same\n    on: x\n    do: [{emit: {channel: y}}]\n"
        "  - name: same\n    on: z\n    do: [{emit: {channel: y}}]\n",
    )

    result = load_routes([tmp_path])

    [error] = errors(result)
    assert (error.file, error.line) == (str(path), 5)
    assert f"{path}:2" in error.message


@pytest.mark.parametrize(
    "when",
    ['"{{ payload.module is defined }}"', '"  {{ payload.x }}  "', "'{{ a }} and {{ b }}'"],
)
def test_when_written_with_braces_says_to_drop_them(when: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yml",
        f"routes:\n  - name: r\n    on: x\n    when: {when}\n    do: [{{emit: {{channel: y}}}}]\n",
    )

    _, diagnostics = load_file_routes(path)

    find(diagnostics, path, 4, "routes[0].when", "without {{ }}")


def test_env_template_error_names_the_variable_and_its_line(tmp_path: Path) -> None:
    handler(tmp_path / "h")
    path = write(
        tmp_path,
        "r.yml",
        """\
        routes:
          - name: r
            on: x
            do:
              - run: h
                env:
                  GOOD: "{{ payload.a }}"
                  BROKEN: "{{ payload.b"
        """,
    )

    _, diagnostics = load_file_routes(path)

    [error] = diagnostics
    assert "BROKEN" in error.message, str(error)
    assert "syntax error" in error.message
    assert error.line == 8, str(error)


def test_every_bad_env_entry_is_reported(tmp_path: Path) -> None:
    handler(tmp_path / "h")
    path = write(
        tmp_path,
        "r.yml",
        """\
        routes:
          - name: r
            on: x
            do:
              - run: h
                env:
                  "BAD NAME": x
                  OTHER: "{{ oops"
        """,
    )

    _, diagnostics = load_file_routes(path)

    messages = "\n".join(str(d) for d in diagnostics)
    assert "'BAD NAME'" in messages
    assert "OTHER" in messages  # all errors at once: the second entry is checked too


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ("[A, B]", "mapping"),
        ("{A: [1]}", "expected a string"),
        ("{A: {b: 1}}", "expected a string"),
        ("{A: true}", "expected a string"),
        ("{1A: x}", "not a valid environment variable name"),
    ],
)
def test_bad_env_is_an_error(env: str, words: str, tmp_path: Path) -> None:
    handler(tmp_path / "h")
    path = write(
        tmp_path,
        "r.yml",
        f"routes:\n  - name: r\n    on: x\n    do:\n      - run: h\n        env: {env}\n",
    )

    _, diagnostics = load_file_routes(path)

    find(diagnostics, path, 6, "routes[0].do[0].env", words)


def test_run_pointing_at_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "script.sh").write_text("#!/bin/sh\n")
    path = write(
        tmp_path, "r.yml", "routes:\n  - name: r\n    on: x\n    do:\n      - run: script.sh\n"
    )

    _, diagnostics = load_file_routes(path)

    find(diagnostics, path, 5, "routes[0].do[0].run", "is not a directory")


@pytest.mark.parametrize("on", ["[]", '""', "[cluster/event/x, '[a']", "null", "{a: b}"])
def test_bad_on_is_an_error(on: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yml",
        f"routes:\n  - name: r\n    on: {on}\n    do: [{{emit: {{channel: y}}}}]\n",
    )

    routes, diagnostics = load_file_routes(path)

    assert routes == []
    find(diagnostics, path, 3, "routes[0].on")


@pytest.mark.parametrize("name", ["Upper", "-dash-first", "with space", "", "x/y", "é"])
def test_bad_route_names(name: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yml",
        f'routes:\n  - name: "{name}"\n    on: x\n    do: [{{emit: {{channel: y}}}}]\n',
    )

    _, diagnostics = load_file_routes(path)

    find(diagnostics, path, 2, "routes[0].name")


@pytest.mark.parametrize("name", ["a", "0", "module-added", "a.b_c-9"])
def test_good_route_names(name: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yml",
        f'routes:\n  - name: "{name}"\n    on: x\n    do: [{{emit: {{channel: y}}}}]\n',
    )

    routes, diagnostics = load_file_routes(path)

    assert diagnostics == []
    assert routes[0].name == name


def test_action_with_both_run_and_emit(tmp_path: Path) -> None:
    handler(tmp_path / "h")
    path = write(
        tmp_path,
        "r.yml",
        "routes:\n  - name: r\n    on: x\n    do:\n      - run: h\n        emit: {channel: y}\n",
    )

    routes, diagnostics = load_file_routes(path)

    assert routes == []
    find(diagnostics, path, 5, "routes[0].do[0]", "one of 'run', 'emit', 'task', 'exec'")


def test_emit_payload_may_be_any_json_shape(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yml",
        """\
        routes:
          - name: r
            on: x
            do:
              - emit:
                  channel: "{{ source }}/event/copied"
                  payload: "{{ payload }}"
        """,
    )

    routes, diagnostics = load_file_routes(path)

    assert diagnostics == []
    [action] = routes[0].actions
    assert isinstance(action, EmitAction)
    ctx = event_context(Event("node/1/event/e", b"[1]", [1], True))
    assert action.channel.render(ctx) == "node/1/event/copied"
    assert action.payload.render(ctx) == [1]


@pytest.mark.parametrize(
    ("text", "severity", "words"),
    [
        ("", "warning", "file is empty"),
        ("# nothing but a comment\n", "warning", "no routes: the file holds only comments"),
        ("- routes\n", "error", "expected a mapping"),
        ("42\n", "error", "expected a mapping"),
        ("routes: {}\n", "error", "routes: expected a list"),
        ("routes:\n", "error", "routes: expected a list"),
    ],
)
def test_file_shapes(text: str, severity: str, words: str, tmp_path: Path) -> None:
    path = tmp_path / "r.yml"
    path.write_text(text)

    result = load_routes([tmp_path])

    [item] = result.diagnostics
    assert (item.file, item.line, item.severity) == (str(path), 1, severity)
    assert words in item.message
    assert result.ok is (severity == "warning")
    assert result.routes == ()


def test_an_empty_routes_list_is_fine(tmp_path: Path) -> None:
    write(tmp_path, "r.yml", "routes: []\n")

    result = load_routes([tmp_path])

    assert result.ok
    assert result.diagnostics == ()
    assert result.routes == ()


# --- which files, in which order -----------------------------------------------------------


def one_route(name: str) -> str:
    """Return a route file holding one route called ``name``."""
    return (
        f"routes:\n  - name: {name}\n    on: x/event/{name}-started\n"
        f"    do: [{{emit: {{channel: y/event/{name}-seen}}}}]\n"
    )


def test_files_are_read_in_byte_wise_order(tmp_path: Path) -> None:
    for file_name, route_name in [
        ("a.yml", "lower-a"),
        ("B.yml", "upper-b"),
        ("9-x.yml", "nine"),
        ("10-x.yml", "ten"),
        ("_u.yaml", "underscore"),
    ]:
        write(tmp_path, file_name, one_route(route_name))

    result = load_routes([tmp_path])

    assert [route.name for route in result.routes] == [
        "ten",
        "nine",
        "upper-b",
        "underscore",
        "lower-a",
    ]
    assert [p.name for p in route_files(tmp_path)] == [
        "10-x.yml",
        "9-x.yml",
        "B.yml",
        "_u.yaml",
        "a.yml",
    ]


def test_only_yml_and_yaml_files_directly_in_the_folder(tmp_path: Path) -> None:
    write(tmp_path, "keep.yml", one_route("keep-yml"))
    write(tmp_path, "keep.yaml", one_route("keep-yaml"))
    write(tmp_path, ".hidden.yml", one_route("hidden"))
    write(tmp_path, "sub/nested.yml", one_route("nested"))
    write(tmp_path, "notes.txt", one_route("txt"))
    write(tmp_path, "old.yml.bak", one_route("bak"))
    write(tmp_path, "old.yml~", one_route("tilde"))
    write(tmp_path, "UPPER.YML", one_route("upper-ext"))
    (tmp_path / "folder.yml").mkdir()

    result = load_routes([tmp_path])

    assert result.diagnostics == ()
    assert sorted(route.name for route in result.routes) == ["keep-yaml", "keep-yml"]


def test_folders_are_read_in_the_order_given(tmp_path: Path) -> None:
    write(tmp_path / "z", "a.yml", one_route("from-z"))
    write(tmp_path / "a", "a.yml", one_route("from-a"))

    result = load_routes([tmp_path / "z", tmp_path / "a"])

    assert [route.name for route in result.routes] == ["from-z", "from-a"]


def test_a_missing_routes_folder_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "ok", "r.yml", one_route("still-loaded"))

    result = load_routes([tmp_path / "missing", tmp_path / "ok"])

    assert not result.ok
    [error] = errors(result)
    assert error.file == str(tmp_path / "missing")
    assert "cannot read routes folder" in error.message
    assert [route.name for route in result.routes] == ["still-loaded"]


def test_a_routes_folder_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "routes.d").write_text("routes: []\n")

    result = load_routes([tmp_path / "routes.d"])

    assert not result.ok
    assert "cannot read routes folder" in errors(result)[0].message


def test_load_result_ok_ignores_warnings() -> None:
    warning = Diagnostic("f.yml", 1, "warning", "w")
    error = Diagnostic("f.yml", 2, "error", "e")

    assert LoadResult((), ()).ok
    assert LoadResult((), (warning,)).ok
    assert not LoadResult((), (warning, error)).ok


# --- digests -------------------------------------------------------------------------------

ROUTE_BODY = """\
  - name: r
    on: cluster/event/x
    when: payload.a is defined
    do:
      - run: h
        timeout: 30s
"""


def digest_of(folder: Path, text: str) -> str:
    """Write ``text`` as the only route file of ``folder``, load it; return route r's digest."""
    handler(folder / "h")
    write(folder, "r.yml", text)
    result = load_routes([folder])
    assert result.ok, [str(d) for d in result.diagnostics]
    digest: str = route_named(result, "r").digest
    return digest


def test_digest_is_the_same_for_the_same_content_elsewhere_in_the_file(tmp_path: Path) -> None:
    plain = digest_of(tmp_path, "routes:\n" + ROUTE_BODY)
    moved = digest_of(
        tmp_path,
        "# comments and another route first\n\nroutes:\n"
        "  - name: other\n    on: y\n    do: [{emit: {channel: z}}]\n\n" + ROUTE_BODY,
    )

    assert len(plain) == 64
    assert moved == plain


def test_digest_ignores_key_order_and_flow_style(tmp_path: Path) -> None:
    plain = digest_of(tmp_path, "routes:\n" + ROUTE_BODY)
    reordered = digest_of(
        tmp_path,
        "routes:\n  - do: [{timeout: 30s, run: h}]\n    when: payload.a is defined\n"
        "    on: cluster/event/x\n    name: r\n",
    )

    assert reordered == plain


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("cluster/event/x", "cluster/event/y"),
        ("payload.a is defined", "payload.b is defined"),
        ("30s", "31s"),
        ("      - run: h\n", "      - run: h\n        env: {A: b}\n"),
        ("    do:\n", "    enabled: false\n    do:\n"),
    ],
)
def test_digest_changes_when_content_changes(old: str, new: str, tmp_path: Path) -> None:
    before = digest_of(tmp_path, "routes:\n" + ROUTE_BODY)
    after = digest_of(tmp_path, "routes:\n" + ROUTE_BODY.replace(old, new))

    assert after != before


def test_digest_changes_when_the_handler_resolves_elsewhere(tmp_path: Path) -> None:
    # Same text, but `run: h` is relative to the file: another folder, another handler.
    first = digest_of(tmp_path / "a", "routes:\n" + ROUTE_BODY)
    second = digest_of(tmp_path / "b", "routes:\n" + ROUTE_BODY)

    assert first != second


# --- the CLI -------------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI with no routes configured by the environment (in process where it can)."""
    return (run_here if args[:1] and args[0] in HERE else run_cli)(*args, cwd=cwd)


def test_cli_check_good_folder(tmp_path: Path) -> None:
    folder = tmp_path / "routes.d"
    handler(folder / "handlers" / "on-job")
    write(
        folder,
        "10-jobs.yml",
        """\
        routes:
          - name: job-done
            on: module/{module}/event/job-done
            when: payload is mapping and payload.id is defined
            do:
              - run: handlers/on-job
                timeout: 1m
                env:
                  MODULE: "{{ match.module }}"
              - emit:
                  channel: cluster/event/job-seen
                  payload: {module: "{{ match.module }}"}
        """,
    )
    write(folder, "20-more.yaml", one_route("other"))

    done = cli("check", "--routes", str(folder), cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == []


def test_cli_check_bad_folder(tmp_path: Path) -> None:
    folder = tmp_path / "routes.d"
    write(folder, "a.yml", "routes:\n  - name: r\n    onn: x\n    do: [{emit: {channel: y}}]\n")
    write(folder, "b.yml", "routes:\n  - name: s\n    on: '[x'\n    do: [{emit: {channel: y}}]\n")

    done = cli("check", "--routes", "routes.d", cwd=tmp_path)

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines
    for line in lines:
        assert re.fullmatch(r"routes\.d/[ab]\.yml:\d+: error: .+", line), line
    assert any(line.startswith("routes.d/a.yml:3: error:") and "'onn'" in line for line in lines)
    assert any(line.startswith("routes.d/b.yml:3: error:") and "'[x'" in line for line in lines)


def test_cli_check_warnings_do_not_fail(tmp_path: Path) -> None:
    (tmp_path / "empty.yml").write_text("")
    write(tmp_path, "r.yml", one_route("r"))  # no route at all would be "nothing to check"

    done = cli("check", "--routes", str(tmp_path), cwd=tmp_path)

    assert done.returncode == 0
    warning = "warning: file is empty; expected a mapping with the key 'routes'"
    assert done.stdout.splitlines() == [f"{tmp_path / 'empty.yml'}:1: {warning}"]


def test_cli_check_missing_routes_folder(tmp_path: Path) -> None:
    done = cli("check", "--routes", str(tmp_path / "nope"), cwd=tmp_path)

    assert done.returncode == 1
    assert str(tmp_path / "nope") in done.stdout
    assert ": error: " in done.stdout


def test_cli_check_missing_events_folder(tmp_path: Path) -> None:
    write(tmp_path / "routes.d", "r.yml", one_route("r"))

    done = cli(
        "check", "--routes", "routes.d", "--events-dir", str(tmp_path / "events"), cwd=tmp_path
    )

    assert done.returncode == 1
    assert f"{tmp_path / 'events'}" in done.stdout


def test_cli_check_reads_several_routes_folders(tmp_path: Path) -> None:
    write(tmp_path / "one", "r.yml", one_route("same"))
    write(tmp_path / "two", "r.yml", one_route("same"))

    done = cli("check", "--routes", "one", "--routes", "two", cwd=tmp_path)

    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "two/r.yml:2: error: duplicate route name 'same', first defined at one/r.yml:2"
    ]


def test_cli_routes_lists_name_patterns_and_origin(tmp_path: Path) -> None:
    folder = tmp_path / "routes.d"
    handler(folder / "handlers" / "refresh-domains")
    path = write(folder, "10-ns8.yml", GOOD)

    done = cli("routes", "--routes", str(folder), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith("module-added-announces-domains\tcluster/event/module-added\t")
    assert "emit cluster/event/module-domain-changed" in first
    assert "refresh-domains" in first
    assert first.endswith(f"\t{path}:3")
    assert second.startswith("backups (disabled)\t")
    assert "module/{module}/event/backup-*, node/*/event/backup-status-changed" in second
    assert second.endswith(f"\t{path}:21")


def test_cli_routes_with_errors_exits_1(tmp_path: Path) -> None:
    write(tmp_path, "r.yml", "routes:\n  - name: r\n")

    done = cli("routes", "--routes", str(tmp_path), cwd=tmp_path)

    assert done.returncode == 1
    assert done.stdout == ""
    assert "missing required key 'on'" in done.stderr


@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["routes"], ["publish"]])
def test_cli_help_on_every_command(command: list[str], tmp_path: Path) -> None:
    done = cli(*command, "--help", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: eventrouter")


@pytest.mark.parametrize(
    "args",
    [["check", "--no-such-option"], ["--no-such-option"], ["no-such-command"], []],
)
def test_cli_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    done = cli(*args, cwd=tmp_path)

    assert done.returncode == 2
    assert "usage: eventrouter" in done.stderr


def test_shipped_examples_check_clean() -> None:
    done = cli(
        "check",
        "--routes",
        "examples/ns8-cluster/routes.d",
        "--events-dir",
        "examples/ns8-cluster/events",
        cwd=REPO,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == []


def test_shipped_examples_load_routes() -> None:
    result = load_routes([REPO / "examples" / "ns8-cluster" / "routes.d"])

    assert result.ok
    assert result.diagnostics == ()
    assert result.routes
    for route in result.routes:
        for action in route.actions:
            if isinstance(action, RunAction):
                assert action.path.is_dir()


def test_reload_cache_rebuilds_only_changed_files(tmp_path: Path) -> None:
    folder = tmp_path / "routes.d"
    handler(folder / "h")
    write(folder, "10-a.yml", one_route("first"))
    write(folder, "20-b.yml", one_route("second"))
    cache: dict[str, Any] = {}
    before = load_routes([folder], cache)
    write(folder, "20-b.yml", one_route("changed"))
    after = load_routes([folder], cache)
    assert after.routes[0] is before.routes[0]  # same text: the very same object
    assert [route.name for route in after.routes] == ["first", "changed"]
    (folder / "10-a.yml").unlink()
    assert [route.name for route in load_routes([folder], cache).routes] == ["changed"]
    assert sorted(Path(name).name for name in cache) == ["20-b.yml"]


def test_reload_cache_sees_handler_folders_come_and_go(tmp_path: Path) -> None:
    folder = tmp_path / "routes.d"
    text = "routes:\n  - name: r\n    on: a/event/b\n    do: [{run: h}]\n"
    write(folder, "r.yml", text)
    cache: dict[str, Any] = {}
    assert not load_routes([folder], cache).ok  # the folder is missing
    handler(folder / "h")
    assert load_routes([folder], cache).ok  # same text, but the error is not reused
    shutil.rmtree(folder / "h")
    assert not load_routes([folder], cache).ok  # nor is a success once the folder is gone


# --- durations: not a number, infinite, negative or absurd ---------------------------------


@pytest.mark.parametrize(
    ("key", "written", "words"),
    [
        ("debounce", ".nan", "not a number"),
        ("debounce", ".inf", "must be finite"),
        ("throttle", "-.inf", "must be finite"),
        ("debounce", "-2s", "not a duration"),
        ("debounce", "-2", "greater than zero"),
        ("debounce", "25h", "at most 24h"),
        ("throttle", "86401", "at most 24h"),
        ("debounce", "1.0e+400", "must be finite"),
        ("throttle", str(10**400), "at most 24h"),
    ],
)
def test_absurd_route_durations_are_errors_with_their_line(
    key: str, written: str, words: str, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "r.yml",
        f"""\
        routes:
          - name: r
            on: x/event/y
            do: [{{emit: {{channel: x/event/z}}}}]
            {key}: {written}
        """,
    )

    result = load_routes([tmp_path])

    find(errors(result), path, 5, f"routes[0].{key}", words)
    assert result.routes == ()


@pytest.mark.parametrize(
    ("where", "written", "words"),
    [
        ("timeout", ".nan", "not a number"),
        ("timeout", "721h", "at most 720h (30 days)"),
        ("timeout", "-.inf", "must be finite"),
        ("backoff", ".inf", "must be finite"),
        ("backoff", "25h", "at most 24h"),
        ("max_backoff", "100000", "at most 24h"),
    ],
)
def test_absurd_timeouts_and_backoffs_are_errors(
    where: str, written: str, words: str, tmp_path: Path
) -> None:
    handler(tmp_path / "h")
    timeout = f"\n                timeout: {written}" if where == "timeout" else ""
    retry = f"\n            retry: {{attempts: 2, {where}: {written}}}"
    retry = retry if where != "timeout" else ""
    path = write(
        tmp_path,
        "r.yml",
        f"""\
        routes:
          - name: r
            on: x/event/y
            do:
              - run: h{timeout}{retry}
        """,
    )

    result = load_routes([tmp_path])

    [error] = errors(result)
    assert error.file == str(path) and error.line == 6
    assert words in error.message, error


def test_the_largest_durations_are_accepted(tmp_path: Path) -> None:
    handler(tmp_path / "h")
    write(
        tmp_path,
        "r.yml",
        """\
        routes:
          - name: r
            on: x/event/y
            do: [{run: h, timeout: 720h}]
            debounce: 24h
            retry: {attempts: 2, backoff: 24h, max_backoff: 86400}
        """,
    )

    result = load_routes([tmp_path])

    assert result.ok, result.diagnostics
    [route] = result.routes
    assert route.debounce == 86400.0
    assert route.actions[0].timeout == 720 * 3600.0  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 10**400, "721h"])
def test_parse_duration_refuses_what_is_not_a_sane_duration(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("option", "written", "words"),
    [
        ("--step-timeout", "721h", "at most 720h"),
        ("--stop-timeout", "99999999999999999999999h", "at most 720h"),
        ("--step-timeout", "nan", "not a duration"),
        ("--stop-timeout", "inf", "not a duration"),
        ("--step-timeout", "-5", "not a duration"),
    ],
)
def test_cli_duration_options_refuse_absurd_values(
    option: str, written: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["run", f"{option}={written}"])

    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert option in err and words in err, err


# --- files that are not route files: their content is never echoed ---------------------------

SECRET = "S3cr3tSalt$Zm9vYmFyYmF6cXV4"
#: A line of a secret file, longer than any quote an error may make.
LONG = f"{SECRET}-{SECRET}"
SHADOW = f"root:$6${SECRET}:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n"
#: Files of other kinds: not a word of them may be quoted.
NOT_ROUTE_FILES = {
    "shadow": SHADOW,
    "toml": f'[database]\nhost = "db"\npassword = "{SECRET}"\n',
    "ini": f"[db]\npassword={SECRET}\n",
    "ini-no-section": f"password={SECRET}\nuser=admin\n",
    "long-key": f"{LONG}: 1\n",
    "env-like": f"user: admin\npassword: {SECRET}\n",
    "flow": f"token: {{a: b\nsecretline: {SECRET}",
    "tag": f"k: !!python/object:{LONG} {{}}\n",
}
#: Route files gone wrong: a short excerpt of a key or value may be quoted, never a line.
BAD_ROUTE_FILES = {
    "routes-with-junk": f"routes: []\n{LONG}: 1\n",
    "bad-route": f"routes:\n  - name: {LONG}\n    on: '[{LONG}'\n    do: {LONG}\n"
    f"    enabled: {LONG}\n    mode: {LONG}\n    debounce: {LONG}\n    {LONG}: 1\n",
    "bad-schema": f"schemas:\n  {LONG}:\n    fields: {{{LONG}: {LONG}}}\n",
    "bad-field-type": f"schemas:\n  thing-happened:\n    fields: {{a: {LONG}}}\n",
    "bad-alias": f"routes: *{LONG}\n",
    "duplicate": f"routes: []\n{LONG}: 1\n{LONG}: 2\n",
    "bad-template": f"routes:\n  - name: r\n    on: x\n    when: a {LONG} b\n"
    "    do: [{emit: {channel: x}}]\n",
}


def _not_route_file(tmp_path: Path, kind: str) -> Path:
    """Make a routes folder whose x.yml is a symlink to a file of ``kind`` outside it."""
    secret = tmp_path / "secret"
    secret.write_text({**NOT_ROUTE_FILES, **BAD_ROUTE_FILES}[kind])
    folder = tmp_path / "routes.d"
    folder.mkdir()
    (folder / "x.yml").symlink_to(secret)
    return folder


@pytest.mark.parametrize("kind", sorted(NOT_ROUTE_FILES))
def test_errors_about_another_kind_of_file_quote_nothing_of_it(kind: str, tmp_path: Path) -> None:
    folder = _not_route_file(tmp_path, kind)

    result = load_routes([folder])

    assert errors(result), f"{kind} loaded without error"
    for item in result.diagnostics:
        assert SECRET not in str(item), item
        assert len(item.message) < 300, item


@pytest.mark.parametrize("kind", sorted(BAD_ROUTE_FILES))
def test_errors_about_a_route_file_quote_short_excerpts_only(kind: str, tmp_path: Path) -> None:
    folder = _not_route_file(tmp_path, kind)

    result = load_routes([folder])

    assert errors(result), f"{kind} loaded without error"
    for item in result.diagnostics:
        assert LONG[:41] not in str(item), item
        assert len(item.message) < 300, item


def test_a_shadow_file_is_said_not_to_be_a_route_file(tmp_path: Path) -> None:
    folder = _not_route_file(tmp_path, "shadow")

    result = load_routes([folder])

    [item] = result.diagnostics
    assert item.severity == "error" and item.line == 1
    assert "not a route file" in item.message and "'routes'" in item.message


def test_long_or_odd_keys_are_quoted_short_and_escaped(tmp_path: Path) -> None:
    key = "rout\\x1b[31mes-and-then-some-more-text-here-and-more"
    write(tmp_path, "r.yml", f'routes: []\n"{key}": 1\n')

    [item] = load_routes([tmp_path]).diagnostics

    assert item.line == 2 and "\x1b" not in item.message
    assert "'rout\\x1b[31mes-and-then-some-more-text-here'..." in item.message
    assert "and-more" not in item.message


@pytest.mark.parametrize("kind", ["shadow", "toml", "env-like", "bad-route"])
def test_check_explain_and_run_do_not_echo_a_secret_file(kind: str, tmp_path: Path) -> None:
    folder = _not_route_file(tmp_path, kind)

    check = cli("check", "--routes", str(folder), cwd=tmp_path)
    explain = cli("explain", "--routes", str(folder), "x/event/y", "{}", cwd=tmp_path)
    # Refuses to start before any connection: the address is never used.
    run = cli("run", "--routes", str(folder), "--redis", "redis://127.0.0.1:9", cwd=tmp_path)

    for done in (check, explain, run):
        assert done.returncode == 1, done
        assert str(folder / "x.yml") in done.stdout + done.stderr
        quoted = SECRET if kind in NOT_ROUTE_FILES else LONG[:41]
        assert quoted not in done.stdout + done.stderr


# --- editing mistakes: the right line, and the fix -------------------------------------------

EDITING_MISTAKES = {
    "missing-colon": (
        """\
        routes:
          - name: a
            on cluster/event/x-added
            do:
              - emit: {channel: cluster/event/y-added}
        """,
        [
            (
                3,
                "invalid YAML: could not find the ':' after 'on cluster/event/x-added' (while "
                "scanning a simple key): write 'key: value', with a space after the ':'",
            )
        ],
    ),
    "key-under-emit-not-indented": (
        """\
        routes:
          - name: a
            on: cluster/event/x-added
            do:
              - emit:
                channel: cluster/event/y-added
        """,
        [
            (
                5,
                "routes[0].do[0].emit: expected a mapping, got nothing (null); 'channel' (line "
                "6) is a key of 'emit:': indent it under 'emit:'",
            ),
            (
                6,
                "routes[0].do[0].channel: unknown key 'channel'; allowed keys: emit; 'channel' "
                "is a key of 'emit:': indent it under 'emit:'",
            ),
        ],
    ),
    "payload-beside-emit": (
        """\
        routes:
          - name: a
            on: cluster/event/x-added
            do:
              - emit:
                  channel: cluster/event/y-added
                payload: {a: 1}
        """,
        [
            (
                7,
                "routes[0].do[0].payload: unknown key 'payload'; allowed keys: emit; 'payload' "
                "is a key of 'emit:': indent it under 'emit:'",
            )
        ],
    ),
    "route-key-in-an-action": (
        """\
        routes:
          - name: a
            on: cluster/event/x-added
            do:
              - emit:
                  channel: cluster/event/y-added
                mode: parallel
        """,
        [
            (
                7,
                "routes[0].do[0].mode: unknown key 'mode'; allowed keys: emit; 'mode' is a key "
                "of a route: outdent it one level, to line up with 'do:'",
            )
        ],
    ),
    "route-key-in-emit": (
        """\
        routes:
          - name: a
            on: cluster/event/x-added
            do:
              - emit:
                  channel: cluster/event/y-added
                  when: payload.x is defined
        """,
        [
            (
                7,
                "routes[0].do[0].emit.when: unknown key 'when'; allowed keys: channel, payload; "
                "'when' is a key of a route: outdent it two levels, to line up with 'do:'",
            )
        ],
    ),
    "action-key-on-the-route": (
        """\
        routes:
          - name: a
            on: cluster/event/x-added
            do:
              - emit:
                  channel: cluster/event/y-added
            channel: cluster/event/z-added
        """,
        [
            (
                7,
                "routes[0].channel: unknown key 'channel'; allowed "
                "keys: name, description, on, when, do, enabled, mode, max, key, debounce, "
                "throttle, retry, schema, runs_on; 'channel' is a key of 'emit:': indent it "
                "under 'emit:' of an action (an item of 'do:')",
            )
        ],
    ),
    "emitt": (
        """\
        routes:
          - name: a
            on: cluster/event/x-added
            do:
              - emitt:
                  channel: cluster/event/y-added
        """,
        [
            (
                5,
                "routes[0].do[0]: an action is a mapping with one of 'run', 'emit', 'task', "
                "'exec'; 'emitt' is not one (did you mean 'emit'?)",
            )
        ],
    ),
    "indented-too-far": (
        """\
        routes:
          - name: a
             on: cluster/event/x-added
        """,
        [
            (
                3,
                "invalid YAML: mapping values are not allowed in this context: a 'key:' "
                "where no key can start; check the indentation of this line against the "
                "lines above, or quote a value that holds ': '",
            )
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(EDITING_MISTAKES))
def test_editing_mistakes_are_reported_at_their_line_with_the_fix(
    case: str, tmp_path: Path
) -> None:
    text, expected = EDITING_MISTAKES[case]
    path = write(tmp_path, "routes.yml", text)
    result = load_routes([tmp_path])
    assert [(d.line, d.message) for d in errors(result)] == expected
    assert all(d.file == str(path) for d in result.diagnostics)
