"""The last events the router handled, each with every route considered and its outcome.

A bounded ring in memory (``HISTORY_SIZE`` events), served to ``eventrouter history`` over
the control channel: the answer to "why did my route not run". Each event holds one
``RouteTrace`` per route or events folder that matched it; the dispatcher and the scheduler
move a trace along (queued, then ran or failed; or coalesced, dropped, cut) as the run goes.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a type only: runevents imports the lanes, which import this module
    from eventrouter.engine.decide import RouteDecision
    from eventrouter.runtime.runevents import EmitRefused, NotFired, RunDropped, RunEnded

#: Events kept.
HISTORY_SIZE = 1000
#: Derived events remembered while waiting to come back, to link them to their cause.
PENDING_MAX = 10_000

NO_MATCH = "did not match"
CONDITION_FALSE = "condition false"
#: A route the cluster context keeps from running on this node (``runs_on``).
SKIPPED_HERE = "skipped here"
REJECTED = "rejected"
QUEUED = "queued"
COALESCED = "coalesced"
DROPPED = "dropped"
LOOP_GUARD = "cut by the loop guard"
RAN = "ran"
FAILED = "failed"


@dataclass
class RouteTrace:
    """What became of one route (or events folder) for one event."""

    route: str
    outcome: str
    detail: str = ""
    duration: float | None = None
    status: str | None = None
    steps: int = 0
    #: The event this route was considered for.
    owner: EventTrace | None = field(default=None, repr=False, compare=False)

    def set(self, outcome: str, detail: str = "") -> None:
        """Move the trace to ``outcome``."""
        self.outcome, self.detail = outcome, detail

    def to_json(self) -> dict[str, Any]:
        """Return the trace as a JSON-ready dict, without the fields that do not apply."""
        data: dict[str, Any] = {"route": self.route, "outcome": self.outcome}
        if self.detail:
            data["detail"] = self.detail
        if self.duration is not None:
            data["duration"] = round(self.duration, 6)
            data["steps"] = self.steps
        if self.status is not None:
            data["status"] = self.status
        return data


@dataclass
class EventTrace:
    """One event: when, which routes it met, what it caused."""

    seq: int
    time: float
    channel: str
    generation: int
    caused_by: int | None = None
    chain: tuple[str, ...] = ()
    refused: str | None = None
    routes: list[RouteTrace] = field(default_factory=list)
    derived: list[dict[str, Any]] = field(default_factory=list)

    def add(self, route: str, outcome: str, detail: str = "") -> RouteTrace:
        """Record a route considered for this event; return its trace."""
        trace = RouteTrace(route, outcome, detail, owner=self)
        self.routes.append(trace)
        return trace

    def to_json(self, routes: Iterable[RouteTrace] | None = None) -> dict[str, Any]:
        """Return the event as a JSON-ready dict, with ``routes`` (default: all considered)."""
        data: dict[str, Any] = {
            "seq": self.seq,
            "time": self.time,
            "channel": self.channel,
            "generation": self.generation,
            "routes": [trace.to_json() for trace in (self.routes if routes is None else routes)],
            "derived": list(self.derived),
        }
        if self.caused_by is not None:
            data["caused_by"] = self.caused_by
        if self.chain:
            data["chain"] = list(self.chain)
        if self.refused is not None:
            data["refused"] = self.refused
        return data


def _event_matches(channel: str, pattern: str | None) -> bool:
    if pattern is None:
        return True
    name = channel.partition("/event/")[2]
    return fnmatchcase(channel, pattern) or (bool(name) and fnmatchcase(name, pattern))


class History:
    """A bounded ring of ``EventTrace``, newest last."""

    def __init__(self, size: int = HISTORY_SIZE) -> None:
        self.events: deque[EventTrace] = deque(maxlen=size)
        self._seq = 0
        self._behind: OrderedDict[tuple[str, bytes], deque[int]] = OrderedDict()

    def start(self, channel: str, data: bytes, generation: int, chain: Sequence[str]) -> EventTrace:
        """Record an event arriving; link it to the event behind it when it is derived."""
        self._seq += 1
        caused_by = None
        waiting = self._behind.get((channel, data)) if chain else None
        if waiting:
            caused_by = waiting.popleft()
            if not waiting:
                del self._behind[(channel, data)]
        trace = EventTrace(self._seq, time.time(), channel, generation, caused_by, tuple(chain))
        self.events.append(trace)
        return trace

    def names(self) -> set[str]:
        """Return the names of the routes and events folders the kept events met."""
        return {trace.route for item in self.events for trace in item.routes}

    def emitting(
        self, source: EventTrace, route: str, channel: str, data: bytes, *, returns: bool = True
    ) -> None:
        """Record that ``route`` emits a derived event while handling ``source``.

        ``returns``: the event comes back to this router, which then links it to ``source``.
        """
        source.derived.append({"route": route, "channel": channel})
        if not returns:
            return
        while len(self._behind) >= PENDING_MAX:
            self._behind.popitem(last=False)
        self._behind.setdefault((channel, data), deque()).append(source.seq)

    def query(
        self,
        *,
        route: str | None = None,
        event: str | None = None,
        limit: int = 20,
        verbose: bool = False,
        table: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Return up to ``limit`` events, newest first, filtered by route and event globs.

        ``route`` keeps the events a route of that name matched (ran, or why it did not);
        with ``verbose`` every event comes, "did not match" where it did not. ``verbose``
        alone adds every route of the current ``table`` that did not match.
        """
        found: list[dict[str, Any]] = []
        for item in reversed(self.events):
            if len(found) >= limit:
                break
            if not _event_matches(item.channel, event):
                continue
            routes = list(item.routes)
            if route is not None:
                routes = [trace for trace in routes if fnmatchcase(trace.route, route)]
                if not routes and not verbose:
                    continue
                if not routes:
                    routes = [RouteTrace(route, NO_MATCH)]
            elif verbose:
                seen = {trace.route for trace in routes}
                routes += [RouteTrace(name, NO_MATCH) for name in table if name not in seen]
            found.append(item.to_json(routes))
        return found


class RunTraces:
    """Move each run's trace to what became of it: a run listener."""

    __slots__ = ()

    def run_ended(self, ended: RunEnded) -> None:
        """Record the outcome, duration, steps and status of a run that ended."""
        trace, failed = ended.job.trace, ended.failed
        if trace is not None:
            trace.set(ended.outcome, trace.detail if failed is None else failed.reason)
            trace.duration, trace.steps = ended.seconds, ended.steps
            trace.status = "ok" if failed is None else failed.status

    def not_fired(self, not_fired: NotFired) -> None:
        """Add the route that does not run to its event's history, with why."""
        if not_fired.trace is not None:
            item = not_fired.item
            not_fired.trace.add(item.route.name, *not_fired_outcome(item))

    def run_dropped(self, dropped: RunDropped) -> None:
        """Nothing: the scheduler marks the trace of what it drops."""

    def emit_refused(self, refused: EmitRefused) -> None:
        """Nothing: the run's trace already says how it ended."""


def not_fired_outcome(item: RouteDecision) -> tuple[str, str]:
    """Return the history outcome of a matching route that does not fire, and its detail.

    A route kept from running on this router (``runs_on``) is ``SKIPPED_HERE``.
    """
    if item.elsewhere is not None:
        return SKIPPED_HERE, item.reason or ""
    condition = item.condition
    plain = item.schema_error is None and item.key_error is None
    if plain and condition is not None and condition.error is None:
        return CONDITION_FALSE, item.reason or ""
    return REJECTED, item.reason or ""
