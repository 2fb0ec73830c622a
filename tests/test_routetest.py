"""Tests of route unit tests: the file format, every kind of mismatch, errors, and the CLI."""

from __future__ import annotations

import io
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from eventrouter.analysis import routetest
from eventrouter.analysis.explain import Explainer
from eventrouter.config.loader import load_routes
from tests.routerproc import HERE, run_cli, run_here

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "ns8-cluster"

ROUTES = """\
routes:
  - name: greet
    on: app/event/greeted
    when: payload.who is defined
    do:
      - run: ../handlers/greet
      - emit:
          channel: app/event/welcomed
          payload: {who: "{{ payload.who }}", tags: [a, b], ok: true, meta: {n: 1, m: 2}}
  - name: welcome
    on: app/event/welcomed
    do:
      - run: ../handlers/welcome
  - name: echo
    on: app/event/echo
    do:
      - emit:
          channel: app/event/echoed
          payload: {raw: "{{ raw }}", json: "{{ payload is not none }}"}
  - name: loop
    on: app/event/loop
    do:
      - emit: {channel: app/event/loop}
  - name: broken
    on: app/event/broken
    when: payload.x.y == 1
    do:
      - run: ../handlers/welcome
  - name: bad-emit
    on: app/event/bad
    do:
      - emit: {channel: "app/event/{{ payload.nope }}"}
"""


def make_step(folder: Path, name: str) -> None:
    """Create an executable step ``name`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("#!/bin/sh\nexit 0\n")
    (folder / name).chmod(0o755)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """Return a folder holding routes.d/ (the routes above), handlers/ and events/."""
    make_step(tmp_path / "handlers" / "greet", "10a")
    make_step(tmp_path / "handlers" / "greet", "20b")
    make_step(tmp_path / "handlers" / "welcome", "10w")
    make_step(tmp_path / "events" / "echo", "10log")
    (tmp_path / "routes.d").mkdir()
    (tmp_path / "routes.d" / "10-app.yml").write_text(ROUTES)
    return tmp_path


def one_test(channel: str, expect: str, payload: str | None = None, name: str = "it") -> str:
    """Return a test file with one test (at line 2) of ``channel`` expecting ``expect``."""
    lines = ["tests:", f"  - name: {name}", "    event:", f"      channel: {channel}"]
    if payload is not None:
        lines.append(f"      payload: {payload}")
    lines.append("    expect:")
    lines += ["      " + line for line in textwrap.dedent(expect).strip().splitlines()]
    return "\n".join(lines) + "\n"


def run_text(base: Path, *texts: str, events: bool = True) -> tuple[int, str, list[Path]]:
    """Write each text as a test file, run them in process; return code, output, files."""
    result = load_routes([base / "routes.d"])
    assert result.ok, result.diagnostics
    files = []
    for number, text in enumerate(texts):
        path = base / "routes.d" / "tests" / f"{number:02d}.yml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        files.append(path)
    explainer = Explainer(result.routes, [base / "events"] if events else [])
    out = io.StringIO()
    return routetest.run(files, explainer, out), out.getvalue(), files


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run the CLI with no routes configured by the environment (in process where it can)."""
    return (run_here if args[:1] and args[0] in HERE else run_cli)(*args, cwd=cwd)


PASSING = """\
tests:
  - name: greet fires, runs its steps, then the cascade's
    event:
      channel: app/event/greeted
      payload: {who: ann, extra: [1, 2]}
    expect:
      fire: [greet]
      not_fire: [welcome, echo]
      emits:
        - channel: app/event/welcomed
          payload: {who: ann, meta: {n: 1}}   # a subset, recursively
      steps: [greet/10a, greet/20b, welcome/10w]
      nothing: false
      cut: false
      errors: false
  - name: a false condition runs nothing
    event: {channel: app/event/greeted, payload: {}}
    expect: {nothing: true, steps: [], emits: []}
  - name: a string payload is sent as raw text; an events folder is events:<name>
    event: {channel: app/event/echo, payload: "hello {{ there }}"}
    expect:
      fire_only: [echo, "events:echo"]
      emits: [{channel: app/event/echoed, payload: {raw: "hello {{ there }}", json: false}}]
      steps: [echo/10log]
  - name: a mapping payload is sent as JSON, an absent one as nothing
    event: {channel: app/event/echo, payload: {a: 1}}
    expect:
      emits: [{channel: app/event/echoed, payload: {raw: '{"a": 1}', json: true}}]
  - name: no payload at all
    event: {channel: app/event/echo}
    expect:
      emits: [{channel: app/event/echoed, payload: {raw: "", json: false}}]
  - name: the loop guard cuts the loop; an emit without payload matches any
    event: {channel: app/event/loop}
    expect:
      cut: true
      emits: [{channel: app/event/loop}, {channel: app/event/loop}, {channel: app/event/loop},
              {channel: app/event/loop}, {channel: app/event/loop}, {channel: app/event/loop},
              {channel: app/event/loop}, {channel: app/event/loop}]
  - name: a condition error is expected
    event: {channel: app/event/broken, payload: {}}
    expect: {not_fire: [broken], errors: true}
"""


def test_passing_file_reports_every_test_passed(base: Path) -> None:
    code, output, _ = run_text(base, PASSING)
    assert output == "7 passed, 0 failed\n"
    assert code == 0


# (channel, payload, expect, text the failure must print)
MISMATCHES = [
    (
        "app/event/greeted",
        "{who: ann}",
        "fire: [greet, welcome]",
        "expected routes to fire: [greet, welcome]; fired: [greet]",
    ),
    (
        "app/event/greeted",
        "{who: ann}",
        "fire_only: [echo]",
        "expected only these routes to fire: [echo]; fired: [greet]",
    ),
    (
        "app/event/echo",
        None,
        "fire_only: [echo]",
        "expected only these routes to fire: [echo]; fired: [echo, events:echo]",
    ),
    (
        "app/event/greeted",
        "{who: ann}",
        "not_fire: [echo, greet]",
        "expected routes not to fire: [greet]; fired: [greet]",
    ),
    ("app/event/greeted", "{who: ann}", "nothing: true", "expected nothing to run; fired: [greet]"),
    ("app/event/greeted", "{}", "nothing: false", "expected something to run; fired: []"),
    (
        "app/event/greeted",
        "{who: ann}",
        "emits: [{channel: app/event/welcomed, payload: {who: bob}}]",
        'first difference: event 1: payload.who: expected "bob", got "ann"',
    ),
    (
        "app/event/greeted",
        "{who: ann}",
        "emits: [{channel: app/event/welcomed, payload: {tags: [a]}}]",
        'payload.tags: expected ["a"], got ["a", "b"]',
    ),
    (
        "app/event/greeted",
        "{who: ann}",
        "emits: [{channel: app/event/welcomed, payload: {ok: 1}}]",
        "payload.ok: expected 1, got true",
    ),
    (
        "app/event/greeted",
        "{who: ann}",
        "emits: [{channel: app/event/welcomed, payload: {meta: {x: 1}}}]",
        "payload.meta.x: missing",
    ),
    (
        "app/event/greeted",
        "{who: ann}",
        "emits: [{channel: app/event/welcome}]",
        "event 1: channel: expected app/event/welcome, got app/event/welcomed",
    ),
    (
        "app/event/greeted",
        "{who: ann}",
        "emits: []",
        "expected 0 derived event(s):\n"
        "    emitted 1:\n"
        '      app/event/welcomed {"who": "ann", "tags": ["a", "b"], "ok": true, '
        '"meta": {"n": 1, "m": 2}}',
    ),
    (
        "app/event/greeted",
        "{who: ann}",
        "steps: [greet/20b, greet/10a, welcome/10w]",
        "expected steps: [greet/20b, greet/10a, welcome/10w]\n"
        "    would run: [greet/10a, greet/20b, welcome/10w]",
    ),
    (
        "app/event/greeted",
        "{who: ann}",
        "cut: true",
        "expected a loop-guard cut; there is none",
    ),
    (
        "app/event/loop",
        None,
        "cut: false",
        "expected no loop-guard cut; loop guard: derived-event chain deeper than 8",
    ),
    (
        "app/event/broken",
        "{}",
        "not_fire: [broken]",
        "unexpected error(s):\n      route broken: when:",
    ),
    (
        "app/event/bad",
        "{}",
        "fire: [bad-emit]",
        "unexpected error(s):\n      bad-emit: emit app/event/{{ payload.nope }}: ",
    ),
    ("app/event/greeted", "{who: ann}", "errors: true", "expected an error; there is none"),
]


@pytest.mark.parametrize(("channel", "payload", "expect", "diff"), MISMATCHES)
def test_each_mismatch_fails_with_its_diff(
    base: Path, channel: str, payload: str | None, expect: str, diff: str
) -> None:
    code, output, files = run_text(base, one_test(channel, expect, payload, name="the test"))
    assert output.startswith(f"{files[0]}:2: FAIL the test\n"), output
    assert diff in output
    assert output.endswith("\n0 passed, 1 failed\n")
    assert code == 1


def test_a_failure_does_not_stop_the_next_tests(base: Path) -> None:
    failing = one_test("app/event/greeted", "nothing: true", "{who: ann}")
    code, output, _ = run_text(base, failing, PASSING)
    assert output.count("FAIL") == 1
    assert output.endswith("\n7 passed, 1 failed\n")
    assert code == 1


ERRORS = [
    (one_test("app/event/echo", "fire: [echo]\nfires: [echo]"), 7, "unknown key 'fires'"),
    (
        one_test("app/event/echo", "emits: [{channel: x, payloads: {}}]"),
        6,
        "tests[0].expect.emits[0].payloads: unknown key 'payloads' (did you mean 'payload'?)",
    ),
    (
        "tests:\n  - name: x\n    event: {channel: a, paylod: 1}\n    expect: {nothing: true}\n",
        3,
        "tests[0].event.paylod: unknown key 'paylod'",
    ),
    (
        one_test("app/event/echo", "fire: [echo]\nnot_fire: [welcome, greeet]"),
        7,
        "tests[0].expect.not_fire[1]: no route or events folder 'greeet' (did you mean 'greet'?)",
    ),
    (one_test("app/event/echo", "fire: [nosuch]"), 6, "no route or events folder 'nosuch'"),
    (
        one_test("app/event/echo", "fire: [echo]\nfire_only: [echo]"),
        7,
        "give either fire or fire_only, not both",
    ),
    (one_test("app/event/echo", "{}"), 5, "give at least one of fire, fire_only"),
    (one_test("app/event/echo", "cut: yes"), 6, "expected true or false, got 'yes'"),
    (one_test("app/event/echo", "steps: echo/10log"), 6, "expected a list of names, got a string"),
    (one_test("app/event/echo", "fire: {a: 1}"), 6, "expected a list of names, got a mapping"),
    (one_test("app/event/echo", "cut: true", payload="2024-01-01"), 5, "not representable as"),
    ("tests:\n  - name: x\n    event: {channel: a}\n", 2, "missing required key 'expect'"),
    ("test: []\n", 1, "unknown key 'test' (did you mean 'tests'?)"),
    ("tests: []\n", 1, "expected at least one test"),
    ("- a\n", 1, "expected a mapping with the key 'tests', got a list"),
    ("tests: [\n", 2, "invalid YAML"),
    (
        one_test("app/event/echo", "cut: false") + one_test("a", "cut: false")[7:],
        7,
        "tests[1].name: duplicate test 'it'",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), ERRORS)
def test_invalid_test_file_is_an_error_with_file_and_line(
    base: Path, text: str, line: int, message: str
) -> None:
    code, output, files = run_text(base, text, PASSING)
    found = [row for row in output.splitlines() if message in row]
    assert found, output
    assert found[0].startswith(f"{files[0]}:{line}: error: "), found[0]
    # The invalid file runs no test; the next file still runs.
    errors = len(re.findall(r": error: ", output))
    assert output.endswith(f"\n7 passed, 0 failed, {errors} error{'s' * (errors > 1)}\n"), output
    assert code == 1


def test_events_folder_names_need_an_events_dir(base: Path) -> None:
    text = one_test("app/event/echo", 'fire: ["events:echo"]')
    code, output, files = run_text(base, text, events=False)
    assert f"{files[0]}:6: error: " in output
    assert "no events folder 'events:echo' (events folders come from --events-dir)" in output
    assert code == 1


def test_default_files_are_the_yaml_files_of_each_tests_folder_byte_wise(tmp_path: Path) -> None:
    first, second, bare = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for name in ("b.yml", "B.yaml", "a.yml", "notes.txt", ".hidden.yml"):
        (first / "tests").mkdir(parents=True, exist_ok=True)
        (first / "tests" / name).write_text("")
    (first / "tests" / "sub.yml").mkdir()
    (second / "tests").mkdir(parents=True)
    (second / "tests" / "z.yml").write_text("")
    bare.mkdir()
    found = routetest.default_files([second, bare, first])
    assert found == [
        second / "tests" / "z.yml",
        first / "tests" / "B.yaml",
        first / "tests" / "a.yml",
        first / "tests" / "b.yml",
    ]


def test_route_loading_ignores_the_tests_subfolder(base: Path) -> None:
    (base / "routes.d" / "tests").mkdir()
    (base / "routes.d" / "tests" / "t.yml").write_text(PASSING)
    result = load_routes([base / "routes.d"])
    assert result.diagnostics == ()
    assert [route.name for route in result.routes] == [
        "greet",
        "welcome",
        "echo",
        "loop",
        "broken",
        "bad-emit",
    ]


def test_cli_exit_status_and_default_files(base: Path) -> None:
    routes, events = str(base / "routes.d"), str(base / "events")
    nothing = cli("test", "--routes", routes, "--events-dir", events)
    assert nothing.returncode == 1
    assert f"no route test files in {routes}/tests" in nothing.stdout

    (base / "routes.d" / "tests").mkdir()
    (base / "routes.d" / "tests" / "10-pass.yml").write_text(PASSING)
    passing = cli("test", "--routes", routes, "--events-dir", events)
    assert passing.stdout.splitlines()[-1] == "7 passed, 0 failed"
    assert passing.returncode == 0

    failing_file = base / "routes.d" / "tests" / "20-fail.yml"
    failing_file.write_text(one_test("app/event/greeted", "nothing: true", "{who: ann}"))
    failing = cli("test", "--routes", routes, "--events-dir", events)
    assert f"{failing_file}:2: FAIL it" in failing.stdout
    assert failing.stdout.splitlines()[-1] == "7 passed, 1 failed"
    assert failing.returncode == 1

    invalid = base / "invalid.yml"
    invalid.write_text(one_test("app/event/echo", "fire: [nosuch]"))
    explicit = cli("test", "--routes", routes, str(invalid))
    assert f"{invalid}:6: error: " in explicit.stdout
    assert explicit.stdout.splitlines()[-1] == "0 passed, 0 failed, 1 error"
    assert explicit.returncode == 1


def test_shipped_example_tests_pass_through_the_cli() -> None:
    result = cli(
        "test",
        "--routes",
        "examples/ns8-cluster/routes.d",
        "--events-dir",
        "examples/ns8-cluster/events",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.splitlines()[-1]
    found = re.fullmatch(r"(\d+) passed, 0 failed", last)
    assert found, result.stdout
    assert int(found.group(1)) >= 2 * 8  # at least two cases for each route and events folder


def test_shipped_example_tests_cover_every_route_both_ways() -> None:
    routes = load_routes([EXAMPLE / "routes.d"])
    assert routes.ok, routes.diagnostics
    explainer = Explainer(routes.routes, [EXAMPLE / "events"])
    names = routetest.known_names(explainer)
    fires: set[str] = set()
    not_fires: set[str] = set()
    for path in routetest.default_files([EXAMPLE / "routes.d"]):
        tests, diagnostics = routetest.load_tests(path, names)
        assert diagnostics == [], diagnostics
        for test in tests:
            fires.update(test.expect.fire or test.expect.fire_only or ())
            not_fires.update(test.expect.not_fire)
    assert len(names) == 8  # six routes, two events folders
    assert fires == names
    assert not_fires == names


def test_the_summary_counts_the_tests_in_error() -> None:
    # Without --events-dir the example tests that name events:<folder> are errors: the last
    # line must not read as if every test had passed.
    result = cli("test", "--routes", "examples/ns8-cluster/routes.d")
    assert result.returncode == 1
    errors = [row for row in result.stdout.splitlines() if ": error: " in row]
    assert errors, result.stdout
    last = result.stdout.splitlines()[-1]
    assert re.fullmatch(rf"\d+ passed, 0 failed, {len(errors)} errors", last), result.stdout


def test_no_test_files_names_the_folders_searched(tmp_path: Path) -> None:
    (tmp_path / "routes.d").mkdir()
    result = cli("test", "--routes", str(tmp_path / "routes.d"))
    assert result.returncode == 1
    assert f"no route test files in {tmp_path / 'routes.d' / 'tests'}" in result.stdout
