"""Event -> matching routes -> actions: ordering, concurrency, derived events, loop guard.

The dispatcher talks to a small ``Publisher`` protocol, not to Redis, so it can be driven
without a server. ``receive`` is synchronous and cheap: it parses the payload, evaluates
``when:`` at arrival and queues one job per matching route; a worker per busy route runs its
jobs one at a time in arrival order (``mode: queued``), routes run side by side, and the step
runner caps the processes running at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from eventrouter.config.handlers import folder_exists
from eventrouter.config.patterns import RouteIndex
from eventrouter.engine.chains import ChainTracker, chain_text
from eventrouter.engine.decide import (
    ActionRefused,
    Decision,
    RouteDecision,
    RouterContext,
    Task,
    action_context,
    decide_message,
    render_emit,
    render_env,
    render_task,
)
from eventrouter.errors import TaskError
from eventrouter.model import (
    ONE_NODE,
    ChainLink,
    EmitAction,
    Event,
    ExecAction,
    Route,
    RouterInfo,
    RunAction,
    Settings,
    TaskAction,
    TaskResult,
)
from eventrouter.runtime import execute
from eventrouter.runtime import history as outcomes
from eventrouter.runtime.envfile import ModuleEnvironment
from eventrouter.runtime.failed import Failed, handler_failed
from eventrouter.runtime.history import EventTrace, History, RouteTrace
from eventrouter.runtime.identity import instance_name
from eventrouter.runtime.journal import Failure, journal_payload
from eventrouter.runtime.lanes import Clock, Job, Scheduler
from eventrouter.runtime.runlines import RunLines
from eventrouter.runtime.runner import Runner
from eventrouter.runtime.stats import Histograms

log = logging.getLogger(__name__)

#: Journal writes in flight at most: a flood of drops must not queue a task for each.
MAX_RECORDING = 256
#: Derived-event channels whose return is known (routed here or not); forgotten when full.
RETURNS_KNOWN = 1024


class FailureJournal(Protocol):
    """Where failed runs go."""

    async def record(self, failure: Failure) -> str:
        """Record a failure; return its id, or "" when it could not be recorded."""
        ...


class Receipt(Protocol):
    """Told what became of one derived event handed to the publisher."""

    def sent(self, receivers: int) -> None:
        """The event went out."""

    def refused(self, reason: str) -> None:
        """Redis refused to publish this event alone."""


class Publisher(Protocol):
    """Where derived events go."""

    async def publish(self, channel: str, data: bytes, receipt: Receipt | None = None) -> None:
        """Hand ``data`` over for publication on ``channel``, in order."""
        ...


class TaskSubmitter(Protocol):
    """Where ``task:`` actions go: NS8 agents' queues on the leader's Redis."""

    async def run(
        self,
        agent: str,
        action: str,
        data: Any,
        *,
        limit: float,
        wait: bool = True,
        extra: dict[str, Any] | None = None,
        parent: str = "",
    ) -> TaskResult:
        """Submit a task; unless ``wait`` is false, wait for its exit code; raise TaskError."""
        ...


#: Lines of a failed task's ``error`` text that reach the log.
TASK_ERROR_LINES = 5


def router_context(settings: Settings, router: RouterInfo = ONE_NODE) -> RouterContext:
    """Return what the engine needs of the settings to decide."""
    return RouterContext(
        events_dirs=tuple(settings.events_dirs),
        max_depth=settings.max_depth,
        max_payload=settings.max_payload,
        folder_exists=folder_exists,
        router=router,
    )


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


class _EmitReceipt:
    """Log, count and journal what Redis answered for one derived event."""

    __slots__ = ("action", "channel", "data", "dispatcher", "job", "position", "started")

    def __init__(
        self,
        dispatcher: Dispatcher,
        job: Job,
        position: int,
        action: EmitAction,
        message: tuple[str, bytes],
    ) -> None:
        self.dispatcher, self.job, self.position, self.action = dispatcher, job, position, action
        self.channel, self.data = message
        self.started = time.time()

    def sent(self, receivers: int) -> None:
        """Log the emit once it went out."""
        self.dispatcher.counters["emitted"] += 1
        self.dispatcher.derived[self.job.route.name] += 1
        log.info(
            "route %s emitted %r (caused by %r): %d receiver(s)",
            self.job.route.name,
            self.channel,
            self.job.event.channel,
            receivers,
        )
        trace = self.job.trace.owner if self.job.trace is not None else None
        for item in trace.derived if trace is not None else ():
            if item["channel"] == self.channel and "receivers" not in item:
                item["receivers"] = receivers
                break
        self.dispatcher.lines.answered(self.job)

    def refused(self, reason: str) -> None:
        """Fail this emit alone: error with route and event, and the failure journal."""
        self.dispatcher.emit_refused(self, reason)


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
        self.publisher = publisher
        self.index = index
        #: Where ``task:`` actions are submitted; None fails them with a clear reason.
        self.tasks = tasks
        self.counters: Counter[str] = Counter()
        #: Where failed runs are recorded; None records nothing (tests, tools).
        self.journal = journal
        #: This router's name in the journal: retries name it.
        self.instance = instance if instance is not None else instance_name(settings.instance)
        where = router if router is not None else RouterInfo(instance=self.instance)
        self.context = router_context(settings, where)
        #: ``env`` in templates: what the steps this router starts see (README "Routes").
        self.environment = environment or ModuleEnvironment(runner.base_env)
        self._recording: set[asyncio.Task[None]] = set()
        #: Waits out retry backoff: asyncio's, or a test's clock.
        self._sleep: Callable[[float], Awaitable[None]] = (
            clock.sleep if clock is not None else asyncio.sleep
        )
        self.scheduler = Scheduler(
            self.execute,
            call_later=clock.call_later if clock is not None else None,
            queue_limit=settings.queue_limit,
            max_pending=settings.max_pending,
            counters=self.counters,
            max_bytes=settings.max_queued_bytes,
            on_drop=self._dropped,
        )
        self.chains = ChainTracker()
        #: Each run's closing line, logged after the "emitted" lines of its emits.
        self.lines = RunLines()
        #: The last events and what each route did with them (`eventrouter history`).
        self.history = History()
        #: The route table's generation: 1 at start, one more per reload that took effect.
        self.generation = 1
        #: Runs by (route, outcome), derived events by route, durations by route.
        self.runs: Counter[tuple[str, str]] = Counter()
        self.derived: Counter[str] = Counter()
        self.run_seconds = Histograms()
        self.step_seconds = Histograms()
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
        return list(self._recording)

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
        self._journal_soon(Job(route, event, item.captures), where, reason)

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
        # Built for the first action that renders a template: an events folder (a run with
        # no env) needs none.
        context: dict[str, Any] = {}
        steps = 0
        for position, action in enumerate(route.actions, 1):
            if not context and (not isinstance(action, RunAction) or action.env):
                context = action_context(
                    route, event, job.captures, self.context.router, self.context.env
                )
            if isinstance(action, RunAction):
                failed, ran = await self._run(job, action, context)
                steps += ran
            elif isinstance(action, TaskAction):
                failed = await self._task(job, action, context)
            elif isinstance(action, ExecAction):
                failed, ran = await self._exec(job, action, context)
                steps += ran
            else:
                failed = await self._emit(job, action, context, position)
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
                await self._journal(job, position, action.describe(), failed, started)
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

    def emit_refused(self, receipt: _EmitReceipt, reason: str) -> None:
        """Record a derived event Redis refused to publish: that emit alone failed."""
        job = receipt.job
        self.counters["emits_refused"] += 1
        self.counters["runs_failed"] += 1
        log.error(
            "route %s (%s:%d): event %r: Redis refused to publish the derived event on %r: %s",
            job.route.name,
            job.route.file,
            receipt.action.line,
            job.event.channel,
            receipt.channel,
            reason,
        )
        self.chains.adopt(receipt.channel, receipt.data)  # it will never come back
        failed = Failed("publish refused", f"emit {receipt.channel}: {reason}")
        self._journal_task(
            job, receipt.position, receipt.action.describe(), failed, receipt.started
        )
        self.lines.answered(job)

    def _journal_task(
        self, job: Job, position: int, action: str, failed: Failed, started: float
    ) -> None:
        if self.journal is None:
            return
        task = asyncio.create_task(self._journal(job, position, action, failed, started))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    def _dropped(self, job: Job, reason: str) -> None:
        """Record a run dropped at a queue bound: it can be retried once the burst is over."""
        self._journal_soon(job, "dropped", reason, status="dropped")

    def _journal_soon(
        self, job: Job, where: str, reason: str, status: str = "template error"
    ) -> None:
        """Record a failure met before the run (``when``, ``key``, a drop): it can be retried."""
        if self.journal is None:
            return
        if len(self._recording) >= MAX_RECORDING:
            self.counters["journal_skipped"] += 1
            log.error(
                "route %s: event %r: %s not recorded in the failure journal: %d writes "
                "already waiting (%d not recorded so far)",
                job.route.name,
                job.event.channel,
                status,
                MAX_RECORDING,
                self.counters["journal_skipped"],
            )
            return
        # Built now, so the task holds the cut payload, not the event's.
        failure = self._failure(job, 0, where, Failed(status, f"{where}: {reason}"), time.time())
        task = asyncio.create_task(self._record(failure))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _journal(
        self,
        job: Job,
        position: int,
        action: str,
        failed: Failed,
        started: float,
        *,
        quiet: bool = False,
    ) -> None:
        if self.journal is not None:
            await self._record(self._failure(job, position, action, failed, started), quiet=quiet)

    def _failure(
        self, job: Job, position: int, action: str, failed: Failed, started: float
    ) -> Failure:
        payload, payload_b64, cut = journal_payload(job.event.raw, self.settings.journal_payload)
        return Failure(
            id="",
            time=time.time(),
            started=started,
            instance=self.instance,
            route=job.route.name,
            route_file=job.route.file,
            route_line=job.route.line,
            action=action,
            action_index=position,
            step=failed.step,
            status=failed.status,
            reason=failed.reason,
            channel=job.event.channel,
            payload=payload,
            payload_b64=payload_b64,
            tail=failed.tail,
            attempts=failed.attempts,
            payload_cut=cut,
        )

    async def _record(self, failure: Failure, *, quiet: bool = False) -> None:
        if self.journal is None:
            return
        failure_id = await self.journal.record(failure)
        if failure_id:
            self.counters["journaled"] += 1
        if failure_id and not quiet:
            log.info(
                "route %s: failure recorded as %s (eventrouter retry %s)",
                failure.route,
                failure_id,
                failure_id,
            )

    async def _run(
        self, job: Job, action: RunAction, context: dict[str, Any]
    ) -> tuple[Failed | None, int]:
        """Run a handler folder (with retries); return why it failed and the steps run."""
        route, event = job.route, job.event
        try:
            env = render_env(action, context)
        except ActionRefused as exc:
            log.error("route %s: event %r: %s", route.name, event.channel, exc.reason)
            return Failed(exc.status, exc.reason), 0
        tag = f"{route.name} [{event.channel}]"
        attempts = route.retry.attempts if route.retry is not None else 1
        ran = 0
        for attempt in range(1, attempts + 1):
            result = await self.runner.run_handler(
                action.path,
                payload=event.raw,
                env=env,
                event_name=event.name or "",
                event_source=event.source or "",
                timeout=action.timeout or self.settings.step_timeout,
                tag=tag,
                group=route.name,
            )
            for step in result.steps:
                if step.status is not None:
                    ran += 1
                    self.step_seconds[route.name].observe(step.duration)
            if result.ok:
                return None, ran
            await self._before_retry(f"{tag} attempt", route, attempt, result.error)
        if attempts > 1:
            log.error("%s all %d attempts failed; giving up", tag, attempts)
        return handler_failed(result, attempts), ran

    async def _exec(
        self, job: Job, action: ExecAction, context: dict[str, Any]
    ) -> tuple[Failed | None, int]:
        """Run an ``exec:`` command (with retries); return why it failed and the runs made."""
        return await execute.run_exec(
            self.runner,
            job,
            action,
            context,
            env=self.context.env,
            step_timeout=self.settings.step_timeout,
            before_retry=self._before_retry,
            durations=self.step_seconds[job.route.name],
        )

    async def _before_retry(self, what: str, route: Route, attempt: int, why: str | None) -> None:
        """Log a failed attempt and wait out its backoff, when ``retry:`` allows another."""
        attempts = route.retry.attempts if route.retry is not None else 1
        if route.retry is None or attempt >= attempts:
            return
        # Jitter spreads the retries of many routes failing together over time.
        delay = route.retry.delay(attempt) * random.uniform(0.5, 1.0)
        self.counters["retries"] += 1
        # The attempt's own error line said why (``why`` is kept for the debug log): the
        # reason once per attempt, not twice.
        log.debug("%s %d/%d failed: %s", what, attempt, attempts, why)
        log.warning("%s %d/%d failed; retrying in %.2fs", what, attempt, attempts, delay)
        await self._sleep(delay)

    async def _task(self, job: Job, action: TaskAction, context: dict[str, Any]) -> Failed | None:
        route, event = job.route, job.event
        try:
            task = render_task(route, action, event, context)
        except ActionRefused as exc:
            log.error("route %s: event %r: %s", route.name, event.channel, exc.reason)
            return Failed(exc.status, exc.reason)
        tag = f"{route.name} [{event.channel}]: task {task.action} on {task.agent}"
        attempts = route.retry.attempts if route.retry is not None else 1
        failed = Failed("task failed", "no attempt")
        for attempt in range(1, attempts + 1):
            failed_now = await self._task_once(tag, task)
            if failed_now is None:
                return None
            failed = failed_now
            await self._before_retry(f"{tag}: attempt", route, attempt, failed.reason)
        if attempts > 1:
            log.error("%s: all %d attempts failed; giving up", tag, attempts)
            status = f"retries exhausted ({attempts} attempts): {failed.status}"
            return Failed(status, failed.reason, failed.step, failed.tail, attempts)
        return failed

    async def _task_once(self, tag: str, task: Task) -> Failed | None:
        """Submit a task once; return why it failed, or None."""
        if self.tasks is None:
            log.error("%s: this router cannot submit tasks", tag)
            return Failed("task failed", "no task connection")
        self.counters["tasks"] += 1
        try:
            result = await self.tasks.run(
                task.agent,
                task.action,
                task.data,
                limit=task.timeout,
                wait=task.wait,
                extra=task.extra,
                parent=task.parent,
            )
        except TaskError as exc:
            log.error("%s: %s", tag, exc)
            return Failed("task failed", str(exc))
        if not result.exit_code:
            log.info("%s: task %s %s", tag, result.task_id, result.describe())
            return None
        lines = tuple(result.error.splitlines()[:TASK_ERROR_LINES])
        log.error(
            "%s: task %s failed with %s: %s",
            tag,
            result.task_id,
            result.describe(),
            " | ".join(lines) or "(no error text)",
        )
        return Failed(
            f"task {result.describe()}", f"task {result.task_id}: {result.describe()}", None, lines
        )

    async def _emit(
        self, job: Job, action: EmitAction, context: dict[str, Any], position: int = 1
    ) -> Failed | None:
        route, event = job.route, job.event
        try:
            emit = render_emit(route, action, event, context, self.context)
        except ActionRefused as exc:
            if exc.status == "loop guard":
                self.counters["loops_cut"] += 1
                log.error(
                    "route %s: event %r: loop guard: not emitting %r: %s",
                    route.name,
                    event.channel,
                    exc.emit.channel if exc.emit else "",
                    exc.reason,
                )
            else:
                self.counters["emits_refused"] += 1
                log.error(
                    "route %s (%s:%d): event %r: %s",
                    route.name,
                    route.file,
                    action.line,
                    event.channel,
                    exc.reason,
                )
            return Failed(exc.status, exc.reason)
        message = (emit.channel, emit.data)
        back = self.comes_back(emit.channel)
        if job.trace is not None and job.trace.owner is not None:
            owner = job.trace.owner
            self.history.emitting(owner, route.name, emit.channel, emit.data, returns=back)
        self.lines.emitting(job)
        await self.publisher.publish(
            emit.channel, emit.data, _EmitReceipt(self, job, position, action, message)
        )
        # Remembered once queued and before any await: it cannot come back before that, and
        # what is remembered is then either in the outbox or published (see recover).
        if back:
            self.chains.remember(emit.channel, emit.data, emit.chain)
        return None

    async def close(self, grace: float, hurry: asyncio.Event | None = None) -> None:
        """Stop starting runs, let running ones finish for ``grace`` seconds, then kill them.

        ``hurry`` (a second SIGTERM/SIGINT) ends the wait and kills the steps at once.
        """
        hurry = hurry if hurry is not None else asyncio.Event()
        not_started = self.scheduler.close()
        recording = asyncio.create_task(self._journal_not_started(not_started))
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
        await self._journal_killed(self.scheduler.killed, grace)
        await recording
        self.lines.flush()
        await asyncio.gather(*self._recording, return_exceptions=True)

    async def _kill_when(self, hurry: asyncio.Event) -> None:
        await hurry.wait()
        self.runner.kill_now()

    async def _journal_killed(self, jobs: list[Job], grace: float) -> None:
        """Count and record the runs killed because they outlasted the stop timeout."""
        self.counters["killed"] += len(jobs)
        failed = Failed(
            "killed at shutdown",
            f"still running when the router stopped (--stop-timeout {grace:g}s)",
        )
        for job in jobs:
            await self._journal(job, 0, "killed at shutdown", failed, time.time(), quiet=True)

    async def _journal_not_started(self, jobs: list[Job]) -> None:
        """Log and record the runs that were queued when the router stopped."""
        if not jobs:
            return
        self.counters["not_started"] += len(jobs)
        log.error(
            "shutdown: %d queued run(s) not started%s",
            len(jobs),
            "; recorded in the failure journal" if self.journal is not None else "",
        )
        failed = Failed("not started", "the router stopped before this run could start")
        for job in jobs:
            await self._journal(job, 0, "not started", failed, time.time(), quiet=True)


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
