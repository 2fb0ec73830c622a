"""A run's actions rendered: the one place a route's actions become what is carried out.

Pure, as the rest of the engine. The daemon renders a run's actions when the run starts (a
run queued under debounce renders with the event it runs for) and carries them out as
rendered; ``explain`` and ``eventrouter test`` print and compare the same rendering, so they
give the daemon's answer. Each action renders with its kind's renderer here (``render_env``,
``render_exec``, ``render_task``, ``render_emit``), all behind ``render_action``, the one
switch over action kinds; one that cannot be rendered is a ``RenderRefused``, and the
actions after it are not rendered, since they would not run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eventrouter.config.templates import event_context
from eventrouter.engine.chains import chain_text
from eventrouter.engine.decide import RouterContext
from eventrouter.errors import TemplateRenderError
from eventrouter.model import (
    AGENT_ID,
    ONE_NODE,
    Action,
    ChainLink,
    EmitAction,
    Event,
    ExecAction,
    Route,
    RouterInfo,
    RunAction,
    TaskAction,
)

#: ``json.dumps(value, ensure_ascii=False)`` without building an encoder per call, as
#: ``json.dumps`` does for any argument it is given (every derived event paid for it).
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


class ActionRefused(Exception):
    """An action cannot be carried out: a template error, the loop guard, a size limit."""

    def __init__(self, status: str, reason: str, emit: Emit | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        #: The derived event the loop guard cut, for ``explain`` to show.
        self.emit = emit


def action_context(
    route: Route,
    event: Event,
    captures: dict[str, str],
    router: RouterInfo = ONE_NODE,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return the template context of a route's actions for ``event``."""
    return event_context(
        event, match=captures, route=route.name, router=router.template_value(), env=env
    )


def render_env(action: RunAction, context: dict[str, Any]) -> dict[str, str]:
    """Return the environment a ``run:`` action adds; raise ActionRefused."""
    try:
        return {key: template.render(context) for key, template in action.env}
    except TemplateRenderError as exc:
        raise ActionRefused("template error", f"env of {action.path}: {exc}") from exc


@dataclass(frozen=True)
class Emit:
    """A rendered derived event, with the chain of routes behind it."""

    channel: str
    data: bytes
    payload: Any
    chain: tuple[ChainLink, ...]

    def event(self) -> Event:
        """Return the event as it will come back from Redis."""
        return Event(self.channel, self.data, self.payload, True, self.chain)


def render_emit(
    route: Route, action: EmitAction, event: Event, context: dict[str, Any], limits: RouterContext
) -> Emit:
    """Return the derived event an ``emit:`` action publishes; raise ActionRefused."""
    try:
        channel = action.channel.render(context)
        if not channel:
            raise TemplateRenderError(f"channel {action.channel.source!r} rendered empty")
        payload = action.payload.render(context)
        data = _ENCODE(payload).encode()
    except TemplateRenderError as exc:
        raise ActionRefused("template error", f"emit {action.channel.source}: {exc}") from exc
    if len(data) > limits.max_payload:
        raise ActionRefused(
            "too large",
            f"emit {channel}: rendered payload of {len(data)} bytes exceeds the "
            f"{limits.max_payload}-byte limit (--max-payload); not published",
        )
    emit = Emit(channel, data, payload, (*event.chain, ChainLink(route.name, channel)))
    if len(emit.chain) > limits.max_depth:
        raise ActionRefused(
            "loop guard",
            f"derived-event chain deeper than {limits.max_depth}: {chain_text(emit.chain)}",
            emit,
        )
    return emit


@dataclass(frozen=True)
class Task:
    """A rendered ``task:`` action: what is submitted to the agent, and how long to wait."""

    agent: str
    action: str
    data: Any
    extra: dict[str, Any]
    parent: str
    timeout: float
    wait: bool


def _default_extra(route: Route, event: Event) -> dict[str, Any]:
    """Return ``extra`` when the route gives none: a title for NS8's UI, no notification."""
    return {
        "title": f"eventrouter route {route.name}",
        "description": f"on {event.channel}",
        "isNotificationHidden": True,
    }


def render_task(route: Route, action: TaskAction, event: Event, context: dict[str, Any]) -> Task:
    """Return the task a ``task:`` action submits; raise ActionRefused."""
    try:
        agent = action.agent.render(context).strip()
        data = action.data.render(context)
        extra = action.extra.render(context) if action.extra is not None else None
    except TemplateRenderError as exc:
        raise ActionRefused("template error", f"{action.describe()}: {exc}") from exc
    if not AGENT_ID.fullmatch(agent):
        raise ActionRefused(
            "bad agent id",
            f"{action.describe()}: agent {agent!r} is not an NS8 agent id "
            "(cluster, node/<number> or module/<id>)",
        )
    if extra is None:
        extra = _default_extra(route, event)
    elif not isinstance(extra, dict):
        raise ActionRefused("template error", f"{action.describe()}: extra is not a mapping")
    # A router is not itself a task: the task has no parent, as when NS8's API submits one.
    return Task(agent, action.action, data, extra, "", action.timeout, action.wait)


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


@dataclass(frozen=True, slots=True)
class RenderedFolder:
    """A ``run:`` action rendered: the handler folder and the environment it adds."""

    action: RunAction
    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class RenderedCommand:
    """An ``exec:`` action rendered: the command."""

    action: ExecAction
    command: Command


@dataclass(frozen=True, slots=True)
class RenderedTask:
    """A ``task:`` action rendered: the task submitted."""

    action: TaskAction
    task: Task


@dataclass(frozen=True, slots=True)
class RenderedEmit:
    """An ``emit:`` action rendered: the derived event published."""

    action: EmitAction
    emit: Emit


@dataclass(frozen=True, slots=True)
class RenderRefused:
    """An action that cannot be carried out: a template error, the loop guard, a size limit."""

    action: Action
    refused: ActionRefused


Rendered = RenderedFolder | RenderedCommand | RenderedTask | RenderedEmit | RenderRefused


def render_action(
    route: Route, action: Action, event: Event, context: dict[str, Any], limits: RouterContext
) -> Rendered:
    """Return ``action`` of ``route`` rendered for ``event`` in the template ``context``."""
    try:
        if isinstance(action, RunAction):
            return RenderedFolder(action, render_env(action, context))
        if isinstance(action, ExecAction):
            return RenderedCommand(action, render_exec(action, context))
        if isinstance(action, TaskAction):
            return RenderedTask(action, render_task(route, action, event, context))
        return RenderedEmit(action, render_emit(route, action, event, context, limits))
    except ActionRefused as exc:
        return RenderRefused(action, exc)


def render_run(
    route: Route, event: Event, captures: dict[str, str], where: RouterContext
) -> list[Rendered]:
    """Return the actions of a run of ``route`` for ``event`` rendered, in order.

    The list ends at the first action refused: those after it do not run. ``where`` gives
    the router (``router`` and ``env`` in templates) and the limits of derived events.
    """
    # Built for the first action that renders a template: an events folder (a run with no
    # env) needs none.
    context: dict[str, Any] = {}
    rendered: list[Rendered] = []
    for action in route.actions:
        if not context and (not isinstance(action, RunAction) or action.env):
            context = action_context(route, event, captures, where.router, where.env)
        done = render_action(route, action, event, context, where)
        rendered.append(done)
        if isinstance(done, RenderRefused):
            break
    return rendered
