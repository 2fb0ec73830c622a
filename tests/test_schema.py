"""The JSON Schemas for editors (`eventrouter schema`) and their agreement with the loader.

The schema and the loader must give the same verdict on every route file and route test file
of the repository and on a set of broken ones; what a schema cannot express (cross-file
checks, template syntax, handler folders) is listed here, so that each such case is one the
loader refuses and the schema, as its description says, leaves to `check`.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from eventrouter.config import execs, routefile, testfile
from eventrouter.config.editor_schema import FILES, schema_path, schema_text
from eventrouter.config.layout import ROUTE_LAYOUT, Layout
from eventrouter.config.loader import load_routes, route_files
from eventrouter.config.payloads import TYPE_NAMES, WELL_KNOWN
from eventrouter.config.testfile import KEYS as TEST_LAYOUT
from eventrouter.config.testfile import load_tests
from eventrouter.config.yamlload import YamlError, loads
from eventrouter.model import (
    AGENT_ID,
    MODES,
    ROUTE_NAME,
    SAFE_NAME,
    SCHEMA_CHECKS,
    SOURCES,
    TASK_ACTION,
)
from tests.routerproc import REPO, handler, run_here

SCHEMAS = {kind: json.loads(schema_text(kind)) for kind in FILES}
MODELINE = re.compile(r"^#\s+yaml-language-server\s*:\s*\$schema=(\S+)\s*$", re.MULTILINE)


def _repo_files() -> Iterator[tuple[str, Path]]:
    """Yield every route file and route test file the repository ships, with its kind."""
    listed = subprocess.run(
        ["git", "ls-files", "*.yml", "*.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        path = REPO / name
        if path.parent.name == "routes.d":
            yield "routes", path
        elif path.parent.name == "tests" and path.parent.parent.name == "routes.d":
            yield "tests", path


REPO_FILES = sorted(_repo_files())


def _json(value: Any) -> Any:
    """Return YAML data as an editor's language server sees it: JSON, keys as text."""
    if isinstance(value, dict):
        return {str(key): _json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json(item) for item in value]
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def schema_accepts(kind: str, text: str) -> bool:
    """Return whether the JSON Schema of ``kind`` accepts a file's text."""
    try:
        data = loads(text)
    except YamlError:
        return False  # an editor underlines invalid YAML whatever the schema
    validator = jsonschema.Draft7Validator(SCHEMAS[kind])
    return not list(validator.iter_errors(_json(data)))


def loader_accepts(kind: str, path: Path, known: set[str] | None = None) -> bool:
    """Return whether the loader accepts the file at ``path`` (alone in its folder)."""
    if kind == "tests":
        _, diagnostics = load_tests(path, known or set())
        return not diagnostics
    return load_routes([path.parent]).ok


def _known(routes: Path) -> set[str]:
    names = {route.name for route in load_routes([routes]).routes}
    events = routes.parent / "events"
    return (
        names | {f"events:{folder.name}" for folder in events.iterdir()}
        if events.is_dir()
        else names
    )


# --- what ships ------------------------------------------------------------------------------


def test_the_repository_has_route_files_and_test_files() -> None:
    kinds = [kind for kind, _ in REPO_FILES]
    assert kinds.count("routes") >= 5 and kinds.count("tests") >= 5, REPO_FILES


@pytest.mark.parametrize(("kind", "path"), REPO_FILES, ids=str)
def test_every_shipped_file_agrees_with_both(kind: str, path: Path) -> None:
    text = path.read_text()
    assert schema_accepts(kind, text), path
    known = _known(path.parent.parent) if kind == "tests" else None
    assert loader_accepts(kind, path, known), path
    # ... and names the schema file of its kind for editors, on its first line, where the
    # YAML language server reads it
    [target] = MODELINE.findall(text.partition("\n")[0])
    assert (path.parent / target).resolve() == schema_path(kind).resolve()


def test_the_shipped_routes_are_all_route_files() -> None:
    shipped = {path for kind, path in REPO_FILES if kind == "routes"}
    for folder in {path.parent for path in shipped}:
        assert set(route_files(folder)) <= shipped


@pytest.mark.parametrize("kind", sorted(FILES))
def test_the_schemas_are_valid_draft_7(kind: str) -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMAS[kind])


def _keyed(node: Any, where: str = "") -> Iterator[tuple[str, str, Any]]:
    """Yield every key a schema documents (its place, name and schema), recursively."""
    if isinstance(node, dict):
        for name, child in node.get("properties", {}).items():
            yield where, name, child
        for key, child in node.items():
            if key not in ("dependencies", "not"):  # conditions on keys, not keys
                yield from _keyed(child, f"{where}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _keyed(child, f"{where}/{index}")


@pytest.mark.parametrize("kind", sorted(FILES))
def test_every_key_has_a_description_and_an_example(kind: str) -> None:
    found = list(_keyed(SCHEMAS[kind]))
    assert len(found) > 10
    missing = [f"{where}: {name}" for where, name, child in found if not child.get("description")]
    assert missing == []
    missing = [f"{where}: {name}" for where, name, child in found if not child.get("examples")]
    assert missing == []
    # an example of a key is valid for that key, so the documentation cannot mislead
    root = SCHEMAS[kind]
    for where, name, child in found:
        resolver = {**child, "definitions": root.get("definitions", {})}
        for example in child["examples"]:
            assert not list(jsonschema.Draft7Validator(resolver).iter_errors(example)), (
                where,
                name,
                example,
            )


def _resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["definitions"][node["$ref"].rpartition("/")[2]]
    return node


def _branches(root: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the mappings a schema node stands for: through $ref, list items and oneOf."""
    node = _resolve(root, node)
    node = _resolve(root, node.get("items", node))
    return [_resolve(root, branch) for branch in node.get("oneOf", [node])]


def _keys_at(root: dict[str, Any], place: str) -> set[str]:
    """Return the keys the schema allows at a place of a layout (``routes.do``)."""
    nodes = [root]
    for part in place.split(".") if place else []:
        following = []
        for branch in (b for node in nodes for b in _branches(root, node)):
            child = branch.get("additionalProperties") if part == "*" else None
            child = child or branch.get("properties", {}).get(part)
            if isinstance(child, dict):
                following.append(child)
        nodes = following
    return {key for node in nodes for b in _branches(root, node) for key in b.get("properties", {})}


@pytest.mark.parametrize(("kind", "layout"), [("routes", ROUTE_LAYOUT), ("tests", TEST_LAYOUT)])
def test_the_schema_allows_the_keys_the_loader_allows_where_it_allows_them(
    kind: str, layout: Layout
) -> None:
    for place, keys in layout.items():
        assert _keys_at(SCHEMAS[kind], place) == set(keys), place


def _keys(schema: Any) -> set[str]:
    return {str(getattr(key, "schema", key)) for key in schema.schema}


def _inner(schema: Any, key: str) -> Any:
    return next(value for marker, value in schema.schema.items() if marker == key)


def test_the_layout_holds_the_keys_the_loader_validates() -> None:
    assert _keys(routefile.FILE_SCHEMA) == set(ROUTE_LAYOUT[""])
    assert _keys(routefile.ROUTE_SCHEMA) == set(ROUTE_LAYOUT["routes"])
    actions = (routefile.RUN_SCHEMA, routefile.EMIT_SCHEMA, routefile.TASK_SCHEMA)
    # exec: is validated by config/execs.py: its list form has no keys, its mapping form these
    assert set().union(*map(_keys, actions)) | {"exec"} == set(ROUTE_LAYOUT["routes.do"])
    assert _keys(execs.EXEC_SCHEMA) == set(ROUTE_LAYOUT["routes.do.exec"])
    assert _keys(_inner(routefile.EMIT_SCHEMA, "emit")) == set(ROUTE_LAYOUT["routes.do.emit"])
    assert _keys(_inner(routefile.TASK_SCHEMA, "task")) == set(ROUTE_LAYOUT["routes.do.task"])
    assert _keys(routefile.RETRY_SCHEMA) == set(ROUTE_LAYOUT["routes.retry"])
    assert _keys(routefile.EVENT_SCHEMA) == set(ROUTE_LAYOUT["schemas.*"])
    assert _keys(testfile.TEST_SCHEMA) == set(TEST_LAYOUT["tests"])
    assert _keys(testfile.ROUTER) == set(TEST_LAYOUT["tests.router"])
    assert _keys(testfile.EMIT) == set(TEST_LAYOUT["tests.expect.emits"])
    assert _keys(testfile.TASK) == set(TEST_LAYOUT["tests.expect.tasks"])


def test_the_schema_names_the_loaders_values() -> None:
    definitions = SCHEMAS["routes"]["definitions"]
    route = definitions["route"]["properties"]
    assert route["mode"]["enum"] == list(MODES)
    assert route["schema"]["enum"] == list(SCHEMA_CHECKS)
    assert route["name"]["pattern"] == f"^{ROUTE_NAME.pattern}$"
    events = SCHEMAS["routes"]["properties"]["schemas"]["propertyNames"]
    assert events["pattern"] == f"^{SAFE_NAME.pattern}$"
    assert events["not"]["enum"] == sorted(WELL_KNOWN)
    assert definitions["eventSchema"]["properties"]["source"]["enum"] == list(SOURCES)
    assert definitions["fieldType"]["anyOf"][0]["enum"] == list(TYPE_NAMES)
    task = definitions["taskAction"]["properties"]["task"]["properties"]
    assert task["agent"]["anyOf"][0]["pattern"] == f"^({AGENT_ID.pattern})$"
    assert task["action"]["pattern"] == f"^{TASK_ACTION.pattern}$"


@pytest.mark.parametrize("kind", sorted(FILES))
def test_the_description_says_what_only_check_can_tell(kind: str) -> None:
    description = SCHEMAS[kind]["description"]
    assert "cannot express" in description
    assert "`eventrouter check`" in description or "`eventrouter test`" in description


# --- the agreement on files that are not right --------------------------------------------

ROUTE = "routes:\n  - name: r\n    on: x/event/happened\n    do:\n      - run: h\n"

#: Route files both must accept: each is a variation of one that is.
GOOD_ROUTES = {
    "empty": "",
    "comments only": "# nothing yet\n",
    "empty mapping": "{}\n",
    "no routes": "routes: []\n",
    "minimal": ROUTE,
    "every route key": ROUTE
    + "    description: d\n    when: payload.x is defined\n    enabled: false\n"
    "    mode: parallel\n    max: 3\n    key: '{{ payload.k }}'\n    debounce: 500ms\n"
    "    retry: {attempts: 2, backoff: 1s, max_backoff: 1m}\n    schema: strict\n"
    "    runs_on: leader\n",
    "pattern list": ROUTE.replace("on: x/event/happened", "on: [x/event/a, 'y/{m}/event/*']"),
    "runs_on a node number": ROUTE + "    runs_on: 2\n",
    "runs_on a template": ROUTE + "    runs_on: '{{ payload.node }}'\n",
    "throttle as seconds": ROUTE + "    throttle: 30\n",
    "run with timeout and env": ROUTE + "        timeout: 2m\n        env: {A_B: x, N: 1}\n",
    "emit": ROUTE.replace("- run: h", "- emit: {channel: x/event/y, payload: [1, {a: b}]}"),
    "emit without payload": ROUTE.replace("- run: h", "- emit: {channel: x/event/y}"),
    "task": ROUTE.replace(
        "- run: h",
        "- task: {agent: module/mail1, action: reload, data: {a: 1}, extra: {title: t},"
        " timeout: 1h, wait: false}",
    ),
    "task agent template": ROUTE.replace(
        "- run: h", "- task: {agent: 'module/{{ match.m }}', action: reload}"
    ),
    "exec list": ROUTE.replace("- run: h", "- exec: [systemctl, --user, reload, '{{ match.m }}']"),
    "exec mapping": ROUTE.replace(
        "- run: h", "- exec: {command: [/bin/true, '{{ payload.x }}'], timeout: 30s, env: {A: b}}"
    ),
    "event schemas": "schemas:\n  thing-happened:\n    description: d\n    source: module\n"
    "    fields: {size: integer, 'label?': string, tags: [string]}\n",
}

#: Route files both must refuse.
BAD_ROUTES = {
    "a list": "- a\n- b\n",
    "a string": "just words\n",
    "unknown top-level key": "routes: []\nextra: 1\n",
    "routes not a list": "routes: {a: 1}\n",
    "routes null": "routes:\n",
    "route not a mapping": "routes:\n  - just a string\n",
    "missing name": ROUTE.replace("  - name: r\n    on:", "  - on:"),
    "upper-case name": ROUTE.replace("name: r", "name: Route"),
    "missing on": ROUTE.replace("    on: x/event/happened\n", ""),
    "empty pattern list": ROUTE.replace("on: x/event/happened", "on: []"),
    "empty pattern": ROUTE.replace("on: x/event/happened", "on: ''"),
    "number pattern": ROUTE.replace("on: x/event/happened", "on: 5"),
    "missing do": "routes:\n  - name: r\n    on: x/event/a\n",
    "empty do": "routes:\n  - name: r\n    on: x/event/a\n    do: []\n",
    "do not a list": "routes:\n  - name: r\n    on: x/event/a\n    do: x\n",
    "unknown route key": ROUTE + "    whne: x\n",
    "when in braces": ROUTE + "    when: '{{ payload.x }}'\n",
    "when not text": ROUTE + "    when: true\n",
    "description a list": ROUTE + "    description: [a]\n",
    "enabled yes": ROUTE + "    enabled: yes\n",
    "unknown mode": ROUTE + "    mode: sometimes\n",
    "max without parallel": ROUTE + "    max: 3\n",
    "max zero": ROUTE + "    mode: parallel\n    max: 0\n",
    "max true": ROUTE + "    mode: parallel\n    max: true\n",
    "key true": ROUTE + "    key: true\n",
    "debounce and throttle": ROUTE + "    debounce: 1s\n    throttle: 1s\n",
    "debounce zero": ROUTE + "    debounce: 0s\n",
    "debounce words": ROUTE + "    debounce: soon\n",
    "debounce negative": ROUTE + "    debounce: -1\n",
    "debounce over a day": ROUTE + "    debounce: 86401\n",
    "retry without attempts": ROUTE + "    retry: {backoff: 1s}\n",
    "retry zero attempts": ROUTE + "    retry: {attempts: 0}\n",
    "retry unknown key": ROUTE + "    retry: {attempts: 1, tries: 2}\n",
    "unknown schema check": ROUTE + "    schema: lax\n",
    "runs_on a place": ROUTE + "    runs_on: somewhere\n",
    "runs_on negative": ROUTE + "    runs_on: -1\n",
    "runs_on true": ROUTE + "    runs_on: true\n",
    "action without a kind": ROUTE.replace("- run: h", "- emitt: {channel: x}"),
    "action of two kinds": ROUTE.replace("- run: h", "- {run: h, emit: {channel: x}}"),
    "action a string": ROUTE.replace("- run: h", "- h"),
    "run not text": ROUTE.replace("- run: h", "- run: [h]"),
    "run unknown key": ROUTE + "        timout: 3s\n",
    "run timeout words": ROUTE + "        timeout: soon\n",
    "run env not a mapping": ROUTE + "        env: [A]\n",
    "run env bad name": ROUTE + "        env: {A-B: x}\n",
    "run env value true": ROUTE + "        env: {A: true}\n",
    "run env value null": ROUTE + "        env: {A: null}\n",
    "emit null": ROUTE.replace("- run: h", "- emit:"),
    "emit without channel": ROUTE.replace("- run: h", "- emit: {payload: {}}"),
    "emit channel true": ROUTE.replace("- run: h", "- emit: {channel: true}"),
    "emit unknown key": ROUTE.replace("- run: h", "- emit: {channel: x, chanel: y}"),
    "emit key beside it": ROUTE.replace("- run: h", "- {emit: {channel: x}, payload: {}}"),
    "task without action": ROUTE.replace("- run: h", "- task: {agent: cluster}"),
    "task agent not an id": ROUTE.replace("- run: h", "- task: {agent: mail1, action: a}"),
    "task action upper-case": ROUTE.replace("- run: h", "- task: {agent: cluster, action: A}"),
    "task wait yes": ROUTE.replace("- run: h", "- task: {agent: cluster, action: a, wait: yes}"),
    "exec empty list": ROUTE.replace("- run: h", "- exec: []"),
    "exec a string": ROUTE.replace("- run: h", "- exec: systemctl reload x"),
    "exec mapping without command": ROUTE.replace("- run: h", "- exec: {timeout: 30s}"),
    "exec mapping unknown key": ROUTE.replace("- run: h", "- exec: {command: [a], wait: 1}"),
    "exec option beside it": ROUTE.replace("- run: h", "- {exec: [a], timeout: 30s}"),
    "exec and run in one item": ROUTE.replace("- run: h", "- {exec: [a], run: h}"),
    "schemas a list": "schemas: [a]\n",
    "schema of a well-known event": "schemas:\n  module-added:\n    fields: {a: string}\n",
    "schema with a bad name": "schemas:\n  'a b':\n    fields: {a: string}\n",
    "schema without fields": "schemas:\n  thing-happened:\n    source: module\n",
    "schema unknown source": "schemas:\n  thing-happened:\n    source: planet\n    fields: {}\n",
    "schema unknown type": "schemas:\n  thing-happened:\n    fields: {a: text}\n",
    "schema list of two types": "schemas:\n  thing-happened:\n    fields: {a: [string, integer]}\n",
    "schema field named ?": "schemas:\n  thing-happened:\n    fields: {'?': string}\n",
    "schema unknown key": "schemas:\n  thing-happened:\n    fields: {}\n    colour: red\n",
}

#: Route files only the loader refuses: what a schema cannot express (see its description).
BEYOND_THE_SCHEMA = {
    "duplicate route names": ROUTE + ROUTE.replace("routes:\n", ""),
    "handler folder missing": ROUTE.replace("run: h", "run: missing"),
    "pattern syntax": ROUTE.replace("on: x/event/happened", "on: 'x/{m/event/y'"),
    "condition syntax": ROUTE + "    when: 'payload.x =='\n",
    "unknown filter": ROUTE + "    when: payload.x | lowr\n",
    "template syntax": ROUTE.replace("- run: h", "- emit: {channel: '{{ payload.x'}"),
    "duration over a day, as text": ROUTE + "    debounce: 25h\n",
    "runs_on template syntax": ROUTE + "    runs_on: '{{ payload.node'\n",
    "exec program a template": ROUTE.replace("- run: h", "- exec: ['{{ payload.cmd }}', x]"),
}


def _route_file(folder: Path, text: str) -> Path:
    handler(folder / "routes" / "h")
    path = folder / "routes" / "r.yml"
    path.write_text(textwrap.dedent(text))
    return path


def _verdicts(kind: str, path: Path, known: set[str] | None = None) -> tuple[bool, bool]:
    return schema_accepts(kind, path.read_text()), loader_accepts(kind, path, known)


@pytest.mark.parametrize("case", sorted(GOOD_ROUTES))
def test_both_accept_good_route_files(case: str, tmp_path: Path) -> None:
    path = _route_file(tmp_path, GOOD_ROUTES[case])
    assert _verdicts("routes", path) == (True, True)


@pytest.mark.parametrize("case", sorted(BAD_ROUTES))
def test_both_refuse_broken_route_files(case: str, tmp_path: Path) -> None:
    path = _route_file(tmp_path, BAD_ROUTES[case])
    assert _verdicts("routes", path) == (False, False)


@pytest.mark.parametrize("case", sorted(BEYOND_THE_SCHEMA))
def test_what_the_schema_cannot_express_only_the_loader_refuses(case: str, tmp_path: Path) -> None:
    path = _route_file(tmp_path, BEYOND_THE_SCHEMA[case])
    assert _verdicts("routes", path) == (True, False)


TEST = (
    "tests:\n  - name: t\n    event:\n      channel: x/event/happened\n"
    "      payload: {a: 1}\n    expect:\n      fire: [r]\n"
)
GOOD_TESTS = {
    "minimal": TEST,
    "every key": TEST.replace("      fire: [r]\n", "")
    + "      fire_only: [r]\n      not_fire: [s]\n      nothing: false\n"
    "      emits: [{channel: x/event/y, payload: {a: 1}}, {channel: x/event/z}]\n"
    "      tasks: [{agent: cluster, action: a, data: {}}, {agent: cluster, action: b}]\n"
    "      steps: [h/10step]\n      cut: false\n      errors: false\n"
    "    router: {node: 2, agent: node/2, instance: n2, leader: false}\n",
    "string payload": TEST.replace("payload: {a: 1}", "payload: cluster/acls"),
    "node as text": TEST + "    router: {node: '2'}\n",
}
BAD_TESTS = {
    "empty": "",
    "a list": "- a\n",
    "no tests": "{}\n",
    "tests empty": "tests: []\n",
    "unknown top-level key": TEST + "extra: 1\n",
    "test not a mapping": "tests:\n  - t\n",
    "missing name": TEST.replace("  - name: t\n    event:", "  - event:"),
    "missing event": "tests:\n  - name: t\n    expect: {nothing: true}\n",
    "missing channel": TEST.replace("      channel: x/event/happened\n", ""),
    "unknown event key": TEST.replace("payload: {a: 1}", "payload: {a: 1}\n      source: x"),
    "missing expect": "tests:\n  - name: t\n    event: {channel: x/event/y}\n",
    "expect empty": TEST.replace("      fire: [r]\n", "      {}\n").replace("expect:\n", "expect:"),
    "fire and fire_only": TEST + "      fire_only: [r]\n",
    "fire not a list": TEST.replace("fire: [r]", "fire: r"),
    "fire of numbers": TEST.replace("fire: [r]", "fire: [1]"),
    "nothing yes": TEST + "      nothing: yes\n",
    "unknown expect key": TEST + "      fires: [r]\n",
    "emit without channel": TEST + "      emits: [{payload: {}}]\n",
    "emit unknown key": TEST + "      emits: [{channel: x, chanel: y}]\n",
    "task without action": TEST + "      tasks: [{agent: cluster}]\n",
    "router node true": TEST + "    router: {node: true}\n",
    "router leader no": TEST + "    router: {leader: no}\n",
    "router unknown key": TEST + "    router: {nod: 1}\n",
    "payload key beside event": TEST.replace("      payload: {a: 1}\n", "    payload: {a: 1}\n"),
}
BEYOND_THE_TEST_SCHEMA = {
    "duplicate test names": TEST + TEST.replace("tests:\n", ""),
    "unknown route name": TEST.replace("fire: [r]", "fire: [nope]"),
}


def _test_file(folder: Path, text: str) -> Path:
    path = folder / "t.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(GOOD_TESTS))
def test_both_accept_good_test_files(case: str, tmp_path: Path) -> None:
    path = _test_file(tmp_path, GOOD_TESTS[case])
    assert _verdicts("tests", path, {"r", "s"}) == (True, True)


@pytest.mark.parametrize("case", sorted(BAD_TESTS))
def test_both_refuse_broken_test_files(case: str, tmp_path: Path) -> None:
    path = _test_file(tmp_path, BAD_TESTS[case])
    assert _verdicts("tests", path, {"r", "s"}) == (False, False)


@pytest.mark.parametrize("case", sorted(BEYOND_THE_TEST_SCHEMA))
def test_what_the_test_schema_cannot_express_only_the_loader_refuses(
    case: str, tmp_path: Path
) -> None:
    path = _test_file(tmp_path, BEYOND_THE_TEST_SCHEMA[case])
    assert _verdicts("tests", path, {"r", "s"}) == (True, False)


# --- the command -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FILES))
def test_the_command_prints_the_schema_of_each_kind(kind: str) -> None:
    done = run_here("schema", kind)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == SCHEMAS[kind]
    done = run_here("schema", kind, "--path")
    assert Path(done.stdout.strip()) == schema_path(kind)


def test_the_command_prints_the_route_file_schema_by_default() -> None:
    done = run_here("schema")
    assert json.loads(done.stdout)["title"] == "eventrouter route file"
    done = run_here("schema", "other")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
