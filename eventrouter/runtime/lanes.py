"""Run scheduling per route and key: modes, debounce, throttle, bounded queues.

A *lane* is one route, or one key of a route with ``key:``. The mode applies per lane:

* ``queued``: one run at a time, in arrival order (the default);
* ``parallel``: up to ``max`` runs at once, the rest queued in arrival order;
* ``single``: an event arriving while a run is going is dropped (logged, counted);
* ``restart``: an event arriving while a run is going stops it (TERM on its process group,
  then KILL) and runs instead.

``debounce`` runs once, with the last event, when the lane has been quiet that long;
``throttle`` runs the first event at once and coalesces the rest of each period into one
trailing run. Queues are bounded per lane (``queue_limit``) and in all (``max_pending``),
and so is the payload they hold, in bytes (``max_bytes``): a burst of large events must not
take the router's memory. What is dropped is an error, counted and handed to ``on_drop``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from eventrouter.model import Event, Route
from eventrouter.runtime.history import COALESCED, DROPPED, RouteTrace

log = logging.getLogger(__name__)

BYTES_FULL = "of payload bytes in all queues (--max-queued-bytes)"
#: Jobs a worker runs back to back (when they do not wait) before yielding to other tasks.
YIELD_EVERY = 32


class Timer(Protocol):
    """A pending call: an ``asyncio.TimerHandle``, or a fake clock's in tests."""

    def cancel(self) -> None:
        """Do not make the call."""
        ...


#: Calls ``callback(lane)`` after ``delay`` seconds (``loop.call_later`` by default).
CallLater = Callable[[float, Callable[["Lane"], None], "Lane"], Timer]


class Clock(Protocol):
    """What waits for time: lane timers and retry backoff (the loop's, or a test's clock)."""

    def call_later(self, delay: float, callback: Callable[[Lane], None], lane: Lane) -> Timer:
        """Call ``callback(lane)`` after ``delay`` seconds."""
        ...

    async def sleep(self, delay: float) -> None:
        """Return after ``delay`` seconds."""
        ...


@dataclass(frozen=True)
class Job:
    """One run of one route (version kept) for one event."""

    route: Route
    event: Event
    captures: dict[str, str]
    key: str = ""
    #: Where `eventrouter history` learns what became of this run.
    trace: RouteTrace | None = field(default=None, compare=False)

    def mark(self, outcome: str, detail: str = "") -> None:
        """Record what became of this run in its history trace, if it has one."""
        if self.trace is not None:
            self.trace.set(outcome, detail)


@dataclass
class Lane:
    """The runs of one route and key."""

    name: str
    route: Route
    queue: deque[Job] = field(default_factory=deque)
    running: set[asyncio.Task[None]] = field(default_factory=set)
    timer: Timer | None = None
    held: Job | None = None  # the last event of a debounce/throttle period
    held_count: int = 0
    busy: int = 0  # workers inside a run (the others are about to take the next job)

    @property
    def idle(self) -> bool:
        """Return True when the lane has nothing queued, running or held."""
        return not self.queue and not self.running and self.timer is None and self.held is None


class Scheduler:
    """Admit jobs into lanes and start them as the route's mode allows."""

    def __init__(
        self,
        execute: Callable[[Job], Awaitable[Any]],
        *,
        queue_limit: int,
        max_pending: int,
        counters: Counter[str],
        call_later: CallLater | None = None,
        max_bytes: int = 64 * 1024 * 1024,
        on_drop: Callable[[Job, str], None] | None = None,
    ) -> None:
        self._execute = execute
        self._call_later = call_later  # a fake clock in the scheduler's own tests
        self.queue_limit = queue_limit
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.counters = counters
        self._on_drop = on_drop
        self.pending_bytes = 0  # payload bytes of the jobs queued or held
        self.lanes: dict[str, Lane] = {}
        self.pending = 0  # jobs queued or held in all lanes
        #: Lane workers started so far: a message that starts one has a run about to begin.
        self.workers_started = 0
        #: Lane workers alive, each inside a run or about to take its lane's next job.
        self.workers = 0
        #: Told each time a worker ends: whoever waits for the runs to settle looks again then
        #: (eventrouter.testing), rather than polling.
        self.on_worker_end: Callable[[], None] | None = None
        self.closing = False
        #: Runs stopped because the router was stopping (not a restart): to be journaled.
        self.killed: list[Job] = []

    def submit(self, job: Job) -> bool:
        """Admit a job; return False when it was dropped (and logged)."""
        if self.closing:
            return False
        route = job.route
        name = f"{route.name}[{job.key}]" if route.key is not None else route.name
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = Lane(name, route)
        if route.debounce is not None:
            return self._hold(lane, job, route.debounce, restart_timer=True)
        if route.throttle is not None:
            if lane.timer is None:
                lane.timer = self._later(route.throttle, self._period_over, lane)
                return self._admit(lane, job)
            return self._hold(lane, job, route.throttle, restart_timer=False)
        return self._admit(lane, job)

    def _later(self, delay: float, callback: Callable[[Lane], None], lane: Lane) -> Timer:
        if self._call_later is not None:
            return self._call_later(delay, callback, lane)
        return asyncio.get_running_loop().call_later(delay, callback, lane)

    def _hold(self, lane: Lane, job: Job, delay: float, *, restart_timer: bool) -> bool:
        """Keep only the latest event of a debounce/throttle period."""
        held = len(lane.held.event.raw) if lane.held is not None else 0
        if self.pending_bytes - held + len(job.event.raw) > self.max_bytes:
            return self._overflow(lane, job, BYTES_FULL)
        if lane.held is None:
            if self.pending >= self.max_pending:
                return self._overflow(lane, job, "in all queues (--max-pending)")
            self.pending += 1
        else:
            how = "debounce" if lane.route.debounce is not None else "throttle"
            lane.held.mark(COALESCED, f"by {how}: a later event runs instead")
        self.pending_bytes += len(job.event.raw) - held
        lane.held, lane.held_count = job, lane.held_count + 1
        if restart_timer:
            if lane.timer is not None:
                lane.timer.cancel()
            lane.timer = self._later(delay, self._release_held, lane)
        return True

    def _release_held(self, lane: Lane) -> None:
        """Debounce: the lane has been quiet long enough; run its last event."""
        lane.timer = None
        self._flush_held(lane)
        self._cleanup(lane)

    def _period_over(self, lane: Lane) -> None:
        """Throttle: a period ended; run what it coalesced, which opens a new period."""
        lane.timer = None
        if lane.held is not None and not self.closing:
            assert lane.route.throttle is not None
            lane.timer = self._later(lane.route.throttle, self._period_over, lane)
            self._flush_held(lane)
        self._cleanup(lane)

    def _flush_held(self, lane: Lane) -> None:
        job, count = lane.held, lane.held_count
        lane.held, lane.held_count = None, 0
        if job is None:
            return
        self.pending -= 1
        self.pending_bytes -= len(job.event.raw)
        if count > 1:
            self.counters["coalesced"] += count - 1
            log.info(
                "route %s: one run for %d events (the last one, %r) coalesced by %s",
                lane.name,
                count,
                job.event.channel,
                "debounce" if lane.route.debounce is not None else "throttle",
            )
        self._admit(lane, job)

    def _admit(self, lane: Lane, job: Job) -> bool:
        """Apply the mode: queue (and start), drop or restart."""
        mode = job.route.mode
        if mode == "single" and lane.running:
            self.counters["dropped_single"] += 1
            log.info(
                "route %s: event %r dropped: a run is going (mode: single; %d dropped so far)",
                lane.name,
                job.event.channel,
                self.counters["dropped_single"],
            )
            job.mark(DROPPED, "a run is going (mode: single)")
            return False
        if mode == "restart" and lane.running:
            self.counters["restarted"] += 1
            log.info(
                "route %s: event %r restarts the run going (mode: restart)",
                lane.name,
                job.event.channel,
            )
            self.pending -= len(lane.queue)
            self.pending_bytes -= sum(len(queued.event.raw) for queued in lane.queue)
            for waiting in lane.queue:
                waiting.mark(DROPPED, "replaced by a later event (mode: restart)")
            lane.queue.clear()
            for task in lane.running:
                task.cancel()  # the new job starts once the stopped run is gone
        if len(lane.queue) >= self.queue_limit:
            return self._overflow(
                lane, job, f"for this route ({len(lane.queue)} queued, --queue-limit)"
            )
        if self.pending >= self.max_pending:
            return self._overflow(lane, job, "in all queues (--max-pending)")
        if self.pending_bytes + len(job.event.raw) > self.max_bytes:
            return self._overflow(lane, job, BYTES_FULL)
        lane.queue.append(job)
        self.pending += 1
        self.pending_bytes += len(job.event.raw)
        self._pump(lane)
        return True

    def _overflow(self, lane: Lane, job: Job, where: str) -> bool:
        self.counters["dropped_queue_full"] += 1
        log.error(
            "dropped event %r for route %s: queue full %s", job.event.channel, lane.name, where
        )
        if self._on_drop is not None:
            self._on_drop(job, f"queue full {where}")
        job.mark(DROPPED, f"queue full {where}")
        return False

    def _pump(self, lane: Lane) -> None:
        """Start workers while the mode allows and jobs wait."""
        limit = lane.route.max_runs if lane.route.mode == "parallel" else 1
        # A worker busy with a run takes no new job until it ends: count only the idle ones,
        # or a run arriving alone while another goes would wait for it (parallel mode).
        while (
            len(lane.running) < limit
            and len(lane.queue) > len(lane.running) - lane.busy
            and not self.closing
        ):
            if any(task.cancelling() for task in lane.running):
                return  # a restart: wait until the stopped run is gone
            task = asyncio.create_task(self._work(lane), name=f"route:{lane.name}")
            self.workers_started += 1
            self.workers += 1
            lane.running.add(task)
            task.add_done_callback(lambda done: self._finished(lane, done))

    async def _work(self, lane: Lane) -> None:
        """Run the lane's jobs one after another until its queue is empty."""
        done = 0
        while lane.queue and not self.closing:
            job = lane.queue.popleft()
            self.pending -= 1
            self.pending_bytes -= len(job.event.raw)
            lane.route = job.route  # a reload may have changed the route since
            lane.busy += 1
            try:
                await self._execute(job)
            except asyncio.CancelledError:
                log.info("route %s: run for %r stopped", lane.name, job.event.channel)
                if self.closing:
                    self.killed.append(job)
                job.mark(DROPPED, "stopped while running (mode: restart, or the router stopped)")
                raise
            except Exception:  # a bug in one run must not stop the lane
                log.exception(
                    "route %s: internal error in a run for %r", lane.name, job.event.channel
                )
            finally:
                lane.busy -= 1
            done += 1
            if done % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the intake and the other lanes have their turn

    def _finished(self, lane: Lane, task: asyncio.Task[None]) -> None:
        lane.running.discard(task)
        self.workers -= 1
        self._pump(lane)
        self._cleanup(lane)
        if self.on_worker_end is not None:
            self.on_worker_end()

    def _cleanup(self, lane: Lane) -> None:
        if lane.idle and self.lanes.get(lane.name) is lane:
            del self.lanes[lane.name]

    @property
    def running(self) -> list[asyncio.Task[None]]:
        """Return every run going."""
        return [task for lane in self.lanes.values() for task in lane.running]

    def close(self) -> list[Job]:
        """Stop admitting and starting jobs; return the jobs that were waiting."""
        self.closing = True
        dropped: list[Job] = []
        for lane in self.lanes.values():
            dropped += lane.queue
            if lane.held is not None:
                dropped.append(lane.held)
            lane.queue.clear()
            lane.held = None
            if lane.timer is not None:
                lane.timer.cancel()
                lane.timer = None
        self.pending = self.pending_bytes = 0
        for job in dropped:
            job.mark(DROPPED, "not started: the router stopped")
        return dropped
