"""Route test files: validated into frozen RouteTest objects, every problem at once.

The format is described in ``analysis/routetest.py``, which runs the tests.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import voluptuous as vol

from eventrouter.config.validators import (  # route files' validators and wording: both read alike
    FileContext,
    boolean,
    key_path,
    kind,
    report,
    text,
    wrap,
)
from eventrouter.config.yamlload import YamlError, line_of, load_file
from eventrouter.errors import Diagnostic

ANY = object()  # an expected derived event that gives no payload matches any payload
KEYS = {  # allowed keys, by key path without list indexes
    "": ("tests",),
    "tests": ("name", "router", "env", "event", "expect"),
    "tests.router": ("node", "agent", "instance", "leader"),
    "tests.event": ("channel", "payload"),
    "tests.expect": (
        "fire",
        "fire_only",
        "not_fire",
        "nothing",
        "emits",
        "tasks",
        "commands",
        "steps",
        "cut",
        "errors",
    ),
    "tests.expect.emits": ("channel", "payload"),
    "tests.expect.tasks": ("agent", "action", "data"),
}


def _json(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:  # a YAML date, .nan...
        raise ValueError(f"not representable as JSON: {exc}") from exc


def _event_data(value: Any) -> bytes:
    return (value if isinstance(value, str) else json.dumps(_json(value))).encode()


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of names, got {kind(value)}")
    return tuple(text(item) for item in value)


def _argument(value: Any) -> str:
    """One expected argument: a string, or a number or boolean written plainly (as YAML reads)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError(f"expected an argument (a string), got {kind(value)}")


def _commands(value: Any) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of commands, got {kind(value)}")
    found = []
    for item in value:
        if not isinstance(item, list) or not item:
            raise ValueError(
                f"expected each command as a list of arguments ([systemctl, --user, reload, "
                f"x.service]), got {kind(item)}"
            )
        found.append(tuple(_argument(arg) for arg in item))
    return tuple(found)


def _environment(value: Any) -> tuple[tuple[str, str], ...]:
    """``env:`` of a test: what ``env`` holds in templates, as the module's environment would."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of variable names to values, got {kind(value)}")
    found = []
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ValueError(f"{key!r} is not an environment variable name")
        if item is None or isinstance(item, dict | list):
            raise ValueError(f"{key}: expected a value (a string), got {kind(item)}")
        found.append((key, _argument(item)))
    return tuple(found)


EMIT = vol.Schema({vol.Required("channel"): wrap(text), vol.Optional("payload"): wrap(_json)})
TASK = vol.Schema(
    {
        vol.Required("agent"): wrap(text),
        vol.Required("action"): wrap(text),
        vol.Optional("data"): wrap(_json),
    }
)


def _node(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected a node id, got {kind(value)}")
    return str(value)


ROUTER = vol.Schema(
    {
        vol.Optional("node"): wrap(_node),
        vol.Optional("agent"): wrap(text),
        vol.Optional("instance"): wrap(text),
        vol.Optional("leader"): wrap(boolean),
    }
)
TEST_SCHEMA = vol.Schema(
    {
        vol.Required("name"): wrap(text),
        vol.Optional("router"): ROUTER,
        vol.Optional("env"): wrap(_environment),
        vol.Required("event"): {
            vol.Required("channel"): wrap(text),
            vol.Optional("payload", default=""): wrap(_event_data),
        },
        vol.Required("expect"): vol.All(
            {
                **{vol.Optional(k): wrap(_strings) for k in ("fire", "fire_only", "not_fire")},
                vol.Optional("steps"): wrap(_strings),
                vol.Optional("emits"): [EMIT],
                vol.Optional("tasks"): [TASK],
                vol.Optional("commands"): wrap(_commands),
                **{vol.Optional(k): wrap(boolean) for k in ("nothing", "cut", "errors")},
            },
            vol.Length(min=1, msg="give at least one of " + ", ".join(KEYS["tests.expect"])),
        ),
    }
)
FILE_SCHEMA = vol.Schema(
    {vol.Required("tests"): vol.All(list, vol.Length(min=1, msg="expected at least one test"))}
)


@dataclass(frozen=True)
class Expect:
    """The expectations of one test; None where the test does not say."""

    fire: tuple[str, ...] | None = None
    fire_only: tuple[str, ...] | None = None
    not_fire: tuple[str, ...] = ()
    nothing: bool | None = None
    emits: tuple[tuple[str, Any], ...] | None = None  # (channel, payload or ANY)
    tasks: tuple[tuple[str, str, Any], ...] | None = None  # (agent, action, data or ANY)
    commands: tuple[tuple[str, ...], ...] | None = None  # rendered exec argument lists
    steps: tuple[str, ...] | None = None
    cut: bool | None = None
    errors: bool = False


@dataclass(frozen=True)
class RouteTest:
    """One validated test: where it is, its event, and what it expects."""

    file: str
    line: int
    name: str
    channel: str
    data: bytes
    expect: Expect
    #: Where the test decides from (``node``, ``agent``, ``instance``, ``leader``), over the
    #: command line's ``--node``, ``--agent``, ``--leader``.
    router: tuple[tuple[str, Any], ...] = ()
    #: What ``env`` holds in templates for this test (never the shell's environment).
    env: tuple[tuple[str, str], ...] | None = None


def _unknown(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    if close:
        return f"no route or events folder {name!r} (did you mean {close[0]!r}?)"
    if name.startswith("events:"):
        return f"no events folder {name!r} (events folders come from --events-dir)"
    return f"no route or events folder {name!r}"


def _check_names(ctx: FileContext, where: list[Any], known: set[str], seen: set[str]) -> None:
    """Report duplicate test names and unknown route names, even in an invalid test."""
    raw = ctx.data["tests"][where[-1]]
    name = raw.get("name") if isinstance(raw, dict) else None
    if isinstance(name, str):
        if name in seen:
            ctx.error([*where, "name"], f"{key_path([*where, 'name'])}: duplicate test {name!r}")
        seen.add(name)
    expect = raw.get("expect") if isinstance(raw, dict) else None
    if not isinstance(expect, dict):
        return
    if "fire" in expect and "fire_only" in expect:
        path = [*where, "expect", "fire_only"]
        ctx.error(path, f"{key_path(path)}: give either fire or fire_only, not both")
    for key in ("fire", "fire_only", "not_fire"):
        items = expect.get(key)
        for index, item in enumerate(items if isinstance(items, list) else ()):
            if isinstance(item, str) and item not in known:
                path = [*where, "expect", key, index]
                ctx.error(path, f"{key_path(path)}: {_unknown(item, known)}")


def _build(ctx: FileContext, index: int, known: set[str], seen: set[str]) -> RouteTest | None:
    """Validate one test; return it, or None after reporting every problem."""
    where: list[Any] = ["tests", index]
    _check_names(ctx, where, known, seen)
    try:
        valid = TEST_SCHEMA(ctx.data["tests"][index])
    except vol.MultipleInvalid as exc:
        report(ctx, where, exc, KEYS)
        return None
    expect = dict(valid["expect"])
    if "emits" in expect:
        expect["emits"] = tuple((e["channel"], e.get("payload", ANY)) for e in expect["emits"])
    if "tasks" in expect:
        expect["tasks"] = tuple(
            (t["agent"], t["action"], t.get("data", ANY)) for t in expect["tasks"]
        )
    line, event = line_of(ctx.data, where, 1), valid["event"]
    router = tuple(sorted(valid.get("router", {}).items()))
    return RouteTest(
        str(ctx.path),
        line,
        valid["name"],
        event["channel"],
        event["payload"],
        Expect(**expect),
        router,
        valid.get("env"),
    )


def load_tests(path: Path, known: set[str]) -> tuple[list[RouteTest], list[Diagnostic]]:
    """Load one test file; return its tests (none when any error) and every error."""
    try:
        data = load_file(path)
    except YamlError as exc:
        return [], [Diagnostic(str(path), exc.line, "error", exc.message)]
    ctx = FileContext(path, data)
    if not isinstance(data, dict):
        ctx.error([], f"expected a mapping with the key 'tests', got {kind(data)}")
        return [], ctx.diagnostics
    try:
        FILE_SCHEMA(data)
    except vol.MultipleInvalid as exc:
        report(ctx, [], exc, KEYS)
        return [], ctx.diagnostics
    seen: set[str] = set()
    tests = [_build(ctx, index, known, seen) for index in range(len(data["tests"]))]
    ctx.diagnostics.sort(key=lambda d: d.line)
    if ctx.diagnostics:
        return [], ctx.diagnostics
    return [test for test in tests if test is not None], []
