"""Event -> matching routes -> actions: ordering, concurrency, derived events, loop guard.

The dispatcher talks to a small ``Publisher`` protocol, not to Redis, so it can be driven
without a server. ``receive`` is synchronous and cheap: it parses the payload, evaluates
``when:`` at arrival and queues one job per matching route; a worker per busy route runs its
jobs one at a time in arrival order (``mode: queued``), routes run side by side, and the step
runner caps the processes running at once.

A run's actions are rendered when it starts (``engine/render.py``) and carried out one by
one by the ``ActionRunner`` (``runtime/actions.py``). What becomes of runs (ended, not
fired, not admitted, an emit refused) is told once to each run listener
(``runtime/runevents.py``): the counters, the metrics, the history and the failure journal
(``runtime/recorder.py``) keep their own accounts. The protocols the dispatcher talks to
are in ``runtime/ports.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace

from eventrouter.config.patterns import RouteIndex
from eventrouter.engine.chains import ChainTracker, chain_text
from eventrouter.engine.decide import (
    Decision,
    RouteDecision,
    RouterContext,
    decide_message,
)
from eventrouter.engine.render import render_run
from eventrouter.model import ChainLink, Event, RouterInfo, Settings
from eventrouter.runtime import history as outcomes
from eventrouter.runtime.actions import ActionRunner
from eventrouter.runtime.envfile import ModuleEnvironment
from eventrouter.runtime.failed import Failed
from eventrouter.runtime.history import EventTrace, History, RouteTrace, RunTraces
from eventrouter.runtime.identity import instance_name
from eventrouter.runtime.lanes import Clock, Job, Scheduler
from eventrouter.runtime.ports import FailureJournal, Publisher, TaskSubmitter, router_context
from eventrouter.runtime.recorder import FailureRecorder
from eventrouter.runtime.runevents import (
    NotFired,
    RunCounters,
    RunDropped,
    RunEnded,
    RunListener,
)
from eventrouter.runtime.runlines import RunLines
from eventrouter.runtime.runner import Runner
from eventrouter.runtime.stats import RunMetrics

log = logging.getLogger(__name__)

#: Derived-event channels whose return is known (routed here or not); forgotten when full.
RETURNS_KNOWN = 1024


async def _wait_unless(
    tasks: Sequence[asyncio.Task[None]], seconds: float, hurry: asyncio.Event
) -> set[asyncio.Task[None]]:
    """Wait for ``tasks`` up to ``seconds`` or until ``hurry`` is set; return those left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    left = {task for task in tasks if not task.done()}
    hurried = asyncio.create_task(hurry.wait())
    try:
        while left and not hurry.is_set() and loop.time() < deadline:
            await asyncio.wait(
                [*left, hurried], timeout=deadline - loop.time(), return_when="FIRST_COMPLETED"
            )
            left = {task for task in left if not task.done()}
    finally:
        hurried.cancel()
    return left


class Dispatcher:
    """Match events to routes and run their actions."""

    def __init__(
        self,
        settings: Settings,
        runner: Runner,
        publisher: Publisher,
        index: RouteIndex,
        *,
        journal: FailureJournal | None = None,
        instance: str | None = None,
        router: RouterInfo | None = None,
        tasks: TaskSubmitter | None = None,
        environment: ModuleEnvironment | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.index = index
        self._env_read = _reads_env(index)
        self.counters: Counter[str] = Counter()
        #: This router's name in the journal: retries name it.
        self.instance = instance if instance is not None else instance_name(settings.instance)
        where = router if router is not None else RouterInfo(instance=self.instance)
        self.context = router_context(settings, where)
        #: ``env`` in templates: what the steps this router starts see (README "Routes").
        self.environment = environment or ModuleEnvironment(runner.base_env)
        #: Where failed runs are recorded; a journal of None records nothing (tests, tools).
        self.recorder = FailureRecorder(
            journal, self.instance, settings.journal_payload, self.counters
        )
        self.scheduler = Scheduler(
            self.execute,
            call_later=clock.call_later if clock is not None else None,
            queue_limit=settings.queue_limit,
            max_pending=settings.max_pending,
            counters=self.counters,
            max_bytes=settings.max_queued_bytes,
            on_drop=self.recorder.dropped,
        )
        self.chains = ChainTracker()
        #: Each run's closing line, logged after the "emitted" lines of its emits.
        self.lines = RunLines()
        #: The last events and what each route did with them (`eventrouter history`).
        self.history = History()
        #: Runs by (route, outcome) and their durations by route.
        self.metrics = RunMetrics()
        self.runs, self.run_seconds = self.metrics.runs, self.metrics.run_seconds
        #: Told what happens to runs, in this order: counters, metrics, history, journal.
        self.listeners: tuple[RunListener, ...] = (
            RunCounters(self.counters),
            self.metrics,
            RunTraces(),
            self.recorder,
        )
        self.actions = ActionRunner(
            runner,
            publisher,
            tasks,
            step_timeout=settings.step_timeout,
            counters=self.counters,
            listeners=self.listeners,
            history=self.history,
            lines=self.lines,
            chains=self.chains,
            comes_back=self.comes_back,
            # Retry backoff waits on asyncio's clock, or a test's.
            sleep=clock.sleep if clock is not None else asyncio.sleep,
        )
        #: The route table's generation: 1 at start, one more per reload that took effect.
        self.generation = 1
        #: Derived events by route, step durations by route (the action runner's).
        self.derived = self.actions.derived
        self.step_seconds = self.actions.step_seconds
        #: Derived-event channel -> whether Redis delivers it back here (the current table).
        self._returns: dict[str, bool] = {}

    @property
    def router(self) -> RouterInfo:
        """Return where this router runs, as the engine decides with it."""
        return self.context.router

    def set_leader(self, leader: bool) -> None:
        """Decide the events from now on as the leader's router, or not (the role changed)."""
        if leader != self.context.router.leader:
            self.context = replace(self.context, router=replace(self.context.router, leader=leader))

    def current_context(self) -> RouterContext:
        """Return the context to decide an event with now: ``env`` as it is at this moment.

        One ``stat`` of the module's environment file; the context is replaced only when the
        file changed, and actions that start later render with the newest one seen. None
        when no route of the table reads the environment (``Route.reads_env``).
        """
        if not self._env_read:
            return self.context
        env = self.environment.current()
        if env is not self.context.env:
            self.context = replace(self.context, env=env)
        return self.context

    def swap(self, index: RouteIndex) -> None:
        """Use a new route table for events from now on; queued jobs keep their version."""
        self.index = index
        self._env_read = _reads_env(index)
        self._returns.clear()

    def comes_back(self, channel: str) -> bool:
        """Return True when a derived event on ``channel`` comes back here: a route or the
        events folders of the current table take it, so this router subscribes to it.

        Only those are remembered until they return (the loop guard's chain, the history's
        link, recovery after a subscription break): any other is never seen again, and
        remembering it would hold memory for nothing.
        """
        found = self._returns.get(channel)
        if found is None:
            folders = bool(self.context.events_dirs) and "/event/" in channel  # */event/*
            found = folders or bool(self.index.match(channel))
            if len(self._returns) >= RETURNS_KNOWN:
                self._returns.clear()
            self._returns[channel] = found
        return found

    @property
    def recording(self) -> list[asyncio.Task[None]]:
        """Return the failure journal writes in flight."""
        return self.recorder.recording

    @property
    def busy(self) -> int:
        """Return how many jobs are queued or running."""
        return self.scheduler.pending + len(self.scheduler.running)

    def receive(self, channel: str, data: bytes) -> bool:
        """Handle one message from Redis: decide, then queue what fires.

        Return True when a run starts for it at once (a lane that was idle): the intake then
        lets it start before reading on, rather than after.
        """
        started = self.scheduler.workers_started
        self._receive(channel, data)
        return self.scheduler.workers_started != started

    def _receive(self, channel: str, data: bytes) -> None:
        self.counters["events"] += 1
        chain = self.chains.adopt(channel, data)
        trace = self._trace(channel, data, chain)
        decision = decide_message(self.index, channel, data, self.current_context(), chain)
        if decision.refused is not None:
            self.counters["dropped_oversize"] += 1
            trace.refused = decision.refused
            log.error("dropped event on %r: %s", channel, decision.refused)
            return
        self.execute_decision(decision, trace)

    def _trace(self, channel: str, data: bytes, chain: tuple[ChainLink, ...]) -> EventTrace:
        return self.history.start(channel, data, self.generation, [link.route for link in chain])

    def recover(self, queued: Mapping[tuple[str, bytes], int]) -> int:
        """Handle here, once, the derived events published but never seen back; return how many.

        Called when the subscription is back after a break and before the outbox resumes:
        what this router published and had not come back by then was lost to its own
        subscription (Redis delivered it to every other subscriber), so it is handled
        locally instead of being published twice. ``queued`` is what still waits to be sent.
        """
        recovered = 0
        for channel, data, chain in self.chains.unreturned(queued):
            decision = decide_message(self.index, channel, data, self.current_context(), chain)
            if decision.refused is not None or not decision.routes:
                continue  # not routed here: it was never coming back to this router
            self.counters["events"] += 1
            self.counters["recovered"] += 1
            recovered += 1
            log.warning(
                "recovered derived event %r (%s): published while the subscription was down, "
                "handled here once",
                channel,
                chain_text(chain),
            )
            self.execute_decision(decision, self._trace(channel, data, chain))
        return recovered

    def execute_decision(self, decision: Decision, trace: EventTrace | None = None) -> int:
        """Queue a run of every route and events folder that fires; log the others."""
        event = decision.event
        if decision.name_refused is not None:
            self.counters["refused_names"] += 1
            log.warning(
                "refused event name %r on channel %r: %s",
                event.name,
                event.channel,
                decision.name_refused,
            )
        queued = 0
        for item in decision.routes:
            name = item.route.name
            if item.fires:
                step = trace.add(name, outcomes.QUEUED) if trace is not None else None
                queued += self.submit(item, event, step)
            else:
                self._not_fired(item, event, trace)
        if not queued:
            log.debug("event %r: nothing runs: %s", event.channel, _why_nothing(decision))
        return queued

    def _not_fired(self, item: RouteDecision, event: Event, trace: EventTrace | None) -> None:
        """Log why a matching route does not run, and tell the listeners."""
        route = item.route
        problem, reason = "", ""
        if item.elsewhere is not None:
            log.debug("route %s: event %r: not run: %s", route.name, event.channel, item.reason)
        elif item.schema_error is not None:
            problem, reason = "schema", item.schema_error
            log.error(
                "route %s (%s:%d): event %r rejected by schema: %s",
                route.name,
                route.file,
                route.line,
                event.channel,
                reason,
            )
        elif (
            item.key_error is not None
            or item.runs_on_error is not None
            or (item.condition is not None and item.condition.error is not None)
        ):
            problem = "key" if item.key_error else "when"
            if item.runs_on_error is not None:
                problem = "runs_on"
            reason = (
                item.key_error
                or item.runs_on_error
                or (item.condition.error if item.condition else None)
                or ""
            )
            log.error(
                "route %s (%s:%d): event %r: %s: %s",
                route.name,
                route.file,
                route.line,
                event.channel,
                problem,
                reason,
            )
        # Else told once per event, in execute_decision's line.
        not_fired = NotFired(item, event, trace, problem, reason)
        for listener in self.listeners:
            listener.not_fired(not_fired)

    def submit(self, item: RouteDecision, event: Event, trace: RouteTrace | None = None) -> int:
        """Hand a run to the scheduler under its key; return 1 when admitted, else 0."""
        job = Job(item.route, event, item.captures, item.key, trace)
        admitted = self.scheduler.submit(job)
        if not admitted:
            dropped = RunDropped(job)
            for listener in self.listeners:
                listener.run_dropped(dropped)
        return int(admitted)

    async def execute(self, job: Job) -> bool:
        """Run a job's actions in order; the first failing action stops the list."""
        route, event = job.route, job.event
        started, clock = time.time(), time.monotonic()
        steps, failed, position = 0, None, 0
        rendered = render_run(route, event, job.captures, self.context)
        for position, action in enumerate(rendered, 1):
            failed, ran = await self.actions.run(job, position, action, self.context.env)
            steps += ran
            if failed is not None:
                break
        seconds = time.monotonic() - clock
        self._log_ended(job, failed, seconds, steps)
        if failed is None:
            ended = RunEnded(job, outcomes.RAN, None, seconds, steps, started)
        else:
            left = len(route.actions) - position
            if left:
                log.error(
                    "route %s: event %r: action %d failed, %d later action(s) not run",
                    route.name,
                    event.channel,
                    position,
                    left,
                )
            outcome = outcomes.LOOP_GUARD if failed.status == "loop guard" else outcomes.FAILED
            action_text = rendered[position - 1].action.describe()
            ended = RunEnded(job, outcome, failed, seconds, steps, started, position, action_text)
        # Each listener in turn; the journal's write is waited for, as a failed run's was.
        for listener in self.listeners:
            pending = listener.run_ended(ended)
            if pending is not None:
                await pending
        return failed is None

    def _log_ended(self, job: Job, failed: Failed | None, seconds: float, steps: int) -> None:
        """Log the one INFO line of a run that ended (after the "emitted" lines of its emits)."""
        self.lines.ended(
            job,
            "route %s: event %r: run %s in %.3fs, %d step(s) run%s",
            job.route.name,
            job.event.channel,
            "ok" if failed is None else "failed",
            seconds,
            steps,
            "" if failed is None else f" ({failed.status})",
        )

    async def close(self, grace: float, hurry: asyncio.Event | None = None) -> None:
        """Stop starting runs, let running ones finish for ``grace`` seconds, then kill them.

        ``hurry`` (a second SIGTERM/SIGINT) ends the wait and kills the steps at once.
        """
        hurry = hurry if hurry is not None else asyncio.Event()
        not_started = self.scheduler.close()
        recording = asyncio.create_task(self.recorder.not_started(not_started))
        escalate = asyncio.create_task(self._kill_when(hurry))
        running = self.scheduler.running
        try:
            if running:
                log.info("shutdown: waiting up to %.1fs for %d running run(s)", grace, len(running))
                pending = await _wait_unless(running, grace, hurry)
                if pending:
                    log.error(
                        "shutdown: %d run(s) still running after %.1fs; killing them",
                        len(pending),
                        grace,
                    )
                    steps = self.runner.running
                    # Cancelled, a run stops its steps (TERM, then KILL) and is journaled.
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    log.error("shutdown: killed %d step(s) still running", steps)
            await self.runner.terminate_all()  # anything not owned by a run
        finally:
            escalate.cancel()
        await self.recorder.killed(self.scheduler.killed, grace)
        await recording
        self.lines.flush()
        await self.recorder.settle()

    async def _kill_when(self, hurry: asyncio.Event) -> None:
        await hurry.wait()
        self.runner.kill_now()


def _why_nothing(decision: Decision) -> str:
    """Return the one reason given at DEBUG for an event that runs nothing."""
    if not decision.routes:
        return "no route or events folder matches it"
    return "; ".join(
        f"route {item.route.name}: {item.reason or 'dropped (logged above)'}"
        for item in decision.routes
    )


def _reads_env(index: RouteIndex) -> bool:
    """Return True when a route of ``index`` may read the module's environment."""
    return any(route.reads_env() for route in index.routes)
