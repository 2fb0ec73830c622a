"""The ``exec:`` action rendered: one command's arguments and environment, for one event.

Pure, as the rest of the engine: the dispatcher runs what ``render_exec`` returns, ``explain``
prints it and ``eventrouter test`` compares it. Where the program is found (PATH) is the
runtime's business, at the moment it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventrouter.engine.decide import ActionRefused
from eventrouter.errors import TemplateRenderError
from eventrouter.model import ExecAction

#: Longest argument list an ``exec:`` may render, in bytes (Linux takes about 2 MiB with the
#: environment; a rendered payload that large is a mistake, not a command).
MAX_ARGV_BYTES = 256 * 1024


@dataclass(frozen=True)
class Command:
    """A rendered ``exec:``: the argument list (the program as written first) and its env."""

    argv: tuple[str, ...]
    env: dict[str, str]
    timeout: float | None
    #: The program's path when the route names one (relative paths made absolute), or None
    #: for a bare name, which is looked up on the PATH the command itself gets.
    path: str | None


def render_exec(action: ExecAction, context: dict[str, Any]) -> Command:
    """Return the command an ``exec:`` action runs for one event; raise ActionRefused."""
    try:
        args = tuple(template.render(context) for template in action.args)
        env = {key: template.render(context) for key, template in action.env}
    except TemplateRenderError as exc:
        raise ActionRefused("template error", f"{action.describe()}: {exc}") from exc
    argv = (action.program, *args)
    if any("\0" in item for item in (*argv, *env.values())):
        why = "an argument or env value rendered with a NUL character"
        raise ActionRefused("template error", f"{action.describe()}: {why}")
    size = sum(len(item.encode("utf-8", "surrogateescape")) + 1 for item in argv)
    if size > MAX_ARGV_BYTES:
        raise ActionRefused(
            "too large",
            f"{action.describe()}: the arguments rendered to {size} bytes, more than the "
            f"{MAX_ARGV_BYTES}-byte limit of an exec",
        )
    return Command(argv, env, action.timeout, action.resolve())
