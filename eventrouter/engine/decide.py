"""The decisions about one event: which routes fire (``engine/render.py`` renders their actions).

Pure: no I/O, no asyncio, no Redis. The dispatcher executes these decisions, ``explain``
prints them, ``eventrouter test`` compares them and ``retry`` re-decides with the current
table; none of them evaluates a condition or renders an action any other way.

The decision is made in two moments, as the daemon does: on arrival (``decide``: size,
matching, ``schema: strict``, ``when:``, ``key:``) and when a run starts (``render_run`` in
``engine/render.py``), because a run queued under debounce renders with the event it runs
for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventrouter.config.patterns import RouteIndex
from eventrouter.config.templates import event_context
from eventrouter.engine.events import (
    FolderExists,
    convention_folders,
    convention_route,
    name_problem,
    parse_event,
)
from eventrouter.errors import TemplateRenderError
from eventrouter.model import (
    ONE_NODE,
    ChainLink,
    Event,
    Route,
    RouterInfo,
)


def _no_folder(_: Path) -> bool:
    return False


@dataclass(frozen=True)
class RouterContext:
    """What the router's settings add to the route table when deciding."""

    events_dirs: tuple[Path, ...] = ()
    max_depth: int = 8
    max_payload: int = 1024 * 1024
    #: Whether an events folder exists (I/O, so the caller provides it).
    folder_exists: FolderExists = _no_folder
    #: Where the router runs: ``router`` in templates, and what ``runs_on`` is checked against.
    router: RouterInfo = ONE_NODE
    #: ``env`` in templates: the router's environment and the module's environment file, as
    #: they are for this event (the daemon builds a context per event when the file changed).
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Condition:
    """The value of a route's ``when:`` for one event, and whether it holds."""

    source: str
    value: Any = None
    holds: bool = False
    error: str | None = None


@dataclass(frozen=True)
class RouteDecision:
    """One route (or events folder) matching an event: does it fire, and if not, why."""

    route: Route
    captures: dict[str, str] = field(default_factory=dict)
    pattern: str | None = None
    schema_error: str | None = None
    condition: Condition | None = None
    key: str = ""
    key_error: str | None = None
    #: Why ``runs_on`` keeps the route from acting on this router, or None.
    elsewhere: str | None = None
    #: The ``runs_on`` template failed.
    runs_on_error: str | None = None

    @property
    def fires(self) -> bool:
        """Return True when the route runs for the event."""
        return self.reason is None

    @property
    def reason(self) -> str | None:
        """Return why the route does not fire, or None when it does."""
        if self.schema_error is not None:
            return f"schema: strict rejects the event: {self.schema_error}"
        if self.runs_on_error is not None:
            return f"runs_on: {self.runs_on_error}"
        if self.elsewhere is not None:
            return f"runs_on: {self.elsewhere}"
        if self.condition is not None and not self.condition.holds:
            if self.condition.error is not None:
                return f"when: {self.condition.error}"
            value = self.condition.value
            shown = "" if value is False else f" ({_shown(value)})"  # never "false (false)"
            return f"when: {self.condition.source} is false{shown}"
        if self.key_error is not None:
            return f"key: {self.key_error}"
        return None


@dataclass(frozen=True)
class Decision:
    """What an event triggers on arrival."""

    event: Event
    #: Why the whole event is refused (too large), or None.
    refused: str | None = None
    #: Why its name may not name an events folder, or None.
    name_refused: str | None = None
    #: Every matching route in table order, then the events folders.
    routes: tuple[RouteDecision, ...] = ()

    @property
    def fired(self) -> list[RouteDecision]:
        """Return the routes and events folders that run."""
        return [item for item in self.routes if item.fires]

    def find(self, name: str) -> RouteDecision | None:
        """Return the decision about the route or events folder named ``name``."""
        return next((item for item in self.routes if item.route.name == name), None)


def truth(value: Any) -> bool:
    """Return whether a condition's value holds: the one truthiness rule (Python's)."""
    return bool(value)


def _shown(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


class Hidden:
    """A condition's value that came from ``env``: logs, history and ``explain`` never show it."""

    def __repr__(self) -> str:
        return "<hidden: the expression reads env>"


#: What a condition reading ``env`` shows instead of a value other than true, false or none.
HIDDEN = Hidden()


def evaluate_when(route: Route, context: dict[str, Any]) -> Condition | None:
    """Return the value of the route's ``when:`` in ``context``; None without one.

    A value other than a boolean or none is hidden when the expression reads ``env``: the
    router's and the module's environment hold secrets (REDIS_PASSWORD) that must not reach
    a log line through ``when: env.X``.
    """
    if route.when is None:
        return None
    try:
        value = route.when.evaluate(context)
        holds = truth(value)
        if not isinstance(value, bool) and value is not None and route.when.reads("env"):
            value = HIDDEN
        return Condition(route.when.source, value, holds)
    # A value whose truth cannot be told (a sandboxed object raising) is an error too.
    except Exception as exc:
        return Condition(route.when.source, error=str(exc) or type(exc).__name__)


def render_key(route: Route, context: dict[str, Any]) -> str:
    """Return the lane key of a run; raise TemplateRenderError."""
    return route.key.render(context) if route.key is not None else ""


def _pattern(route: Route, channel: str, captures: dict[str, str]) -> str | None:
    return next((p.text for p in route.patterns if p.match(channel) == captures), None)


def placement(route: Route, context: dict[str, Any], router: RouterInfo) -> str | None:
    """Return why ``runs_on`` keeps the route off this router, or None when it acts here.

    Raise TemplateRenderError when the node template fails.
    """
    if route.runs_on is None or route.runs_on.source == "all":
        return None
    if route.runs_on.source == "leader":
        return None if router.leader else "leader, and this router's Redis is a replica"
    node = route.runs_on.render(context).strip()
    if router.node is not None and node == str(router.node):
        return None
    if router.node is None:
        return f"node {node!r}, and this router's node is unknown (--node, NODE_ID)"
    return f"node {node!r}, and this router is node {router.node}"


def decide_route(
    route: Route,
    event: Event,
    captures: dict[str, str],
    router: RouterInfo = ONE_NODE,
    env: Mapping[str, str] | None = None,
) -> RouteDecision:
    """Return whether a matching route fires for ``event``: schema, runs_on, condition, key."""
    pattern = _pattern(route, event.channel, captures)
    if route.payload_check is not None:
        problem = route.payload_check(event)
        if problem is not None:
            return RouteDecision(route, captures, pattern, schema_error=problem)
    # The template context, for what renders one here: a route without runs_on, when or key
    # (most) needs none.
    context = (
        event_context(
            event, match=captures, route=route.name, router=router.template_value(), env=env
        )
        if route.runs_on is not None or route.when is not None or route.key is not None
        else {}
    )
    # Where before whether: a route that acts on another node is not evaluated here, so its
    # condition errors are logged and journaled once, by the router that acts.
    try:
        elsewhere = placement(route, context, router)
    except TemplateRenderError as exc:
        return RouteDecision(route, captures, pattern, runs_on_error=str(exc))
    if elsewhere is not None:
        return RouteDecision(route, captures, pattern, elsewhere=elsewhere)
    condition = evaluate_when(route, context)
    decided = RouteDecision(route, captures, pattern, condition=condition)
    if not decided.fires:
        return decided
    try:
        return RouteDecision(
            route, captures, pattern, condition=condition, key=render_key(route, context)
        )
    except TemplateRenderError as exc:
        return RouteDecision(route, captures, pattern, condition=condition, key_error=str(exc))


def decide(index: RouteIndex, event: Event, context: RouterContext) -> Decision:
    """Return what ``event`` triggers: matching routes, then events folders."""
    routes = [
        decide_route(route, event, captures, context.router, context.env)
        for route, captures in index.match(event.channel)
    ]
    folders = convention_folders(context.events_dirs, event.name, context.folder_exists)
    name_refused = name_problem(event.name or "") if folders is None else None
    for folder in folders or ():
        pattern = f"*/event/{event.name}"
        routes.append(RouteDecision(convention_route(folder), pattern=pattern))
    return Decision(event, name_refused=name_refused, routes=tuple(routes))


def decide_message(
    index: RouteIndex,
    channel: str,
    data: bytes,
    context: RouterContext,
    chain: tuple[ChainLink, ...] = (),
) -> Decision:
    """Return what a message from Redis triggers: refused when too large, else ``decide``."""
    if len(data) > context.max_payload:
        event = Event(channel, data, None, False, chain)
        refused = (
            f"payload of {len(data)} bytes exceeds the {context.max_payload}-byte limit "
            "(--max-payload)"
        )
        return Decision(event, refused=refused)
    event = parse_event(channel, data)
    if chain:
        event = Event(event.channel, event.raw, event.payload, event.is_json, chain)
    return decide(index, event, context)


def retry_decision(decision: Decision, name: str, table: Sequence[Route]) -> RouteDecision | str:
    """Return the firing decision about ``name`` for a retried event, or why it does not run.

    A retry runs only what the current table would run for that event: a route of the table
    or an events folder this event's name selects in a configured events folder.
    """
    if decision.refused is not None:
        return decision.refused
    found = decision.find(name)
    if found is not None:
        return found.reason or found
    if name.startswith("events:"):
        return (
            f"{name} is not an events folder that {decision.event.channel!r} runs "
            "(a folder named after the event, directly in a configured --events-dir)"
        )
    route = next((route for route in table if route.name == name), None)
    if route is None:
        return f"route {name} no longer exists"
    if not route.enabled:
        return f"route {name} is disabled"
    return f"route {name} no longer matches {decision.event.channel!r}"
