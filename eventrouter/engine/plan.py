"""The whole tree of what an event would do: the decisions, rendered actions and cascade.

Built from ``decide`` and ``render_run``, as the dispatcher decides an event and renders a
run when it starts, so ``explain`` and ``eventrouter test`` give the daemon's answer.
Listing a handler folder's steps is I/O: the caller passes a ``StepLister``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eventrouter.config.patterns import RouteIndex
from eventrouter.engine.decide import (
    Decision,
    RouteDecision,
    RouterContext,
    decide,
    decide_message,
)
from eventrouter.engine.render import (
    Rendered,
    RenderedCommand,
    RenderedEmit,
    RenderedFolder,
    RenderedTask,
    render_run,
)
from eventrouter.model import Action, Event, ExecAction, RunAction, TaskAction


@dataclass
class StepPlan:
    """One entry of a handler folder: would it run, and if not, why."""

    name: str
    runs: bool
    reason: str | None = None


#: Return the entries of a handler folder in run order; raise OSError.
StepLister = Callable[[Path], list[StepPlan]]


@dataclass
class ActionPlan:
    """What one action would do."""

    kind: str  # "run", "emit", "task" or "exec"
    line: int
    target: str  # handler folder, emit channel template, task agent template, or program
    error: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    steps: list[StepPlan] = field(default_factory=list)
    channel: str | None = None
    payload: Any = None
    cut: str | None = None  # why the loop guard would cut this emit
    cascade: EventPlan | None = None
    #: The rendered task: agent, action, data, extra, parent, timeout, wait.
    task: dict[str, Any] | None = None
    #: The rendered ``exec:`` argument list, the program as written first.
    argv: list[str] | None = None
    #: An earlier action of the route failed: this one would not run.
    skipped: bool = False


@dataclass
class RoutePlan:
    """One route or convention folder considered for an event."""

    name: str
    file: str
    line: int
    convention: bool = False
    enabled: bool = True
    matched: bool = False
    pattern: str | None = None
    captures: dict[str, str] = field(default_factory=dict)
    when: str | None = None
    when_value: Any = None
    when_error: str | None = None
    schema_error: str | None = None
    key: str | None = None
    key_error: str | None = None
    runs_on: str | None = None
    #: Why runs_on keeps the route off this router (or its template's error).
    elsewhere: str | None = None
    fires: bool = False
    reason: str | None = None
    actions: list[ActionPlan] = field(default_factory=list)


@dataclass
class EventPlan:
    """An event and every route considered for it."""

    channel: str
    source: str | None
    name: str | None
    is_json: bool
    payload: Any
    raw: str
    depth: int
    refused: str | None = None
    refused_name: bool = False
    routes: list[RoutePlan] = field(default_factory=list)

    @property
    def fired(self) -> list[RoutePlan]:
        """Return the routes and folders that would run."""
        return [route for route in self.routes if route.fires]

    def to_json(self) -> dict[str, Any]:
        """Return the plan as JSON-ready data."""
        return asdict(self)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


class Planner:
    """Plan events against one route table and router context."""

    def __init__(self, index: RouteIndex, context: RouterContext, lister: StepLister) -> None:
        self.index = index
        self.context = context
        self.lister = lister

    def plan(self, channel: str, data: bytes) -> EventPlan:
        """Return the plan of an incoming event and its cascade."""
        return self._event(decide_message(self.index, channel, data, self.context), 0)

    def _event(self, decision: Decision, depth: int) -> EventPlan:
        event = decision.event
        plan = EventPlan(
            channel=event.channel,
            source=event.source,
            name=event.name,
            is_json=event.is_json,
            payload=event.payload,
            raw=event.text,
            depth=depth,
            refused=decision.refused,
            refused_name=decision.name_refused is not None,
        )
        if decision.refused is not None:
            return plan
        decided = {item.route.name: item for item in decision.routes}
        for route in self.index.routes:
            item = decided.pop(route.name, None)
            if item is None:
                when = route.when.source if route.when is not None else None
                plan.routes.append(
                    RoutePlan(route.name, route.file, route.line, enabled=route.enabled, when=when)
                )
            else:
                plan.routes.append(self._route(item, event))
        plan.routes += [self._route(item, event) for item in decided.values()]  # events folders
        return plan

    def _route(self, item: RouteDecision, event: Event) -> RoutePlan:
        route = item.route
        plan = RoutePlan(route.name, route.file, route.line, route.convention, route.enabled)
        plan.matched, plan.pattern, plan.captures = True, item.pattern, item.captures
        plan.schema_error, plan.key_error = item.schema_error, item.key_error
        plan.runs_on = route.runs_on.source if route.runs_on is not None else None
        plan.elsewhere = item.runs_on_error or item.elsewhere
        plan.fires, plan.reason = item.fires, item.reason
        if item.condition is not None:
            plan.when = item.condition.source
            plan.when_value = _jsonable(item.condition.value)
            plan.when_error = item.condition.error
        if route.key is not None and item.key_error is None and item.fires:
            plan.key = item.key
        if item.fires:
            plan.actions = self._actions(item, event)
        return plan

    def _actions(self, item: RouteDecision, event: Event) -> list[ActionPlan]:
        route = item.route
        rendered = render_run(route, event, item.captures, self.context)
        plans: list[ActionPlan] = []
        failed = False
        for position, action in enumerate(route.actions):
            kind, target = _kind(action)
            plan = ActionPlan(kind, action.line, target, skipped=failed)
            if not failed:
                self._fill(plan, rendered[position])
            failed = failed or plan.error is not None or plan.cut is not None
            plans.append(plan)
        return plans

    def _fill(self, plan: ActionPlan, rendered: Rendered) -> None:
        """Fill in what an action rendered to, as the daemon carries it out."""
        if isinstance(rendered, RenderedFolder):
            plan.env = rendered.env
            try:
                plan.steps = self.lister(rendered.action.path)
            except OSError as exc:
                plan.error = f"handler folder {rendered.action.path}: {exc.strerror or exc}"
        elif isinstance(rendered, RenderedCommand):
            plan.argv, plan.env = list(rendered.command.argv), rendered.command.env
        elif isinstance(rendered, RenderedTask):
            plan.task = asdict(rendered.task)
        elif isinstance(rendered, RenderedEmit):
            emit = rendered.emit
            plan.channel, plan.payload = emit.channel, emit.payload
            cascade = decide(self.index, emit.event(), self.context)
            plan.cascade = self._event(cascade, len(emit.chain))
        elif rendered.refused.emit is not None:  # rendered, then cut by the loop guard
            plan.channel, plan.payload = (
                rendered.refused.emit.channel,
                rendered.refused.emit.payload,
            )
            plan.cut = f"loop guard: {rendered.refused.reason}"
        else:
            plan.error = rendered.refused.reason


def _kind(action: Action) -> tuple[str, str]:
    """Return how a plan names an action: its kind and what it targets, as written."""
    if isinstance(action, RunAction):
        return "run", str(action.path)
    if isinstance(action, TaskAction):
        return "task", action.agent.source
    if isinstance(action, ExecAction):
        return "exec", action.program
    return "emit", action.channel.source
