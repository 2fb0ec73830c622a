"""Route files: voluptuous schemas turn YAML into validated, frozen ``Route`` objects.

All of voluptuous's use for route files lives here. Every problem is reported as a
``Diagnostic`` with file and line, all of them at once; a file with errors contributes no
routes, so a reload with any error keeps the old table.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import voluptuous as vol

from eventrouter.config.excerpt import bound_message, excerpt
from eventrouter.config.execs import build_exec, env_entries
from eventrouter.config.layout import ACTION_KEYS, FILE_KEYS, ROUTE_LAYOUT, action_kind_problem
from eventrouter.config.patterns import ChannelPattern, PatternError
from eventrouter.config.schemas import (
    WELL_KNOWN,
    EventSpec,
    declared_spec,
    parse_field,
    payload_problem,
)
from eventrouter.config.templates import Condition, TemplateSyntaxError, Text, Value
from eventrouter.config.trust import distrust, effective_uid, handler_distrust
from eventrouter.config.validation import (
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
from eventrouter.config.yamlload import YamlError, line_of, loads, read_text
from eventrouter.errors import Diagnostic
from eventrouter.model import (
    AGENT_ID,
    MODES,
    ROUTE_NAME,
    SAFE_NAME,
    SCHEMA_CHECKS,
    SOURCES,
    TASK_ACTION,
    EmitAction,
    Event,
    RetryPolicy,
    Route,
    RunAction,
    TaskAction,
)

__all__ = [
    "LoadResult",
    "load_file",
    "load_file_routes",
    "load_routes",
    "parse_duration",
    "route_files",
]

#: Runs at once per key in ``parallel`` mode when ``max`` is not given.
DEFAULT_PARALLEL_MAX = 10
#: ``task:`` waits this long for the exit code when it sets no ``timeout``.
DEFAULT_TASK_TIMEOUT = 3600.0
NOT_A_ROUTE_FILE = (
    "not a route file: a mapping with {count} key(s) but neither 'routes' nor 'schemas' "
    "(its keys are not shown)"
)


def _route_name(value: Any) -> str:
    name = text(value)
    if not ROUTE_NAME.fullmatch(name):
        raise ValueError(f"route name {excerpt(name)} must match [a-z0-9][a-z0-9._-]*")
    return name


def _pattern(value: Any) -> ChannelPattern:
    try:
        return ChannelPattern.parse(text(value))
    except PatternError as exc:
        problem = bound_message(str(exc))
        raise ValueError(f"bad channel pattern {excerpt(value)}: {problem}") from exc


def _patterns(value: Any) -> tuple[ChannelPattern, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected at least one channel pattern")
    return tuple(_pattern(item) for item in items)


def _template_error(kind: str, exc: TemplateSyntaxError) -> ValueError:
    where = f" (template line {exc.line})" if exc.line > 1 else ""
    return ValueError(f"{kind} syntax error: {bound_message(str(exc))}{where}")


def _condition(value: Any) -> Condition:
    source = text(value).strip()
    if source.startswith("{{") and source.endswith("}}"):
        raise ValueError("'when' is an expression: write it without {{ }}")
    try:
        return Condition(source)
    except TemplateSyntaxError as exc:
        raise _template_error("condition", exc) from exc


def _text_template(value: Any) -> Text:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a string, got {kind(value)}")
    try:
        return Text(str(value))
    except TemplateSyntaxError as exc:
        raise _template_error("template", exc) from exc


def _value_template(value: Any, what: str = "") -> Value:
    try:
        return Value(value, what)
    except TemplateSyntaxError as exc:
        raise _template_error("template", exc) from exc


def _runs_on(value: Any) -> Text:
    """``leader``, ``all``, a node id, or a template naming a node."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected leader, all or a node, got {kind(value)}")
    source = str(value).strip()
    if source in ("leader", "all") or source.isdigit() or any(m in source for m in "{}"):
        return _text_template(source)
    raise ValueError(
        f"runs_on {source!r} is not 'leader', 'all', a node number or a template naming a "
        'node (runs_on: "{{ payload.node }}")'
    )


def _agent_id(value: Any) -> Text:
    template = _text_template(value)
    if template.static and not AGENT_ID.fullmatch(template.source):
        raise ValueError(
            f"agent {template.source!r} is not an NS8 agent id: cluster, node/<number> or "
            "module/<id> (module/traefik1)"
        )
    return template


def _task_action(value: Any) -> str:
    name = text(value)
    if not TASK_ACTION.fullmatch(name):
        raise ValueError(f"action name {name!r} must match [a-z0-9-]+")
    return name


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
                vol.Required("channel"): wrap(_text_template),
                vol.Optional("payload"): wrap(partial(_value_template, what="payload")),
            }
        )
    }
)
TASK_SCHEMA = vol.Schema(
    {
        vol.Required("task"): vol.Schema(
            {
                vol.Required("agent"): wrap(_agent_id),
                vol.Required("action"): wrap(_task_action),
                vol.Optional("data"): wrap(partial(_value_template, what="data")),
                vol.Optional("extra"): wrap(partial(_value_template, what="extra")),
                vol.Optional("timeout"): wrap(parse_duration),
                vol.Optional("wait"): wrap(boolean),
            }
        )
    }
)
ROUTE_SCHEMA = vol.Schema(
    {
        vol.Optional("runs_on"): wrap(_runs_on),
        vol.Required("name"): wrap(_route_name),
        vol.Optional("description"): wrap(text),
        vol.Required("on"): wrap(_patterns),
        vol.Optional("when"): wrap(_condition),
        vol.Required("do"): list,
        vol.Optional("enabled"): wrap(boolean),
        vol.Optional("mode"): vol.In(MODES, msg=f"mode must be one of: {', '.join(MODES)}"),
        vol.Optional("max"): wrap(count),
        vol.Optional("key"): wrap(_text_template),
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


def _event_name(value: Any) -> str:
    name = text(value)
    if not SAFE_NAME.fullmatch(name):
        raise ValueError(f"event name {excerpt(name)} must match [A-Za-z0-9][A-Za-z0-9._-]*")
    if name in WELL_KNOWN:
        raise ValueError(f"{excerpt(name)} is a well-known NS8 event; its schema is built in")
    return name


def _fields(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of field names to types, got {kind(value)}")
    for key, raw in value.items():
        if not isinstance(key, str) or not key.rstrip("?"):
            raise ValueError(f"{excerpt(key)} is not a field name")
        try:
            parse_field(raw)
        except ValueError as exc:
            raise ValueError(bound_message(str(exc))) from exc
    return dict(value)


EVENT_SCHEMA = vol.Schema(
    {
        vol.Optional("description"): wrap(text),
        vol.Optional("source"): vol.In(SOURCES, msg=f"source must be one of: {', '.join(SOURCES)}"),
        vol.Required("fields"): wrap(_fields),
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
            _event_name(name)
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


@dataclass(frozen=True)
class FileResult:
    """What one route file gave, and the hash of the text it was built from."""

    digest: bytes
    routes: tuple[Route, ...]
    schemas: dict[str, EventSpec]
    diagnostics: tuple[Diagnostic, ...]


#: Route files already built, by path: a reload rebuilds only the files that changed.
FileCache = dict[str, FileResult]


def load_file(
    path: Path, settle: float = 0.0
) -> tuple[list[Route], dict[str, EventSpec], list[Diagnostic]]:
    """Load one route file; return its routes, its event schemas and every finding."""
    try:
        text = read_text(path, settle)
    except YamlError as exc:
        return [], {}, [Diagnostic(str(path), exc.line, "error", exc.message)]
    return _load_text(path, text)


def _load_cached(path: Path, cache: FileCache, fresh: FileCache, settle: float) -> FileResult:
    """Load a file, reusing what the cache built from the very same text."""
    try:
        text = read_text(path, settle)
    except YamlError as exc:
        problem = Diagnostic(str(path), exc.line, "error", exc.message)
        return FileResult(b"", (), {}, (problem,))
    digest = hashlib.sha256(text.encode()).digest()
    known = cache.get(str(path))
    if (
        known is not None
        and known.digest == digest
        and not any(item.severity == "error" for item in known.diagnostics)
        and _folders_still_there(known)
    ):
        fresh[str(path)] = known
        return known
    routes, schemas, diagnostics = _load_text(path, text)
    result = FileResult(digest, tuple(routes), schemas, tuple(diagnostics))
    fresh[str(path)] = result
    return result


def _folders_still_there(result: FileResult) -> bool:
    return all(
        action.path.is_dir()
        for route in result.routes
        for action in route.actions
        if isinstance(action, RunAction)
    )


def _no_document(text: str) -> str:
    """Say why a file that parses to nothing has no routes."""
    if not text.strip():
        return "file is empty; expected a mapping with the key 'routes'"
    # A file of comments is a file kept for later (or all commented out): no routes, no fault.
    return "no routes: the file holds only comments"


def _load_text(path: Path, text: str) -> tuple[list[Route], dict[str, EventSpec], list[Diagnostic]]:
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


def _trust_findings(path: Path, what: str, line: int, euid: int) -> list[Diagnostic]:
    doubt = distrust(path, euid)
    if doubt is None:
        return []
    return [Diagnostic(str(path), line, doubt.severity, doubt.describe(what))]


def _handler_trust(routes: Iterable[Route], euid: int) -> list[Diagnostic]:
    """Judge the handler folder of every run action, and its steps, once each."""
    findings = []
    seen: set[Path] = set()
    for route in routes:
        for action in route.actions:
            if isinstance(action, RunAction) and action.path not in seen:
                seen.add(action.path)
                findings += [
                    Diagnostic(route.file, action.line, doubt.severity, doubt.describe(what))
                    for what, doubt in handler_distrust(action.path, euid)
                ]
    return findings


def load_routes(
    directories: Iterable[Path],
    cache: FileCache | None = None,
    *,
    euid: int | None = None,
    settle: float = 0.0,
) -> LoadResult:
    """Load every route file of ``directories``; report duplicates across files.

    With a ``cache`` (kept by the daemon between reloads), a file whose text has not
    changed is not parsed again; the cache is left holding the files of this load.
    Files, folders and steps others could change are refused when ``euid`` (by default
    the process's) is root, warned about otherwise (see ``trust``). With ``settle`` (a
    reload), a file modified less than that many seconds ago is read once it is quiet.
    """
    uid = effective_uid(euid)
    fresh: FileCache = {}
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
        diagnostics += _trust_findings(directory, "routes folder", 0, uid)
        for path in files:
            doubts = _trust_findings(path, "route file", 1, uid)
            diagnostics += doubts
            if any(item.severity == "error" for item in doubts):
                continue  # refused: not even read
            if cache is None:
                found, declared, notes = load_file(path, settle)
            else:
                result = _load_cached(path, cache, fresh, settle)
                found, declared, notes = (
                    list(result.routes),
                    result.schemas,
                    list(result.diagnostics),
                )
            routes.extend(found)
            diagnostics.extend(notes)
            for name, spec in declared.items():
                if name in schemas:
                    message = f"event schema {excerpt(name)} is declared twice"
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
    diagnostics += _handler_trust(unique, uid)
    if cache is not None:
        cache.clear()
        cache.update(fresh)
    return LoadResult(tuple(unique), tuple(diagnostics), schemas)


def _strict_check(schemas: dict[str, EventSpec], event: Event) -> str | None:
    return payload_problem(schemas.get(event.name or ""), event)
