"""Dry run: what an event would trigger, why, and the cascade of derived events.

Uses the dispatcher's own matching, conditions, rendering and step listing, so what it
says is what the daemon does; it touches neither Redis nor any handler.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eventrouter.config.patterns import RouteIndex
from eventrouter.config.templates import event_context
from eventrouter.engine.chains import chain_text
from eventrouter.errors import TemplateRenderError
from eventrouter.model import ChainLink, EmitAction, Event, Route, RunAction
from eventrouter.runtime.dispatch import convention_folders, parse_event, render_emit
from eventrouter.runtime.steps import list_steps


@dataclass
class StepPlan:
    """One entry of a handler folder: would it run, and if not, why."""

    name: str
    runs: bool
    reason: str | None = None


@dataclass
class ActionPlan:
    """What one action would do."""

    kind: str  # "run" or "emit"
    line: int
    target: str  # handler folder, or emit channel template
    error: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    steps: list[StepPlan] = field(default_factory=list)
    channel: str | None = None
    payload: Any = None
    cut: str | None = None  # why the loop guard would cut this emit
    cascade: EventPlan | None = None


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
    fires: bool = False
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
    refused_name: bool = False
    routes: list[RoutePlan] = field(default_factory=list)

    @property
    def fired(self) -> list[RoutePlan]:
        """Return the routes and folders that would run."""
        return [route for route in self.routes if route.fires]

    def to_json(self) -> dict[str, Any]:
        """Return the plan as JSON-ready data."""
        return asdict(self)


class Explainer:
    """Explain events against one route table and set of events folders."""

    def __init__(
        self, routes: Sequence[Route], events_dirs: Sequence[Path] = (), max_depth: int = 8
    ) -> None:
        self.routes = tuple(routes)
        self.index = RouteIndex(self.routes)
        self.events_dirs = tuple(events_dirs)
        self.max_depth = max_depth

    def explain(self, channel: str, data: bytes) -> EventPlan:
        """Return the plan of an incoming event and its cascade."""
        return self._event(parse_event(channel, data), 0)

    def _event(self, event: Event, depth: int) -> EventPlan:
        plan = EventPlan(
            channel=event.channel,
            source=event.source,
            name=event.name,
            is_json=event.is_json,
            payload=event.payload,
            raw=event.text,
            depth=depth,
        )
        matches = {route.name: captures for route, captures in self.index.match(event.channel)}
        for route in self.routes:
            plan.routes.append(self._route(route, event, matches.get(route.name)))
        folders = convention_folders(self.events_dirs, event.name)
        plan.refused_name = folders is None
        for folder in folders or ():
            plan.routes.append(self._convention(folder, event))
        return plan

    def _route(self, route: Route, event: Event, captures: dict[str, str] | None) -> RoutePlan:
        plan = RoutePlan(route.name, route.file, route.line, enabled=route.enabled)
        plan.when = route.when.source if route.when is not None else None
        if captures is None:
            return plan
        plan.matched, plan.captures = True, captures
        plan.pattern = next(
            (p.text for p in route.patterns if p.match(event.channel) is not None), None
        )
        context = event_context(event, match=captures, route=route.name)
        if route.payload_check is not None:
            plan.schema_error = route.payload_check(event)
            if plan.schema_error is not None:
                return plan
        if route.when is not None:
            try:
                plan.when_value = _jsonable(route.when.evaluate(context))
            except TemplateRenderError as exc:
                plan.when_error = str(exc)
                return plan
            if not plan.when_value:
                return plan
        plan.fires = True
        for action in route.actions:
            plan.actions.append(self._action(route, action, event, context))
        return plan

    def _convention(self, folder: Path, event: Event) -> RoutePlan:
        plan = RoutePlan(f"events:{folder}", str(folder), 0, convention=True)
        plan.matched = plan.fires = True
        plan.pattern = "*/event/" + (event.name or "")
        plan.actions.append(_run_plan(RunAction(folder, 0), {}))
        return plan

    def _action(
        self, route: Route, action: RunAction | EmitAction, event: Event, context: dict[str, Any]
    ) -> ActionPlan:
        if isinstance(action, RunAction):
            try:
                env = {key: template.render(context) for key, template in action.env}
            except TemplateRenderError as exc:
                return ActionPlan("run", action.line, str(action.path), error=str(exc))
            return _run_plan(action, env)
        plan = ActionPlan("emit", action.line, action.channel.source)
        try:
            channel, data = render_emit(action, context)
        except TemplateRenderError as exc:
            plan.error = str(exc)
            return plan
        plan.channel, plan.payload = channel, json.loads(data)
        chain = (*event.chain, ChainLink(route.name, channel))
        if len(chain) > self.max_depth:
            plan.cut = f"loop guard: chain deeper than {self.max_depth}: {chain_text(chain)}"
            return plan
        derived = Event(channel, data, plan.payload, True, chain)
        plan.cascade = self._event(derived, len(chain))
        return plan


def _run_plan(action: RunAction, env: dict[str, str]) -> ActionPlan:
    plan = ActionPlan("run", action.line, str(action.path), env=env)
    try:
        steps, skipped = list_steps(action.path)
    except OSError as exc:
        plan.error = f"handler folder {action.path}: {exc.strerror or exc}"
        return plan
    plan.steps = [StepPlan(step.name, True) for step in steps]
    plan.steps += [StepPlan(entry.name, False, entry.reason) for entry in skipped]
    plan.steps.sort(key=lambda step: step.name.encode("utf-8", "surrogateescape"))
    return plan


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_event(plan: EventPlan) -> str:
    if plan.source is None:
        kind = "no /event/ in the channel: no source, no name"
    else:
        kind = f"source {plan.source}, name {plan.name}"
    body = (
        "JSON " + type(plan.payload).__name__.replace("dict", "object")
        if plan.is_json
        else "not JSON"
    )
    return f"event {plan.channel}  ({kind}; payload {body})"


def _route_lines(route: RoutePlan) -> list[str]:
    where = f"{route.file}:{route.line}" if not route.convention else route.file
    captures = f", captures {json.dumps(route.captures)}" if route.captures else ""
    if not route.fires:
        if route.schema_error:
            reason = f"schema: strict -> rejected: {route.schema_error}"
        elif route.when_error:
            reason = f"when: {route.when} -> error: {route.when_error}"
        else:
            reason = f"when: {route.when} -> {json.dumps(route.when_value)}"
        return [
            f"- route {route.name} does not fire  ({where})",
            f"    matched {route.pattern}{captures}",
            f"    {reason}",
        ]
    label = "events folder" if route.convention else "route"
    out = [f"+ {label} {route.name} fires  ({where})", f"    matched {route.pattern}{captures}"]
    if route.when is not None:
        out.append(f"    when: {route.when} -> {json.dumps(route.when_value)}")
    for number, action in enumerate(route.actions, 1):
        out.extend(_action_lines(number, action))
    return out


def _action_lines(number: int, action: ActionPlan) -> list[str]:
    pad = "       "
    if action.kind == "run":
        out = [f"    {number}. run {action.target}"]
        if action.error:
            return [*out, f"{pad}error: {action.error}"]
        out += [f"{pad}env {key}={value}" for key, value in action.env.items()]
        for step in action.steps:
            out.append(
                f"{pad}step {step.name}" if step.runs else f"{pad}skip {step.name}: {step.reason}"
            )
        if not any(step.runs for step in action.steps):
            out.append(f"{pad}(no runnable step)")
        return out
    if action.error:
        return [f"    {number}. emit {action.target}", f"{pad}error: {action.error}"]
    out = [f"    {number}. emit {action.channel} {_short(action.payload)}"]
    if action.cut:
        return [*out, f"{pad}CUT by the {action.cut}"]
    if action.cascade is not None:
        out += [pad + line for line in format_text(action.cascade, verbose=False)]
    return out


def format_text(plan: EventPlan, verbose: bool = False) -> list[str]:
    """Return the plan as lines for a terminal."""
    lines = [_describe_event(plan)]
    if plan.refused_name:
        lines.append(
            f"! event name {plan.name!r} refused: events folders need [A-Za-z0-9][A-Za-z0-9._-]*"
        )
    considered = [route for route in plan.routes if route.matched]
    for route in considered:
        lines.extend("  " + line for line in _route_lines(route))
    others = [route for route in plan.routes if not route.matched]
    if verbose:
        lines += [
            f"  . route {r.name} does not match  ({r.file}:{r.line})"
            + ("" if r.enabled else " (disabled)")
            for r in others
        ]
    elif others:
        lines.append(f"  . {len(others)} other route(s) do not match (--verbose lists them)")
    if not plan.fired:
        lines.append("  nothing would run")
    return lines
