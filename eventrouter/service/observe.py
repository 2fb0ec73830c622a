"""What a running router tells about itself: the `status` and `history` answers.

Built from the daemon's parts when a request arrives on the control channel
(``runtime/control.py``), and published on the request's reply channel; the metrics
endpoint reads the same parts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from eventrouter import __version__
from eventrouter.model import Route
from eventrouter.redis import bus
from eventrouter.runtime import control
from eventrouter.runtime.control import Query
from eventrouter.runtime.dispatch import Dispatcher
from eventrouter.service.wiring import Intake, Outbox

#: The daemon's logger, as before these lines moved out of it: the log names their source, and
#: an operator's filter on it must keep finding them.
log = logging.getLogger("eventrouter.service.daemon")

#: The drop counters of the dispatcher and scheduler, by reason.
DROPS = {
    "oversize": "dropped_oversize",
    "queue full": "dropped_queue_full",
    "single": "dropped_single",
    "schema": "schema_rejected",
    "refused name": "refused_names",
    "not started": "not_started",
}


def table_digest(routes: Sequence[Route]) -> str:
    """Return one digest of the whole route table: nodes whose routes differ stand out."""
    whole = hashlib.sha256()
    for digest in sorted(f"{route.name}:{route.digest}" for route in routes):
        whole.update(digest.encode())
    return whole.hexdigest()[:16]


@dataclass
class Parts:
    """The daemon's running parts, as a request finds them."""

    dispatcher: Dispatcher
    subscriber: Intake
    publisher: Outbox
    routes: Sequence[Route]
    #: Asks the subscribe server for its ROLE.
    role: Callable[[], Awaitable[str]]
    started: float = field(default_factory=time.time)
    #: Reloads by result: ok, failed.
    reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})


def _outage(subscriber: Intake) -> dict[str, Any] | None:
    if subscriber.last_outage is None:
        return None
    start, end = subscriber.last_outage
    return {"start": start, "end": end, "seconds": (end or time.time()) - start}


def lane_depths(dispatcher: Dispatcher) -> dict[str, int]:
    """Return the runs waiting per route lane (queued or held by debounce/throttle)."""
    return {
        name: len(lane.queue) + (lane.held is not None)
        for name, lane in dispatcher.scheduler.lanes.items()
        if lane.queue or lane.held is not None
    }


async def status(parts: Parts) -> dict[str, Any]:
    """Return the `status` answer."""
    dispatcher, subscriber, publisher = parts.dispatcher, parts.subscriber, parts.publisher
    counters = dispatcher.counters
    runs: dict[str, int] = {}
    for (_, outcome), count in dispatcher.runs.items():
        runs[outcome] = runs.get(outcome, 0) + count
    return {
        "node": os.environ.get("NODE_ID"),
        "agent": os.environ.get("AGENT_ID"),
        "pid": os.getpid(),
        "uptime": round(time.time() - parts.started, 3),
        "version": __version__,
        "redis": {
            "subscribe": {
                "url": bus.redact(subscriber.url),
                "connected": subscriber.connected.is_set(),
                "patterns": sorted(subscriber.patterns),
                "role": await parts.role(),
                "reconnects": subscriber.reconnects,
                "last_outage": _outage(subscriber),
            },
            "publish": {
                "url": bus.redact(publisher.url),
                "outbox": publisher.pending,
                "sent": publisher.sent,
                "refused": publisher.refused,
            },
        },
        "routes": {
            "count": len(parts.routes),
            "generation": dispatcher.generation,
            "digest": table_digest(parts.routes),
        },
        "queues": {"pending": dispatcher.scheduler.pending, "lanes": lane_depths(dispatcher)},
        "running_steps": dispatcher.runner.running,
        "counters": {
            "events": counters["events"],
            "runs": runs,
            "drops": {reason: counters[key] for reason, key in DROPS.items() if counters[key]},
            "derived": counters["emitted"],
            "loops_cut": counters["loops_cut"],
            "reloads": dict(parts.reloads),
        },
    }


def history(parts: Parts, query: Query) -> dict[str, Any]:
    """Return the `history` answer."""
    table = [route.name for route in parts.routes]
    if query.route is not None:
        known = sorted(set(table) | parts.dispatcher.history.names())
        if not any(fnmatchcase(name, query.route) for name in known):
            # A typo would otherwise read as "no events match": say which names there are.
            return {"generation": parts.dispatcher.generation, "unknown_route": query.route,
                    "routes": known}  # fmt: skip
    events = parts.dispatcher.history.query(
        route=query.route,
        event=query.event,
        limit=query.limit,
        verbose=query.verbose,
        table=table,
    )
    return {"generation": parts.dispatcher.generation, "events": events}


async def answer(parts: Parts | None, data: bytes) -> bool:
    """Answer a `status` or `history` request on its reply channel, if it names us."""
    try:
        query = control.parse_query(data)
    except ValueError as exc:  # untrusted: one bounded line, nothing of the data echoed
        log.warning(
            "ignored a control request on %s (%d bytes): %s",
            control.QUERY_CHANNEL,
            len(data),
            exc,
        )
        return False
    if parts is None or not query.wants(parts.dispatcher.instance):
        return False
    body = await status(parts) if query.op == "status" else history(parts, query)
    reply = control.answer(parts.dispatcher.instance, query.op, body)
    await parts.publisher.publish(query.reply, reply)
    return True
