"""The route file's schema: voluptuous turns a route file's YAML into ``Route`` objects.

All of voluptuous's use for route files lives here (the validators of single values are in
``routefields``). Every problem is reported as a ``Diagnostic`` with file and line, all of
them at once; a file with errors gives no routes. Reading files and folders, and the trust
of what they name, is ``loader``'s.
"""

from __future__ import annotations

import difflib
import os
from functools import partial
from pathlib import Path
from typing import Any

import voluptuous as vol

from eventrouter.config.execs import build_exec, env_entries
from eventrouter.config.layout import ACTION_KEYS, FILE_KEYS, ROUTE_LAYOUT, action_kind_problem
from eventrouter.config.payloads import EventSpec, declared_spec
from eventrouter.config.routefields import (
    agent_id,
    channel_patterns,
    condition,
    event_fields,
    event_name,
    route_name,
    runs_on,
    task_action,
    text_template,
    value_template,
)
from eventrouter.config.validators import (
    FileContext,
    boolean,
    count,
    key_path,
    kind,
    mapping,
    parse_delay,
    parse_duration,
    plain_key,
    report,
    text,
    wrap,
)
from eventrouter.config.valuetemplates import Value
from eventrouter.config.yamlload import YamlError, line_of, loads
from eventrouter.errors import Diagnostic
from eventrouter.model import (
    MODES,
    SCHEMA_CHECKS,
    SOURCES,
    EmitAction,
    RetryPolicy,
    Route,
    RunAction,
    TaskAction,
)

#: Runs at once per key in ``parallel`` mode when ``max`` is not given.
DEFAULT_PARALLEL_MAX = 10
#: ``task:`` waits this long for the exit code when it sets no ``timeout``.
DEFAULT_TASK_TIMEOUT = 3600.0
NOT_A_ROUTE_FILE = (
    "not a route file: a mapping with {count} key(s) but neither 'routes' nor 'schemas' "
    "(its keys are not shown)"
)


RETRY_SCHEMA = vol.Schema(
    {
        vol.Required("attempts"): wrap(count),
        vol.Optional("backoff"): wrap(parse_delay),
        vol.Optional("max_backoff"): wrap(parse_delay),
    }
)
RUN_SCHEMA = vol.Schema(
    {
        vol.Required("run"): wrap(text),
        vol.Optional("timeout"): wrap(parse_duration),
        vol.Optional("env"): wrap(mapping),
    }
)
EMIT_SCHEMA = vol.Schema(
    {
        vol.Required("emit"): vol.Schema(
            {
                vol.Required("channel"): wrap(text_template),
                vol.Optional("payload"): wrap(partial(value_template, what="payload")),
            }
        )
    }
)
TASK_SCHEMA = vol.Schema(
    {
        vol.Required("task"): vol.Schema(
            {
                vol.Required("agent"): wrap(agent_id),
                vol.Required("action"): wrap(task_action),
                vol.Optional("data"): wrap(partial(value_template, what="data")),
                vol.Optional("extra"): wrap(partial(value_template, what="extra")),
                vol.Optional("timeout"): wrap(parse_duration),
                vol.Optional("wait"): wrap(boolean),
            }
        )
    }
)
ROUTE_SCHEMA = vol.Schema(
    {
        vol.Optional("runs_on"): wrap(runs_on),
        vol.Required("name"): wrap(route_name),
        vol.Optional("description"): wrap(text),
        vol.Required("on"): wrap(channel_patterns),
        vol.Optional("when"): wrap(condition),
        vol.Required("do"): list,
        vol.Optional("enabled"): wrap(boolean),
        vol.Optional("mode"): vol.In(MODES, msg=f"mode must be one of: {', '.join(MODES)}"),
        vol.Optional("max"): wrap(count),
        vol.Optional("key"): wrap(text_template),
        vol.Optional("debounce"): wrap(parse_delay),
        vol.Optional("throttle"): wrap(parse_delay),
        vol.Optional("retry"): RETRY_SCHEMA,
        vol.Optional("schema"): vol.In(
            SCHEMA_CHECKS,
            msg="schema must be 'strict' (reject events that do not fit) or 'off'",
        ),
    }
)
FILE_SCHEMA = vol.Schema({vol.Optional("routes"): list, vol.Optional("schemas"): dict})

EVENT_SCHEMA = vol.Schema(
    {
        vol.Optional("description"): wrap(text),
        vol.Optional("source"): vol.In(SOURCES, msg=f"source must be one of: {', '.join(SOURCES)}"),
        vol.Required("fields"): wrap(event_fields),
    }
)


def _build_action(ctx: FileContext, where: list[Any], raw: Any) -> Any:
    """Validate one item of ``do``; return a RunAction/EmitAction or None after reporting."""
    line = line_of(ctx.data, where, 1)
    kinds = [k for k in ("run", "emit", "task", "exec") if isinstance(raw, dict) and k in raw]
    if len(kinds) != 1:
        problem = action_kind_problem(raw)
        what = "one of 'run', 'emit', 'task', 'exec'"
        ctx.error(where, f"{key_path(where)}: an action is a mapping with {what}{problem}")
        return None
    if kinds[0] == "exec":
        return build_exec(ctx, where, raw, line)
    schema = {"run": RUN_SCHEMA, "emit": EMIT_SCHEMA, "task": TASK_SCHEMA}[kinds[0]]
    try:
        valid = schema(raw)
    except vol.MultipleInvalid as exc:
        report(ctx, where, exc, {**ROUTE_LAYOUT, "routes.do": ACTION_KEYS[kinds[0]]})
        return None
    if "task" in valid:
        return _task(valid["task"], line)
    if "emit" in valid:
        emit = valid["emit"]
        return EmitAction(emit["channel"], emit.get("payload") or Value({}), line)
    path = Path(os.path.expanduser(valid["run"]))
    if not path.is_absolute():
        path = Path(os.path.normpath(ctx.path.parent / path))
    if not path.is_dir():
        problem = "does not exist" if not path.exists() else "is not a directory"
        ctx.error([*where, "run"], f"{key_path([*where, 'run'])}: handler folder {path} {problem}")
        return None
    env = env_entries(ctx, [*where, "env"], valid.get("env", {}))
    if env is None:
        return None
    return RunAction(path, line, valid.get("timeout"), env)


def _task(valid: dict[str, Any], line: int) -> TaskAction:
    return TaskAction(
        agent=valid["agent"],
        action=valid["action"],
        data=valid.get("data") or Value({}),
        line=line,
        extra=valid.get("extra"),
        timeout=valid.get("timeout", DEFAULT_TASK_TIMEOUT),
        wait=valid.get("wait", True),
    )


def _retry(raw: dict[str, Any] | None) -> RetryPolicy | None:
    if raw is None:
        return None
    backoff = raw.get("backoff", 1.0)
    return RetryPolicy(raw["attempts"], backoff, max(backoff, raw.get("max_backoff", 30.0)))


def _modes_fit(ctx: FileContext, where: list[Any], valid: dict[str, Any]) -> bool:
    """Report options that contradict each other; return True when there is none."""
    ok = True
    if "max" in valid and valid.get("mode") != "parallel":
        ctx.error(
            [*where, "max"], f"{key_path([*where, 'max'])}: 'max' applies to mode: parallel only"
        )
        ok = False
    if "debounce" in valid and "throttle" in valid:
        ctx.error(
            [*where, "throttle"],
            f"{key_path([*where, 'throttle'])}: choose "
            "'debounce' (run once when quiet) or 'throttle' (at most one run per "
            "period), not both",
        )
        ok = False
    return ok


def _build_route(ctx: FileContext, index: int, raw: Any) -> Route | None:
    """Validate one route; return it, or None after reporting every problem."""
    where: list[Any] = ["routes", index]
    if not isinstance(raw, dict):
        ctx.error(where, f"{key_path(where)}: a route is a mapping, got {kind(raw)}")
        return None
    try:
        valid = ROUTE_SCHEMA(raw)
    except vol.MultipleInvalid as exc:
        report(ctx, where, exc, ROUTE_LAYOUT)
        valid = None
    steps = raw.get("do")
    actions = []
    if isinstance(steps, list):
        if not steps:
            ctx.error([*where, "do"], f"{key_path([*where, 'do'])}: expected at least one action")
        actions = [_build_action(ctx, [*where, "do", i], item) for i, item in enumerate(steps)]
    if valid is not None and not _modes_fit(ctx, where, valid):
        valid = None
    if valid is None or not steps or None in actions:
        return None
    return Route(
        name=valid["name"],
        patterns=valid["on"],
        actions=tuple(actions),
        file=str(ctx.path),
        line=line_of(ctx.data, where, 1),
        when=valid.get("when"),
        description=valid.get("description", ""),
        enabled=valid.get("enabled", True),
        mode=valid.get("mode", "queued"),
        max_runs=valid.get("max", DEFAULT_PARALLEL_MAX if valid.get("mode") == "parallel" else 1),
        key=valid.get("key"),
        debounce=valid.get("debounce"),
        throttle=valid.get("throttle"),
        retry=_retry(valid.get("retry")),
        schema=valid.get("schema", "off"),
        runs_on=valid.get("runs_on"),
    )


def _build_schemas(ctx: FileContext, raw: dict[str, Any]) -> dict[str, EventSpec]:
    """Validate the operator's event schemas of one file."""
    found: dict[str, EventSpec] = {}
    for name, body in raw.items():
        where: list[Any] = ["schemas", name]
        try:
            event_name(name)
        except ValueError as exc:
            ctx.error(where, f"{key_path(where)}: {exc}")
            continue
        try:
            valid = EVENT_SCHEMA(body)
        except vol.MultipleInvalid as exc:
            report(ctx, where, exc, ROUTE_LAYOUT)
            continue
        found[name] = declared_spec(name, valid.get("source", "any"), valid["fields"])
    return found


def _no_document(text: str) -> str:
    """Say why a file that parses to nothing has no routes."""
    if not text.strip():
        return "file is empty; expected a mapping with the key 'routes'"
    # A file of comments is a file kept for later (or all commented out): no routes, no fault.
    return "no routes: the file holds only comments"


def parse_file(path: Path, text: str) -> tuple[list[Route], dict[str, EventSpec], list[Diagnostic]]:
    """Build the routes and event schemas of one route file's text; routes only when no error."""
    try:
        data = loads(text)
    except YamlError as exc:
        return [], {}, [Diagnostic(str(path), exc.line, "error", exc.message)]
    ctx = FileContext(path, data)
    if data is None:
        ctx.warning([], _no_document(text))
        return [], {}, ctx.diagnostics
    if not isinstance(data, dict):
        ctx.error([], f"expected a mapping with the key 'routes', got {kind(data)}")
        return [], {}, ctx.diagnostics
    if data and not _looks_like_route_file(data):
        # Another kind of file (a symlink to a secret, another format): none of its keys
        # are quoted, they may be whole lines of it.
        ctx.error([], NOT_A_ROUTE_FILE.format(count=len(data)))
        return [], {}, ctx.diagnostics
    try:
        FILE_SCHEMA(data)
    except vol.MultipleInvalid as exc:
        report(ctx, [], exc, ROUTE_LAYOUT)
        return [], {}, ctx.diagnostics
    if "routes" not in data and "schemas" not in data:
        ctx.warning([], "file has neither 'routes' nor 'schemas'")
    schemas = _build_schemas(ctx, data.get("schemas", {}))
    routes = [_build_route(ctx, i, raw) for i, raw in enumerate(data.get("routes", []))]
    ctx.diagnostics.sort(key=lambda d: d.line)
    if any(d.severity == "error" for d in ctx.diagnostics):
        return [], {}, ctx.diagnostics
    return [route for route in routes if route is not None], schemas, ctx.diagnostics


def _looks_like_route_file(data: dict[Any, Any]) -> bool:
    """Return whether a top-level key is, or is a typo of, 'routes' or 'schemas'."""
    return any(
        name is not None and difflib.get_close_matches(name, FILE_KEYS, n=1, cutoff=0.75)
        for name in map(plain_key, data)
    )
