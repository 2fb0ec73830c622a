"""A run's actions rendered: the one place a route's actions become what is carried out.

Pure, as the rest of the engine. The daemon renders a run's actions when the run starts (a
run queued under debounce renders with the event it runs for) and carries them out as
rendered; ``explain`` and ``eventrouter test`` print and compare the same rendering, so they
give the daemon's answer. Each action renders with the per-kind renderers (``render_env``,
``render_exec``, ``render_task``, ``render_emit``); one that cannot be rendered is a
``RenderRefused``, and the actions after it are not rendered, since they would not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventrouter.engine.decide import (
    ActionRefused,
    Emit,
    RouterContext,
    Task,
    action_context,
    render_emit,
    render_env,
    render_task,
)
from eventrouter.engine.execs import Command, render_exec
from eventrouter.model import Action, EmitAction, Event, ExecAction, Route, RunAction, TaskAction


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
