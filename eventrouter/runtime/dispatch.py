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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eventrouter.config.patterns import RouteIndex
from eventrouter.engine.chains import ChainTracker, chain_text
from eventrouter.engine.decide import (
    ActionRefused,
    Decision,
    RouteDecision,
    RouterContext,
    action_context,
    decide_message,
    render_emit,
    render_env,
)
from eventrouter.model import EmitAction, Event, RunAction, Settings
from eventrouter.runtime.folders import folder_exists
from eventrouter.runtime.journal import Failure, instance_name, journal_payload
from eventrouter.runtime.lanes import Job, Scheduler
from eventrouter.runtime.steps import HandlerResult, StepRunner, describe_status

log = logging.getLogger(__name__)

#: Journal writes in flight at most: a flood of drops must not queue a task for each.
MAX_RECORDING = 256


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


def router_context(settings: Settings) -> RouterContext:
    """Return what the engine needs of the settings to decide."""
    return RouterContext(
        events_dirs=tuple(settings.events_dirs),
        max_depth=settings.max_depth,
        max_payload=settings.max_payload,
        folder_exists=folder_exists,
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


@dataclass(frozen=True)
class Failed:
    """Why an action failed, for the log and the failure journal."""

    status: str
    reason: str
    step: str | None = None
    tail: tuple[str, ...] = ()
    attempts: int = 1


def _handler_failed(result: HandlerResult, attempts: int) -> Failed:
    failing = next((step for step in reversed(result.steps) if step.status != 0), None)
    if failing is None or failing.skipped is not None:
        status = "handler error"
    else:
        status = describe_status(failing.status, timed_out=failing.timed_out, timeout=None)
        if failing.timed_out:
            status = "timed out"
    if attempts > 1:
        status = f"retries exhausted ({attempts} attempts): {status}"
    step = failing.name if failing is not None else None
    return Failed(status, result.error or status, step, result.tail, attempts)


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
        log.info(
            "route %s emitted %r (caused by %r)",
            self.job.route.name,
            self.channel,
            self.job.event.channel,
        )

    def refused(self, reason: str) -> None:
        """Fail this emit alone: error with route and event, and the failure journal."""
        self.dispatcher.emit_refused(self, reason)


class Dispatcher:
    """Match events to routes and run their actions."""

    def __init__(
        self,
        settings: Settings,
        runner: StepRunner,
        publisher: Publisher,
        index: RouteIndex,
        *,
        journal: FailureJournal | None = None,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.publisher = publisher
        self.index = index
        self.context = router_context(settings)
        self.counters: Counter[str] = Counter()
        #: Where failed runs are recorded; None records nothing (tests, tools).
        self.journal = journal
        #: This router's name in the journal: retries name it.
        self.instance = instance if instance is not None else instance_name(settings.instance)
        self._recording: set[asyncio.Task[None]] = set()
        self.scheduler = Scheduler(
            self.execute,
            queue_limit=settings.queue_limit,
            max_pending=settings.max_pending,
            counters=self.counters,
            max_bytes=settings.max_queued_bytes,
            on_drop=self._dropped,
        )
        self.chains = ChainTracker()

    def swap(self, index: RouteIndex) -> None:
        """Use a new route table for events from now on; queued jobs keep their version."""
        self.index = index

    @property
    def busy(self) -> int:
        """Return how many jobs are queued or running."""
        return self.scheduler.pending + len(self.scheduler.running)

    def receive(self, channel: str, data: bytes) -> None:
        """Handle one message from Redis: decide, then queue what fires."""
        self.counters["events"] += 1
        chain = self.chains.adopt(channel, data)
        decision = decide_message(self.index, channel, data, self.context, chain)
        if decision.refused is not None:
            self.counters["dropped_oversize"] += 1
            log.error("dropped event on %r: %s", channel, decision.refused)
            return
        self.execute_decision(decision)

    def recover(self, queued: Mapping[tuple[str, bytes], int]) -> int:
        """Handle here, once, the derived events published but never seen back; return how many.

        Called when the subscription is back after a break and before the outbox resumes:
        what this router published and had not come back by then was lost to its own
        subscription (Redis delivered it to every other subscriber), so it is handled
        locally instead of being published twice. ``queued`` is what still waits to be sent.
        """
        recovered = 0
        for channel, data, chain in self.chains.unreturned(queued):
            decision = decide_message(self.index, channel, data, self.context, chain)
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
            self.execute_decision(decision)
        return recovered

    def execute_decision(self, decision: Decision) -> int:
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
            if item.fires:
                queued += self.submit(item, event)
            else:
                self._not_fired(item, event)
        if not queued:
            log.debug("no route for event %r", event.channel)
        return queued

    def _not_fired(self, item: RouteDecision, event: Event) -> None:
        """Log (and count, and journal when it is an error) why a matching route does not run."""
        route = item.route
        if (
            item.schema_error is None
            and item.key_error is None
            and (item.condition is None or item.condition.error is None)
        ):
            log.debug("route %s: event %r: %s", route.name, event.channel, item.reason)
            return
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
        reason = item.key_error or (item.condition.error if item.condition else None) or ""
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

    def submit(self, item: RouteDecision, event: Event) -> int:
        """Hand a run to the scheduler under its key; return 1 when admitted, else 0."""
        return int(self.scheduler.submit(Job(item.route, event, item.captures, item.key)))

    async def execute(self, job: Job) -> bool:
        """Run a job's actions in order; the first failing action stops the list."""
        route, event = job.route, job.event
        started = time.time()
        context = action_context(route, event, job.captures)
        for position, action in enumerate(route.actions, 1):
            if isinstance(action, RunAction):
                failed = await self._run(job, action, context)
            else:
                failed = await self._emit(job, action, context, position)
            if failed is not None:
                self.counters["runs_failed"] += 1
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
        return True

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
        payload, payload_b64, cut = journal_payload(job.event.raw)
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
        if failure_id and not quiet:
            log.info(
                "route %s: failure recorded as %s (eventrouter retry %s)",
                failure.route,
                failure_id,
                failure_id,
            )

    async def _run(self, job: Job, action: RunAction, context: dict[str, Any]) -> Failed | None:
        route, event = job.route, job.event
        try:
            env = render_env(action, context)
        except ActionRefused as exc:
            log.error("route %s: event %r: %s", route.name, event.channel, exc.reason)
            return Failed(exc.status, exc.reason)
        tag = f"{route.name} [{event.channel}]"
        attempts = route.retry.attempts if route.retry is not None else 1
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
            if result.ok:
                return None
            if attempt < attempts and route.retry is not None:
                # Jitter spreads the retries of many routes failing together over time.
                delay = route.retry.delay(attempt) * random.uniform(0.5, 1.0)
                self.counters["retries"] += 1
                log.warning(
                    "%s attempt %d/%d failed (%s); retrying in %.2fs",
                    tag,
                    attempt,
                    attempts,
                    result.error,
                    delay,
                )
                await asyncio.sleep(delay)
        if attempts > 1:
            log.error("%s all %d attempts failed; giving up", tag, attempts)
        return _handler_failed(result, attempts)

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
        await self.publisher.publish(
            emit.channel, emit.data, _EmitReceipt(self, job, position, action, message)
        )
        # Remembered once queued and before any await: it cannot come back before that, and
        # what is remembered is then either in the outbox or published (see recover).
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
