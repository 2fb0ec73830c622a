"""Route files: voluptuous schemas turn YAML into validated, frozen ``Route`` objects.

All of voluptuous's use for route files lives here. Every problem is reported as a
``Diagnostic`` with file and line, all of them at once; a file with errors contributes no
routes, so a reload with any error keeps the old table.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import voluptuous as vol

from eventrouter.errors import Diagnostic
from eventrouter.model import (
    ROUTE_NAME,
    SAFE_NAME,
    EmitAction,
    Event,
    RetryPolicy,
    Route,
    RunAction,
)
from eventrouter.patterns import ChannelPattern, PatternError
from eventrouter.schemas import (
    SOURCES,
    WELL_KNOWN,
    EventSpec,
    declared_spec,
    parse_field,
    payload_problem,
)
from eventrouter.templates import Condition, TemplateSyntaxError, Text, Value
from eventrouter.yamlload import YamlError, line_of
from eventrouter.yamlload import load_file as load_yaml

ROUTE_KEYS = (
    "name",
    "description",
    "on",
    "when",
    "do",
    "enabled",
    "mode",
    "max",
    "key",
    "debounce",
    "throttle",
    "retry",
    "schema",
)
RETRY_KEYS = ("attempts", "backoff", "max_backoff")
#: Runs at once per key in ``parallel`` mode when ``max`` is not given.
DEFAULT_PARALLEL_MAX = 10
SCHEMA_KEYS = ("source", "fields", "description")
ACTION_KEYS = {"run": ("run", "timeout", "env"), "emit": ("emit",), "emit.": ("channel", "payload")}
MODES = ("queued", "parallel", "single", "restart")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_duration(value: Any) -> float:
    """Return seconds for ``500ms``, ``30s``, ``2m``, ``1h`` or a number; raise ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 30s, 2m, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        found = _DURATION.fullmatch(str(value))
        if not found:
            raise ValueError(f"{value!r} is not a duration (use 500ms, 30s, 2m, 1h or seconds)")
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


def _wrap(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Turn a function raising ValueError into a voluptuous validator."""

    def validator(value: Any) -> Any:
        try:
            return check(value)
        except (ValueError, PatternError, TemplateSyntaxError) as exc:
            raise vol.Invalid(str(exc)) from exc

    return validator


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return value


def _route_name(value: Any) -> str:
    name = _text(value)
    if not ROUTE_NAME.fullmatch(name):
        raise ValueError(f"route name {name!r} must match [a-z0-9][a-z0-9._-]*")
    return name


def _pattern(value: Any) -> ChannelPattern:
    try:
        return ChannelPattern.parse(_text(value))
    except PatternError as exc:
        raise ValueError(f"bad channel pattern {value!r}: {exc}") from exc


def _patterns(value: Any) -> tuple[ChannelPattern, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected at least one channel pattern")
    return tuple(_pattern(item) for item in items)


def _template_error(kind: str, exc: TemplateSyntaxError) -> ValueError:
    where = f" (template line {exc.line})" if exc.line > 1 else ""
    return ValueError(f"{kind} syntax error: {exc}{where}")


def _condition(value: Any) -> Condition:
    source = _text(value).strip()
    if source.startswith("{{") and source.endswith("}}"):
        raise ValueError("'when' is an expression: write it without {{ }}")
    try:
        return Condition(source)
    except TemplateSyntaxError as exc:
        raise _template_error("condition", exc) from exc


def _text_template(value: Any) -> Text:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a string, got {_kind(value)}")
    try:
        return Text(str(value))
    except TemplateSyntaxError as exc:
        raise _template_error("template", exc) from exc


def _value_template(value: Any) -> Value:
    try:
        return Value(value)
    except TemplateSyntaxError as exc:
        raise _template_error("template", exc) from exc


def _mapping(value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of variable names to values, got {_kind(value)}")
    return value


def _env_entry(key: Any, value: Any) -> tuple[str, Text]:
    if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
        raise ValueError(f"{key!r} is not a valid environment variable name")
    return key, _text_template(value)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    for kind, name in (
        (bool, "a boolean"),
        (dict, "a mapping"),
        (list, "a list"),
        (str, "a string"),
        (int, "a number"),
        (float, "a number"),
    ):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


RETRY_SCHEMA = vol.Schema(
    {
        vol.Required("attempts"): _wrap(_count),
        vol.Optional("backoff"): _wrap(parse_duration),
        vol.Optional("max_backoff"): _wrap(parse_duration),
    }
)
RUN_SCHEMA = vol.Schema(
    {
        vol.Required("run"): _wrap(_text),
        vol.Optional("timeout"): _wrap(parse_duration),
        vol.Optional("env"): _wrap(_mapping),
    }
)
EMIT_SCHEMA = vol.Schema(
    {
        vol.Required("emit"): vol.Schema(
            {
                vol.Required("channel"): _wrap(_text_template),
                vol.Optional("payload"): _wrap(_value_template),
            }
        )
    }
)
ROUTE_SCHEMA = vol.Schema(
    {
        vol.Required("name"): _wrap(_route_name),
        vol.Optional("description"): _wrap(_text),
        vol.Required("on"): _wrap(_patterns),
        vol.Optional("when"): _wrap(_condition),
        vol.Required("do"): list,
        vol.Optional("enabled"): _wrap(_boolean),
        vol.Optional("mode"): vol.In(MODES, msg=f"mode must be one of: {', '.join(MODES)}"),
        vol.Optional("max"): _wrap(_count),
        vol.Optional("key"): _wrap(_text_template),
        vol.Optional("debounce"): _wrap(parse_duration),
        vol.Optional("throttle"): _wrap(parse_duration),
        vol.Optional("retry"): RETRY_SCHEMA,
        vol.Optional("schema"): vol.In(
            ("strict", "off"),
            msg="schema must be 'strict' (reject events that do not fit) or 'off'",
        ),
    }
)
FILE_SCHEMA = vol.Schema({vol.Optional("routes"): list, vol.Optional("schemas"): dict})


def _event_name(value: Any) -> str:
    name = _text(value)
    if not SAFE_NAME.fullmatch(name):
        raise ValueError(f"event name {name!r} must match [A-Za-z0-9][A-Za-z0-9._-]*")
    if name in WELL_KNOWN:
        raise ValueError(f"{name!r} is a well-known NS8 event; its schema is built in")
    return name


def _fields(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of field names to types, got {_kind(value)}")
    for key, raw in value.items():
        if not isinstance(key, str) or not key.rstrip("?"):
            raise ValueError(f"{key!r} is not a field name")
        parse_field(raw)
    return dict(value)


EVENT_SCHEMA = vol.Schema(
    {
        vol.Optional("description"): _wrap(_text),
        vol.Optional("source"): vol.In(SOURCES, msg=f"source must be one of: {', '.join(SOURCES)}"),
        vol.Required("fields"): _wrap(_fields),
    }
)


@dataclass
class _FileContext:
    """Where findings go while one file is checked."""

    path: Path
    data: Any
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, where: list[Any], message: str) -> None:
        line = line_of(self.data, where, 1)
        self.diagnostics.append(Diagnostic(str(self.path), line, "error", message))

    def warning(self, where: list[Any], message: str) -> None:
        line = line_of(self.data, where, 1)
        self.diagnostics.append(Diagnostic(str(self.path), line, "warning", message))


def _key_path(path: Iterable[Any]) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def _explain(error: vol.Invalid, allowed: Iterable[str]) -> str:
    """Rewrite a voluptuous message into one that says what to do."""
    key = error.path[-1] if error.path else None
    message = error.error_message
    if message == "extra keys not allowed":
        close = difflib.get_close_matches(str(key), list(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}"
    if message == "required key not provided":
        return f"missing required key {key!r}"
    if message.startswith("expected dict"):
        return "expected a mapping"
    if message.startswith("expected list"):
        return "expected a list"
    return message


def _report(ctx: _FileContext, prefix: list[Any], exc: vol.MultipleInvalid, allowed: Any) -> None:
    for error in exc.errors:
        where = prefix + list(error.path)
        keys = allowed
        if isinstance(allowed, dict):  # action keys depend on the action kind and depth
            head = str(error.path[0]) if error.path else "run"
            keys = allowed.get(head + "." if len(error.path) > 1 else head, allowed["run"])
        ctx.error(where, f"{_key_path(where)}: {_explain(error, keys)}")


def _build_action(ctx: _FileContext, where: list[Any], raw: Any) -> Any:
    """Validate one item of ``do``; return a RunAction/EmitAction or None after reporting."""
    line = line_of(ctx.data, where, 1)
    if not isinstance(raw, dict) or ("run" in raw) == ("emit" in raw):
        ctx.error(where, f"{_key_path(where)}: an action is a mapping with either 'run' or 'emit'")
        return None
    schema = RUN_SCHEMA if "run" in raw else EMIT_SCHEMA
    try:
        valid = schema(raw)
    except vol.MultipleInvalid as exc:
        _report(ctx, where, exc, ACTION_KEYS)
        return None
    if "emit" in valid:
        emit = valid["emit"]
        return EmitAction(emit["channel"], emit.get("payload") or Value({}), line)
    path = Path(os.path.expanduser(valid["run"]))
    if not path.is_absolute():
        path = Path(os.path.normpath(ctx.path.parent / path))
    if not path.is_dir():
        problem = "does not exist" if not path.exists() else "is not a directory"
        ctx.error([*where, "run"], f"{_key_path([*where, 'run'])}: handler folder {path} {problem}")
        return None
    env = []
    for key, value in valid.get("env", {}).items():
        try:
            env.append(_env_entry(key, value))
        except ValueError as exc:
            ctx.error([*where, "env", key], f"{_key_path([*where, 'env', key])}: {exc}")
    if len(env) < len(valid.get("env", {})):
        return None
    return RunAction(path, line, valid.get("timeout"), tuple(env))


def _retry(raw: dict[str, Any] | None) -> RetryPolicy | None:
    if raw is None:
        return None
    backoff = raw.get("backoff", 1.0)
    return RetryPolicy(raw["attempts"], backoff, max(backoff, raw.get("max_backoff", 30.0)))


def _modes_fit(ctx: _FileContext, where: list[Any], valid: dict[str, Any]) -> bool:
    """Report options that contradict each other; return True when there is none."""
    ok = True
    if "max" in valid and valid.get("mode") != "parallel":
        ctx.error(
            [*where, "max"], f"{_key_path([*where, 'max'])}: 'max' applies to mode: parallel only"
        )
        ok = False
    if "debounce" in valid and "throttle" in valid:
        ctx.error(
            [*where, "throttle"],
            f"{_key_path([*where, 'throttle'])}: choose "
            "'debounce' (run once when quiet) or 'throttle' (at most one run per "
            "period), not both",
        )
        ok = False
    return ok


def _build_route(ctx: _FileContext, index: int, raw: Any) -> Route | None:
    """Validate one route; return it, or None after reporting every problem."""
    where: list[Any] = ["routes", index]
    if not isinstance(raw, dict):
        ctx.error(where, f"{_key_path(where)}: a route is a mapping, got {_kind(raw)}")
        return None
    try:
        valid = ROUTE_SCHEMA(raw)
    except vol.MultipleInvalid as exc:
        _report(ctx, where, exc, ROUTE_KEYS)
        valid = None
    steps = raw.get("do")
    actions = []
    if isinstance(steps, list):
        if not steps:
            ctx.error([*where, "do"], f"{_key_path([*where, 'do'])}: expected at least one action")
        actions = [_build_action(ctx, [*where, "do", i], item) for i, item in enumerate(steps)]
    if valid is not None and not _modes_fit(ctx, where, valid):
        valid = None
    if valid is None or not steps or None in actions:
        return None
    resolved = [str(a.path) if isinstance(a, RunAction) else None for a in actions]
    digest = json.dumps([raw, resolved], sort_keys=True, default=str)
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
        digest=hashlib.sha256(digest.encode()).hexdigest(),
    )


def _build_schemas(ctx: _FileContext, raw: dict[str, Any]) -> dict[str, EventSpec]:
    """Validate the operator's event schemas of one file."""
    found: dict[str, EventSpec] = {}
    for name, body in raw.items():
        where: list[Any] = ["schemas", name]
        try:
            _event_name(name)
        except ValueError as exc:
            ctx.error(where, f"{_key_path(where)}: {exc}")
            continue
        try:
            valid = EVENT_SCHEMA(body)
        except vol.MultipleInvalid as exc:
            _report(ctx, where, exc, SCHEMA_KEYS)
            continue
        found[name] = declared_spec(name, valid.get("source", "any"), valid["fields"])
    return found


def load_file(path: Path) -> tuple[list[Route], dict[str, EventSpec], list[Diagnostic]]:
    """Load one route file; return its routes, its event schemas and every finding."""
    try:
        data = load_yaml(path)
    except YamlError as exc:
        return [], {}, [Diagnostic(str(path), exc.line, "error", exc.message)]
    ctx = _FileContext(path, data)
    if data is None:
        ctx.warning([], "file is empty; expected a mapping with the key 'routes'")
        return [], {}, ctx.diagnostics
    if not isinstance(data, dict):
        ctx.error([], f"expected a mapping with the key 'routes', got {_kind(data)}")
        return [], {}, ctx.diagnostics
    try:
        FILE_SCHEMA(data)
    except vol.MultipleInvalid as exc:
        _report(ctx, [], exc, ("routes", "schemas"))
        return [], {}, ctx.diagnostics
    if "routes" not in data and "schemas" not in data:
        ctx.warning([], "file has neither 'routes' nor 'schemas'")
    schemas = _build_schemas(ctx, data.get("schemas", {}))
    routes = [_build_route(ctx, i, raw) for i, raw in enumerate(data.get("routes", []))]
    ctx.diagnostics.sort(key=lambda d: d.line)
    if any(d.severity == "error" for d in ctx.diagnostics):
        return [], {}, ctx.diagnostics
    return [route for route in routes if route is not None], schemas, ctx.diagnostics


def load_file_routes(path: Path) -> tuple[list[Route], list[Diagnostic]]:
    """Load one route file; return its routes and every finding (routes only when no error)."""
    routes, _, diagnostics = load_file(path)
    return routes, diagnostics


def route_files(directory: Path) -> list[Path]:
    """Return the ``*.yml``/``*.yaml`` files directly in ``directory``, byte-wise by name."""
    names = [
        entry.name
        for entry in os.scandir(directory)
        if entry.name.endswith((".yml", ".yaml"))
        and not entry.name.startswith(".")
        and (entry.is_file() or not entry.is_dir())
    ]
    return [directory / name for name in sorted(names, key=os.fsencode)]


@dataclass(frozen=True)
class LoadResult:
    """Routes of every folder, in file order, and every finding."""

    routes: tuple[Route, ...]
    diagnostics: tuple[Diagnostic, ...]
    #: Every event schema: the well-known ones and the operators' own.
    schemas: dict[str, EventSpec] = field(default_factory=lambda: dict(WELL_KNOWN))

    @property
    def ok(self) -> bool:
        """Return True when no finding is an error."""
        return not any(d.severity == "error" for d in self.diagnostics)


def load_routes(directories: Iterable[Path]) -> LoadResult:
    """Load every route file of ``directories``; report duplicates across files."""
    routes: list[Route] = []
    diagnostics: list[Diagnostic] = []
    schemas: dict[str, EventSpec] = dict(WELL_KNOWN)
    for directory in directories:
        try:
            files = route_files(directory)
        except OSError as exc:
            message = f"cannot read routes folder: {exc.strerror or exc}"
            diagnostics.append(Diagnostic(str(directory), 0, "error", message))
            continue
        for path in files:
            found, declared, notes = load_file(path)
            routes.extend(found)
            diagnostics.extend(notes)
            for name, spec in declared.items():
                if name in schemas:
                    message = f"event schema {name!r} is declared twice"
                    diagnostics.append(Diagnostic(str(path), 1, "error", message))
                schemas[name] = spec
    seen: dict[str, Route] = {}
    unique: list[Route] = []
    for route in routes:
        first = seen.get(route.name)
        if first is not None:
            message = (
                f"duplicate route name {route.name!r}, first defined at {first.file}:{first.line}"
            )
            diagnostics.append(Diagnostic(route.file, route.line, "error", message))
            continue
        seen[route.name] = route
        strict = route.schema == "strict"
        unique.append(
            replace(route, payload_check=partial(_strict_check, schemas)) if strict else route
        )
    return LoadResult(tuple(unique), tuple(diagnostics), schemas)


def _strict_check(schemas: dict[str, EventSpec], event: Event) -> str | None:
    return payload_problem(schemas.get(event.name or ""), event)
