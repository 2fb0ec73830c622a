"""Dry run: what an event would trigger, why, and the cascade of derived events.

Prints the engine's plan (``engine/plan.py``): the decisions and renderings the dispatcher
executes, so what it says is what the daemon does; it touches neither Redis nor any handler.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from eventrouter.config.handlers import folder_exists, list_steps
from eventrouter.config.patterns import RouteIndex
from eventrouter.engine.decide import RouterContext
from eventrouter.engine.plan import ActionPlan, EventPlan, Planner, RoutePlan, StepPlan
from eventrouter.model import ONE_NODE, Route, RouterInfo

__all__ = ["ActionPlan", "EventPlan", "Explainer", "RoutePlan", "StepPlan", "format_text"]


def list_step_plans(folder: Path) -> list[StepPlan]:
    """Return the entries of a handler folder in run order, skipped ones with why."""
    steps, skipped = list_steps(folder)
    plans = [StepPlan(step.name, True) for step in steps]
    plans += [
        StepPlan(
            entry.name, False, f"{entry.reason}, never run" if entry.passed_over else entry.reason
        )
        for entry in skipped
    ]
    plans.sort(key=lambda step: step.name.encode("utf-8", "surrogateescape"))
    return plans


class Explainer:
    """Explain events against one route table and set of events folders."""

    def __init__(
        self,
        routes: Sequence[Route],
        events_dirs: Sequence[Path] = (),
        max_depth: int = 8,
        max_payload: int = 1024 * 1024,
        router: RouterInfo = ONE_NODE,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.routes = tuple(routes)
        self.events_dirs = tuple(events_dirs)
        self.context = RouterContext(
            self.events_dirs, max_depth, max_payload, folder_exists, router, dict(env or {})
        )
        self.planner = Planner(RouteIndex(self.routes), self.context, list_step_plans)

    def explain(
        self,
        channel: str,
        data: bytes,
        router: RouterInfo | None = None,
        env: Mapping[str, str] | None = None,
    ) -> EventPlan:
        """Return the plan of an incoming event and its cascade, as ``router`` would see it.

        ``env`` (what ``env`` holds in templates) replaces the explainer's own when given.
        """
        if router is None and env is None:
            return self.planner.plan(channel, data)
        context = replace(
            self.context,
            router=router if router is not None else self.context.router,
            env=dict(env) if env is not None else self.context.env,
        )
        return Planner(self.planner.index, context, list_step_plans).plan(channel, data)


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
        elif route.elsewhere:
            reason = f"runs_on: {route.elsewhere}  (not on this router)"
        elif route.when_error:
            reason = f"when: {route.when} -> error: {route.when_error}"
        elif route.key_error:
            reason = f"key: error: {route.key_error}"
        else:
            value = route.when_value
            shown = "false" if value is False else f"{json.dumps(value)} (false)"
            reason = f"when: {route.when} -> {shown}"
        return [
            f"- route {route.name} does not fire  ({where})",
            f"    matched {route.pattern}{captures}",
            f"    {reason}",
        ]
    label = "events folder" if route.convention else "route"
    out = [f"+ {label} {route.name} fires  ({where})", f"    matched {route.pattern}{captures}"]
    if route.runs_on is not None:
        out.append(f"    runs_on: {route.runs_on} -> this router")
    if route.when is not None:
        out.append(f"    when: {route.when} -> {json.dumps(route.when_value)}")
    if route.key is not None:
        out.append(f"    key: {route.key}")
    for number, action in enumerate(route.actions, 1):
        out.extend(_action_lines(number, action))
    return out


def _action_lines(number: int, action: ActionPlan) -> list[str]:
    pad = "       "
    if action.skipped:
        return [
            f"    {number}. {action.kind} {action.target}",
            f"{pad}not run: an earlier action fails",
        ]
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
    if action.kind == "task":
        return _task_lines(number, action, pad)
    if action.kind == "exec":
        return _exec_lines(number, action, pad)
    if action.error:
        return [f"    {number}. emit {action.target}", f"{pad}error: {action.error}"]
    out = [f"    {number}. emit {action.channel} {_short(action.payload)}"]
    if action.cut:
        return [*out, f"{pad}CUT by the {action.cut}"]
    if action.cascade is not None:
        out += [pad + line for line in format_text(action.cascade, verbose=False)]
    return out


def _task_lines(number: int, action: ActionPlan, pad: str) -> list[str]:
    if action.error or action.task is None:
        return [f"    {number}. task {action.target}", f"{pad}error: {action.error}"]
    task = action.task
    wait = f"wait up to {task['timeout']:g}s" if task["wait"] else "submit, do not wait"
    return [
        f"    {number}. task {task['action']} on {task['agent']}  ({wait})",
        f"{pad}LPUSH {task['agent']}/tasks",
        f"{pad}data {_short(task['data'])}",
        f"{pad}extra {_short(task['extra'])}",
    ]


def _exec_lines(number: int, action: ActionPlan, pad: str) -> list[str]:
    if action.error or action.argv is None:
        return [f"    {number}. exec {action.target}", f"{pad}error: {action.error}"]
    # shlex quoting: each argument reads as one, as the command receives it (no shell runs).
    out = [f"    {number}. exec {shlex.join(action.argv)}"]
    return out + [f"{pad}env {key}={value}" for key, value in action.env.items()]


def format_text(plan: EventPlan, verbose: bool = False) -> list[str]:
    """Return the plan as lines for a terminal."""
    lines = [_describe_event(plan)]
    if plan.refused:
        return [*lines, f"! event refused: {plan.refused}", "  nothing would run"]
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
