"""Event -> matching routes -> actions: ordering, concurrency, derived events, loop guard.

The dispatcher talks to a small ``Publisher`` protocol, not to Redis, so it can be driven
without a server. ``receive`` is synchronous and cheap: it parses the payload, evaluates
``when:`` at arrival and queues one job per matching route; a worker per busy route runs its
jobs one at a time in arrival order (``mode: queued``), routes run side by side, and the step
runner caps the processes running at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from eventrouter.config.patterns import RouteIndex
from eventrouter.config.templates import event_context
from eventrouter.engine.chains import ChainTracker, chain_text
from eventrouter.errors import TemplateRenderError
from eventrouter.model import SAFE_NAME, ChainLink, EmitAction, Event, Route, RunAction, Settings
from eventrouter.runtime.journal import Failure, journal_payload
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


class Publisher(Protocol):
    """Where derived events go."""

    async def publish(self, channel: str, data: bytes) -> None:
        """Hand ``data`` over for publication on ``channel``, in order."""
        ...


def parse_event(channel: str, data: bytes) -> Event:
    """Return the event for a message, its payload parsed when it is JSON."""
    try:
        return Event(channel, data, json.loads(data), True)
    except ValueError:  # includes UnicodeDecodeError and JSONDecodeError
        return Event(channel, data, None, False)


def convention_route(folder: Path) -> Route:
    """Return the implicit route that runs an events folder (SPEC 4)."""
    return Route(
        name=f"events:{folder}",
        patterns=(),
        actions=(RunAction(folder, 0),),
        file=str(folder),
        line=0,
        convention=True,
    )


def convention_folders(events_dirs: Sequence[Path], name: str | None) -> list[Path] | None:
    """Return the events folders ``name`` runs by convention; None when the name is refused."""
    if name is None or not events_dirs:
        return []
    if not SAFE_NAME.fullmatch(name):
        return None
    return [base / name for base in events_dirs if (base / name).is_dir()]


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


def render_emit(action: EmitAction, context: dict[str, Any]) -> tuple[str, bytes]:
    """Return the channel and JSON payload of a derived event; raise TemplateRenderError."""
    channel = action.channel.render(context)
    if not channel:
        raise TemplateRenderError(f"channel {action.channel.source!r} rendered empty")
    data = json.dumps(action.payload.render(context), ensure_ascii=False).encode()
    return channel, data


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


class Dispatcher:
    """Match events to routes and run their actions."""

    def __init__(
        self,
        settings: Settings,
        runner: StepRunner,
        publisher: Publisher,
        index: RouteIndex,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.publisher = publisher
        self.index = index
        self.counters: Counter[str] = Counter()
        #: Where failed runs are recorded (set by the daemon once the journal is open).
        self.journal: FailureJournal | None = None
        self.instance = settings.instance
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
        """Handle one message from Redis: check, parse, match, queue."""
        self.counters["events"] += 1
        if len(data) > self.settings.max_payload:
            self.counters["dropped_oversize"] += 1
            log.error(
                "dropped event on %r: payload of %d bytes exceeds the %d-byte limit "
                "(--max-payload)",
                channel,
                len(data),
                self.settings.max_payload,
            )
            return
        event = parse_event(channel, data)
        chain = self.chains.adopt(channel, data)
        if chain:
            event = Event(event.channel, event.raw, event.payload, event.is_json, chain)
        self.handle(event)

    def handle(self, event: Event) -> int:
        """Queue a job for every route and convention folder the event triggers; return how many."""
        queued = 0
        for route, captures in self.index.match(event.channel):
            if self._condition_holds(route, event, captures):
                queued += self.submit(route, event, captures)
        for folder in self.convention_folders(event):
            queued += self.submit(convention_route(folder), event, {})
        if not queued:
            log.debug("no route for event %r", event.channel)
        return queued

    def convention_folders(self, event: Event) -> list[Path]:
        """Return the events folders an event runs by convention; refuse unsafe names."""
        folders = convention_folders(self.settings.events_dirs, event.name)
        if folders is None:
            self.counters["refused_names"] += 1
            log.warning(
                "refused event name %r on channel %r: an event name must match "
                "[A-Za-z0-9][A-Za-z0-9._-]* to run an events folder",
                event.name,
                event.channel,
            )
            return []
        return folders

    def _condition_holds(self, route: Route, event: Event, captures: dict[str, str]) -> bool:
        if route.payload_check is not None:
            problem = route.payload_check(event)
            if problem is not None:
                self.counters["schema_rejected"] += 1
                log.error(
                    "route %s (%s:%d): event %r rejected by schema: %s",
                    route.name,
                    route.file,
                    route.line,
                    event.channel,
                    problem,
                )
                return False
        if route.when is None:
            return True
        context = event_context(event, match=captures, route=route.name)
        try:
            value = bool(route.when.evaluate(context))
        except (TemplateRenderError, TypeError, ValueError) as exc:
            self.counters["condition_errors"] += 1
            log.error(
                "route %s (%s:%d): event %r: %s",
                route.name,
                route.file,
                route.line,
                event.channel,
                exc,
            )
            self._journal_soon(Job(route, event, captures), "when", str(exc))
            return False
        if not value:
            log.debug("route %s: event %r: 'when' is false", route.name, event.channel)
        return value

    def submit(self, route: Route, event: Event, captures: dict[str, str]) -> int:
        """Hand a run to the scheduler under its key; return 1 when admitted, else 0."""
        key = ""
        if route.key is not None:
            context = event_context(event, match=captures, route=route.name)
            try:
                key = route.key.render(context)
            except TemplateRenderError as exc:
                self.counters["key_errors"] += 1
                log.error(
                    "route %s (%s:%d): event %r: key: %s",
                    route.name,
                    route.file,
                    route.line,
                    event.channel,
                    exc,
                )
                self._journal_soon(Job(route, event, captures), "key", str(exc))
                return 0
        return int(self.scheduler.submit(Job(route, event, captures, key)))

    async def execute(self, job: Job) -> bool:
        """Run a job's actions in order; the first failing action stops the list."""
        route, event = job.route, job.event
        started = time.time()
        context = event_context(event, match=job.captures, route=route.name)
        for position, action in enumerate(route.actions, 1):
            if isinstance(action, RunAction):
                failed = await self._run(job, action, context)
            else:
                failed = await self._emit(job, action, context)
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
            env = {key: template.render(context) for key, template in action.env}
        except TemplateRenderError as exc:
            log.error(
                "route %s: event %r: env of %s: %s", route.name, event.channel, action.path, exc
            )
            return Failed("template error", f"env of {action.path}: {exc}")
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

    async def _emit(self, job: Job, action: EmitAction, context: dict[str, Any]) -> Failed | None:
        route, event = job.route, job.event
        try:
            channel, data = render_emit(action, context)
        except TemplateRenderError as exc:
            log.error(
                "route %s (%s:%d): event %r: emit: %s",
                route.name,
                route.file,
                action.line,
                event.channel,
                exc,
            )
            return Failed("template error", f"emit {action.channel.source}: {exc}")
        chain = (*event.chain, ChainLink(route.name, channel))
        if len(chain) > self.settings.max_depth:
            self.counters["loops_cut"] += 1
            log.error(
                "loop guard: not emitting %r: derived-event chain deeper than %d: %s",
                channel,
                self.settings.max_depth,
                chain_text(chain),
            )
            return Failed(
                "loop guard",
                f"derived-event chain deeper than {self.settings.max_depth}: {chain_text(chain)}",
            )
        self.chains.remember(channel, data, chain)
        await self.publisher.publish(channel, data)
        self.counters["emitted"] += 1
        log.info("route %s emitted %r (caused by %r)", route.name, channel, event.channel)
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
