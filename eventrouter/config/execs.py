"""The ``exec:`` action in route files: one command as a list of arguments, each a template.

Two forms::

    - exec: [systemctl, --user, try-reload-or-restart, "{{ env.MODULE_ID }}.service"]
    - exec:
        command: [runagent, -m, "{{ env.MODULE_ID }}", reload-config]
        timeout: 30s            # per run, as run:'s per step (default: --step-timeout)
        env: {MODE: fast}       # added to the command's environment, as run:'s env

The program (the first item) is written out, never a template: what runs is only what the
route files name. A bare name is looked up on PATH when the command starts; a path is taken
as is, relative to the route file's folder. Whether it exists is `check`'s business
(``analysis/lint.py``), since it may be installed after the routes are written.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import voluptuous as vol

from eventrouter.config.excerpt import bound_message, excerpt
from eventrouter.config.layout import ROUTE_LAYOUT
from eventrouter.config.templates import TemplateSyntaxError, Text, text_of
from eventrouter.config.validators import (
    FileContext,
    key_path,
    kind,
    mapping,
    parse_duration,
    report,
    wrap,
)
from eventrouter.model import ExecAction

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MARKERS = ("{{", "{%", "{#")
_SHAPE = "a list of arguments: exec: [systemctl, --user, reload, mail1.service]"


def template(value: Any) -> Text:
    """Return one argument or env value as a text template; raise ValueError."""
    if isinstance(value, bool):
        text = str(value).lower()
        raise ValueError(f"expected a string, got a boolean (quote it to pass text: '{text}')")
    if not isinstance(value, str | int | float):
        raise ValueError(f"expected a string, got {kind(value)}")
    try:
        return text_of(str(value))
    except TemplateSyntaxError as exc:
        where = f" (template line {exc.line})" if exc.line > 1 else ""
        raise ValueError(f"template syntax error: {bound_message(str(exc))}{where}") from exc


def _program(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"the program (first item) must be a name or a path, got {kind(value)}")
    if any(marker in value for marker in _MARKERS):
        raise ValueError(
            f"the program {excerpt(value)} is a template; write the program out and template "
            "its arguments only (what runs is only what the route files name)"
        )
    if "\0" in value:
        raise ValueError("the program contains a NUL character")
    return value


def _command(value: Any) -> tuple[str, tuple[Text, ...]]:
    if isinstance(value, str):
        try:
            parts = shlex.split(value)
        except ValueError:  # unbalanced quotes
            parts = value.split()
        raise ValueError(
            "a command runs without a shell: give its arguments as a list, not a command "
            f"line: exec: [{', '.join(parts) or 'program'}]"
        )
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected {_SHAPE}, got {kind(value)}")
    program = _program(value[0])
    args = []
    for index, item in enumerate(value[1:], 1):
        try:
            args.append(template(item))
        except ValueError as exc:
            raise ValueError(f"argument {index}: {exc}") from exc
    return program, tuple(args)


EXEC_SCHEMA = vol.Schema(
    {
        vol.Required("command"): list,
        vol.Optional("timeout"): wrap(parse_duration),
        vol.Optional("env"): wrap(mapping),
    }
)


def env_entries(
    ctx: FileContext, where: list[Any], raw: dict[Any, Any]
) -> tuple[tuple[str, Text], ...] | None:
    """Return an action's ``env`` as templates; None after reporting every bad entry."""
    entries = []
    for key, value in raw.items():
        path = [*where, key]
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            problem = f"{excerpt(key)} is not a valid environment variable name"
            ctx.error(path, f"{key_path(path)}: {problem}")
            continue
        try:
            entries.append((sys.intern(key), template(value)))
        except ValueError as exc:
            ctx.error(path, f"{key_path(path)}: {exc}")
    return tuple(entries) if len(entries) == len(raw) else None


def build_exec(ctx: FileContext, where: list[Any], raw: dict[str, Any], line: int) -> Any:
    """Validate one ``exec:`` action; return an ExecAction, or None after reporting."""
    for key in raw:
        if key != "exec":  # run: takes its options beside it; exec: in its mapping form
            path = [*where, key]
            ctx.error(
                path,
                f"{key_path(path)}: unknown key {excerpt(key)} beside exec; options go in the "
                "mapping form: exec: {command: [...], timeout: 30s, env: {...}}",
            )
    if len(raw) > 1:
        return None
    value = raw["exec"]
    options: dict[str, Any] = {}
    at = [*where, "exec"]
    if isinstance(value, dict):
        try:
            options = EXEC_SCHEMA(value)
        except vol.MultipleInvalid as exc:
            report(ctx, at, exc, ROUTE_LAYOUT)
            return None
        value, at = options["command"], [*at, "command"]
    try:
        program, args = _command(value)
    except ValueError as exc:
        ctx.error(at, f"{key_path(at)}: {exc}")
        return None
    env = env_entries(ctx, [*where, "exec", "env"], options.get("env", {}))
    if env is None:
        return None
    return ExecAction(
        program=os.path.expanduser(program),
        args=args,
        line=line,
        timeout=options.get("timeout"),
        env=env,
        base=Path(ctx.path.parent),
    )
