"""Derived-event cycles and the conditions that can stop them, for ``eventrouter check``.

A cycle is only as stoppable as its ``when:`` conditions. ``when: payload.status ==
"failed"`` looks as if it could stop a route, but not a route that emits ``{status: failed}``
on its own pattern: every event it emits passes the condition, and only the runtime loop
guard ends the chain. So where everything a ``when:`` reads of an emitted event is literal in
the emit (the payload fields it reads, the channel), the condition is evaluated on that
event, as the router would evaluate it: true means it never stops the cycle, false means the
emit never reaches the route (no cycle through it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eventrouter.analysis.loops import MAX_CYCLES, Graph, elementary_cycles, overlap, pattern_glob
from eventrouter.analysis.refs import Key, can_stop, emit_glob, reads
from eventrouter.config.templates import event_context
from eventrouter.config.valuetemplates import Constant, MappingPart
from eventrouter.engine.decide import evaluate_when
from eventrouter.errors import Diagnostic
from eventrouter.model import EmitAction, Event, Route

#: What a condition reads that no emit can tell: where the router runs, its environment.
_UNKNOWABLE = frozenset({"router", "env"})
_CHANNEL_NAMES = frozenset({"channel", "source", "name", "match"})


@dataclass(frozen=True)
class Passage:
    """Whether a route's ``when:`` lets what another route emits through."""

    verdict: str  # "always", "never" or "maybe"
    #: The literal values it was told from: ``payload.status = "failed"``.
    shown: str = ""


MAYBE = Passage("maybe")


@dataclass(frozen=True)
class _Emitted:
    """What check time knows of the event one emit publishes."""

    context: dict[str, Any]
    channel_known: bool
    #: The payload fields whose value is a template (the others are literal or absent).
    unknown: frozenset[str]
    whole_payload: bool

    def knows(self, key: Key) -> bool:
        """Return whether ``key`` reads only what the emit says literally."""
        if key[0] in _UNKNOWABLE:
            return False
        if key[0] in _CHANNEL_NAMES:
            return self.channel_known
        if key[0] == "raw":
            return self.whole_payload
        if key[0] != "payload":
            return key[0] == "route"
        return self.whole_payload or (len(key) == 2 and key[1] not in self.unknown)

    def show(self, key: Key) -> str:
        value: Any = self.context
        for step in key:
            if not isinstance(value, dict) or step not in value:
                return f"{'.'.join(key)} absent"
            value = value[step]
        return f"{'.'.join(key)} = {json.dumps(value, ensure_ascii=False, default=str)}"


def _payload(action: EmitAction) -> tuple[Any, frozenset[str], bool] | None:
    """Return the literal payload, its templated fields, and whether it is all literal."""
    part = getattr(action.payload, "part", None)
    if isinstance(part, Constant):
        return part.value, frozenset(), True
    if isinstance(part, MappingPart):
        known = {
            key: item.part.value for key, item in part.items if isinstance(item.part, Constant)
        }
        return known, frozenset(key for key, _ in part.items if key not in known), False
    return None


def _emitted(action: EmitAction, target: Route) -> _Emitted | None:
    found = _payload(action)
    if found is None:
        return None
    payload, unknown, whole = found
    try:  # what comes back from Redis is JSON: a YAML date or .nan does not
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None
    static = bool(getattr(action.channel, "static", False))
    channel = action.channel.source if static else ""
    matches = [p.match(channel) for p in target.patterns] if static else []
    captures = next((m for m in matches if m is not None), None)
    event = Event(channel, text.encode(), json.loads(text), True)
    context = event_context(event, match=captures or {}, route=target.name)
    return _Emitted(context, captures is not None, unknown, whole)


def judge(source: Route, target: Route) -> Passage:
    """Tell whether ``target``'s ``when:`` passes every event ``source`` emits to it."""
    when = target.when
    read = reads(when.source) if when is not None else None
    if when is None or read is None:
        return MAYBE
    verdicts = []
    for action in source.actions:
        if isinstance(action, EmitAction) and _reaches(action, target):
            verdicts.append(_judge_emit(action, target, read))
    always = [item for item in verdicts if item.verdict == "always"]
    if always or MAYBE in verdicts or not verdicts:
        return always[0] if always else MAYBE
    return verdicts[0]  # never: no emit of the source gets through


def _judge_emit(action: EmitAction, target: Route, reads: set[Key]) -> Passage:
    emitted = _emitted(action, target)
    if emitted is None or not all(emitted.knows(key) for key in reads):
        return MAYBE
    condition = evaluate_when(target, emitted.context)
    if condition is None or condition.error is not None:
        return MAYBE  # an error is a problem of its own, reported where it is found
    shown = ", ".join(sorted(emitted.show(key) for key in reads))
    return Passage("always" if condition.holds else "never", shown)


def _reaches(action: EmitAction, target: Route) -> bool:
    glob = emit_glob(action)
    return any(overlap(glob, pattern_glob(pattern.text)) for pattern in target.patterns)


def _edges(cycle: Sequence[int]) -> Iterator[tuple[int, int]]:
    for k, node in enumerate(cycle):
        yield cycle[k - 1], node


def prune(routes: Sequence[Route], graph: Graph) -> dict[tuple[int, int], Passage]:
    """Drop from ``graph`` the edges a literal ``when:`` never lets through; return the
    verdict of every edge judged (those on cycles, into a route with a condition)."""
    judged: dict[tuple[int, int], Passage] = {}
    while True:
        never = []
        for cycle in elementary_cycles(graph)[0]:
            for edge in _edges(cycle):
                if edge not in judged and routes[edge[1]].when is not None:
                    judged[edge] = judge(routes[edge[0]], routes[edge[1]])
                    never += [edge] if judged[edge].verdict == "never" else []
        if not never:
            return judged
        for source, target in never:
            del graph[source][target]
            if not graph[source]:
                del graph[source]


def _passing(source: Route, target: Route, passage: Passage) -> str:
    when = target.when.source if target.when is not None else ""
    return (
        f"the when: of {target.name} ({when}) holds for every event {source.name} emits to it "
        f"({passage.shown})"
    )


def cycle_findings(routes: Sequence[Route], graph: Graph) -> list[Diagnostic]:
    """Report every derived-event cycle: an error, or a warning when each route on it has a
    ``when:`` that can stop what the route before it emits."""
    judged = prune(routes, graph)
    stoppable = [can_stop(route) for route in routes]
    cycles, more = elementary_cycles(graph)
    findings: list[Diagnostic] = []
    for cycle in cycles:
        hops = [
            f"{routes[node].name} ({routes[node].file}:{routes[node].line}) emits "
            f"{graph[node][cycle[(k + 1) % len(cycle)]]}"
            for k, node in enumerate(cycle)
        ]
        first = routes[cycle[0]]
        text = f"derived-event cycle: {' -> '.join(hops)} -> {first.name}"
        blind = [routes[node].name for _, node in _edges(cycle) if not stoppable[node]]
        passing = [
            _passing(routes[a], routes[b], judged[a, b])
            for a, b in _edges(cycle)
            if stoppable[b] and judged.get((a, b), MAYBE).verdict == "always"
        ]
        if not blind and not passing:
            note = "every route on it has a when: condition that can stop it"
            findings.append(Diagnostic(first.file, first.line, "warning", f"{text} ({note})"))
            continue
        reasons = [f"no when: condition can stop it at {', '.join(blind)}"] if blind else []
        end = "only the runtime loop guard will"
        if passing:  # the condition is there, but reads what never changes
            end += " stop it: change a condition or an emitted payload"
        note = "; ".join([*reasons, *passing, end])
        findings.append(Diagnostic(first.file, first.line, "error", f"{text} ({note})"))
    if more:
        first = routes[cycles[-1][0]]
        message = f"more than {MAX_CYCLES} derived-event cycles; only the first are listed"
        findings.append(Diagnostic(first.file, first.line, "error", message))
    return findings
