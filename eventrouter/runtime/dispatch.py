"""Event -> matching routes -> actions: ordering, concurrency, derived events, loop guard.

The dispatcher talks to a small ``Publisher`` protocol, not to Redis, so it can be driven
without a server. ``receive`` is synchronous and cheap: it parses the payload, evaluates
``when:`` at arrival and queues one job per matching route; a worker per busy route runs its
jobs one at a time in arrival order (``mode: queued``), routes run side by side, and the step
runner caps the processes running at once.

Each action of a run is carried out by the ``ActionRunner`` (``runtime/actions.py``);
failures go to the journal through the ``FailureRecorder`` (``runtime/recorder.py``); the
protocols it talks to are in ``runtime/ports.py``.
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
from eventrouter.runtime.history import EventTrace, History, RouteTrace
from eventrouter.runtime.identity import instance_name
from eventrouter.runtime.lanes import Clock, Job, Scheduler
from eventrouter.runtime.ports import FailureJournal, Publisher, TaskSubmitter, router_context
from eventrouter.runtime.recorder import FailureRecorder
from eventrouter.runtime.runlines import RunLines
from eventrouter.runtime.runner import Runner
from eventrouter.runtime.stats import Histograms

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
        self.actions = ActionRunner(
            runner,
            publisher,
            tasks,
            step_timeout=settings.step_timeout,
            counters=self.counters,
            recorder=self.recorder,
            history=self.history,
            lines=self.lines,
            chains=self.chains,
            comes_back=self.comes_back,
            # Retry backoff waits on asyncio's clock, or a test's.
            sleep=clock.sleep if clock is not None else asyncio.sleep,
        )
        #: The route table's generation: 1 at start, one more per reload that took effect.
        self.generation = 1
        #: Runs by (route, outcome), derived events by route, durations by route.
        self.runs: Counter[tuple[str, str]] = Counter()
        self.derived = self.actions.derived
        self.run_seconds = Histograms()
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
        file changed, and actions that start later render with the newest one seen.
        """
        env = self.environment.current()
        if env is not self.context.env:
            self.context = replace(self.context, env=env)
        return self.context

    def swap(self, index: RouteIndex) -> None:
        """Use a new route table for events from now on; queued jobs keep their version."""
        self.index = index
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
                self._not_fired(item, event)
                if trace is not None:
                    trace.add(name, *_not_fired_outcome(item))
        if not queued:
            log.debug("event %r: nothing runs: %s", event.channel, _why_nothing(decision))
        return queued

    def _not_fired(self, item: RouteDecision, event: Event) -> None:
        """Log (and count, and journal when it is an error) why a matching route does not run."""
        route = item.route
        if item.elsewhere is not None:
            log.debug("route %s: event %r: not run: %s", route.name, event.channel, item.reason)
            return
        if (
            item.schema_error is None
            and item.key_error is None
            and item.runs_on_error is None
            and (item.condition is None or item.condition.error is None)
        ):
            return  # told once per event, in execute_decision's line
        if item.schema_error is not None:
            self.counters["schema_rejected"] += 1
            log.error(
                "route %s (%s:%d): event %r rejected by schema: %s",
                route.name,
                route.file,
                route.line,
                event.channel,
                item.schema_error,
            )
            return
        where, counter = ("key", "key_errors") if item.key_error else ("when", "condition_errors")
        if item.runs_on_error is not None:
            where, counter = "runs_on", "condition_errors"
        reason = (
            item.key_error
            or item.runs_on_error
            or (item.condition.error if item.condition else None)
            or ""
        )
        self.counters[counter] += 1
        log.error(
            "route %s (%s:%d): event %r: %s: %s",
            route.name,
            route.file,
            route.line,
            event.channel,
            where,
            reason,
        )
        self.recorder.before_run(Job(route, event, item.captures), where, reason)

    def submit(self, item: RouteDecision, event: Event, trace: RouteTrace | None = None) -> int:
        """Hand a run to the scheduler under its key; return 1 when admitted, else 0."""
        job = Job(item.route, event, item.captures, item.key, trace)
        admitted = self.scheduler.submit(job)
        if not admitted:
            self.runs[(item.route.name, "dropped")] += 1
        return int(admitted)

    async def execute(self, job: Job) -> bool:
        """Run a job's actions in order; the first failing action stops the list."""
        route, event = job.route, job.event
        started, clock = time.time(), time.monotonic()
        steps = 0
        rendered = render_run(route, event, job.captures, self.context)
        for position, action in enumerate(rendered, 1):
            failed, ran = await self.actions.run(job, position, action, self.context.env)
            steps += ran
            if failed is not None:
                self.counters["runs_failed"] += 1
                self._ended(job, failed, time.monotonic() - clock, steps)
                left = len(route.actions) - position
                if left:
                    log.error(
                        "route %s: event %r: action %d failed, %d later action(s) not run",
                        route.name,
                        event.channel,
                        position,
                        left,
                    )
                await self.recorder.run_failed(
                    job, position, action.action.describe(), failed, started
                )
                return False
        self.counters["runs_ok"] += 1
        self._ended(job, None, time.monotonic() - clock, steps)
        return True

    def _ended(self, job: Job, failed: Failed | None, seconds: float, steps: int) -> None:
        """Count, time, trace and log (one INFO line) a run that ended."""
        name = job.route.name
        outcome = outcomes.RAN if failed is None else outcomes.FAILED
        if failed is not None and failed.status == "loop guard":
            outcome = outcomes.LOOP_GUARD
        self.runs[(name, outcome)] += 1
        self.run_seconds[name].observe(seconds)
        status = "ok" if failed is None else failed.status
        if job.trace is not None:
            job.trace.set(outcome, job.trace.detail if failed is None else failed.reason)
            job.trace.duration, job.trace.steps, job.trace.status = seconds, steps, status
        self.lines.ended(
            job,
            "route %s: event %r: run %s in %.3fs, %d step(s) run%s",
            name,
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


def _not_fired_outcome(item: RouteDecision) -> tuple[str, str]:
    """Return the history outcome of a matching route that does not fire, and its detail.

    A route kept from running on this router (``runs_on``) is ``outcomes.SKIPPED_HERE``.
    """
    if item.elsewhere is not None:
        return outcomes.SKIPPED_HERE, item.reason or ""
    condition = item.condition
    plain = item.schema_error is None and item.key_error is None
    if plain and condition is not None and condition.error is None:
        return outcomes.CONDITION_FALSE, item.reason or ""
    return outcomes.REJECTED, item.reason or ""


def _why_nothing(decision: Decision) -> str:
    """Return the one reason given at DEBUG for an event that runs nothing."""
    if not decision.routes:
        return "no route or events folder matches it"
    return "; ".join(
        f"route {item.route.name}: {item.reason or 'dropped (logged above)'}"
        for item in decision.routes
    )
