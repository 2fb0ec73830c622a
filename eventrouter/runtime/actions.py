"""Carry out one action of a run: a handler folder, an ``exec:`` command, a task, an emit.

Actions arrive rendered (``engine/render.py``, when the run starts); one the engine refused
(a template error, the loop guard, a size limit) is logged and fails without an attempt.
Handler folders, commands and tasks go through one retry loop (``ActionRunner._attempts``):
tried up to ``retry.attempts`` times, each failed attempt but the last logged and followed
by its backoff. Each kind brings only its single attempt and the words its log lines use;
the loop is the same for all three:

* the failure of the last attempt is the action's: a handler folder's and a command's status
  says "retries exhausted (N attempts)" when there were several, as a task's does, and a
  command not found on its PATH keeps its own status;
* the debug line of a failed attempt gives the failure's reason: for a handler folder that
  is the step runner's error text, as before, since a failed run always has one.

An emit is not put through the loop, though its semantics would allow it: handing the event
to the publisher cannot fail (Redis answers later, through the receipt, once the run has
moved on), so the loop would always try it once, which is what an emit does, and it would
cost two more coroutines for every derived event, the router's hottest path.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from eventrouter.engine.chains import ChainTracker
from eventrouter.engine.render import (
    Rendered,
    RenderedCommand,
    RenderedEmit,
    RenderedFolder,
    RenderedTask,
    RenderRefused,
    Task,
)
from eventrouter.errors import TaskError
from eventrouter.model import EmitAction, ExecAction, Route
from eventrouter.runtime.execute import find_program
from eventrouter.runtime.failed import Failed, handler_failed
from eventrouter.runtime.history import History
from eventrouter.runtime.lanes import Job
from eventrouter.runtime.ports import Publisher, TaskSubmitter
from eventrouter.runtime.runevents import EmitRefused, RunListener
from eventrouter.runtime.runlines import RunLines
from eventrouter.runtime.runner import Runner
from eventrouter.runtime.stats import Histogram, Histograms
from eventrouter.runtime.steps import StepResult

# The dispatcher's logger: these lines kept the name they were logged under before this
# module was split out of it (the log shows it).
log = logging.getLogger("eventrouter.runtime.dispatch")
#: The lines about ``exec:`` commands kept theirs, the module that finds their program.
exec_log = logging.getLogger("eventrouter.runtime.execute")

#: Lines of a failed task's ``error`` text that reach the log.
TASK_ERROR_LINES = 5

#: One attempt of an action: given its number (1-based), return why it failed, or None.
Attempt = Callable[[int], Awaitable[Failed | None]]


def _exhausted(failed: Failed, attempt: int) -> Failed:
    """Return ``failed`` as the failure of attempt number ``attempt``, the last one tried."""
    if attempt == 1:
        return failed
    status = f"retries exhausted ({attempt} attempts): {failed.status}"
    return Failed(status, failed.reason, failed.step, failed.tail, attempt)


def _observe(steps: Iterable[StepResult], durations: Histogram) -> int:
    """Time the steps that ran; return how many."""
    ran = 0
    for step in steps:
        if step.status is not None:
            ran += 1
            durations.observe(step.duration)
    return ran


class _EmitReceipt:
    """Log, count and journal what Redis answered for one derived event."""

    __slots__ = ("action", "actions", "channel", "data", "job", "position", "started")

    def __init__(
        self,
        actions: ActionRunner,
        job: Job,
        position: int,
        action: EmitAction,
        message: tuple[str, bytes],
    ) -> None:
        self.actions, self.job, self.position, self.action = actions, job, position, action
        self.channel, self.data = message
        self.started = time.time()

    def sent(self, receivers: int) -> None:
        """Log the emit once it went out."""
        self.actions.counters["emitted"] += 1
        self.actions.derived[self.job.route.name] += 1
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
        self.actions.lines.answered(self.job)

    def refused(self, reason: str) -> None:
        """Fail this emit alone: error with route and event, and the failure journal."""
        job, actions = self.job, self.actions
        log.error(
            "route %s (%s:%d): event %r: Redis refused to publish the derived event on %r: %s",
            job.route.name,
            job.route.file,
            self.action.line,
            job.event.channel,
            self.channel,
            reason,
        )
        actions.chains.adopt(self.channel, self.data)  # it will never come back
        failed = Failed("publish refused", f"emit {self.channel}: {reason}")
        refused = EmitRefused(job, self.position, self.action.describe(), failed, self.started)
        for listener in actions.listeners:
            listener.emit_refused(refused)
        actions.lines.answered(job)


class ActionRunner:
    """Run the actions of runs: steps, commands, tasks and derived events, with retries."""

    def __init__(
        self,
        runner: Runner,
        publisher: Publisher,
        tasks: TaskSubmitter | None,
        *,
        step_timeout: float | None,
        counters: Counter[str],
        listeners: Sequence[RunListener],
        history: History,
        lines: RunLines,
        chains: ChainTracker,
        comes_back: Callable[[str], bool],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.runner = runner
        self.publisher = publisher
        #: Where ``task:`` actions are submitted; None fails them with a clear reason.
        self.tasks = tasks
        self.step_timeout = step_timeout
        self.counters = counters
        #: Told of the derived events Redis refused.
        self.listeners = listeners
        self.history = history
        self.lines = lines
        self.chains = chains
        self.comes_back = comes_back
        #: Waits out retry backoff: asyncio's, or a test's clock.
        self.sleep = sleep
        #: Derived events by route, step durations by route.
        self.derived: Counter[str] = Counter()
        self.step_seconds = Histograms()

    def run(
        self, job: Job, position: int, rendered: Rendered, env: Mapping[str, str]
    ) -> Awaitable[tuple[Failed | None, int]]:
        """Carry out action ``position`` of ``job`` as rendered; return why it failed and the
        steps it ran. ``env`` is the module's environment as the event saw it (the PATH an
        ``exec:`` program is looked up on, under the command's own ``env``).
        """
        # The kind's own coroutine, not one awaiting it: a coroutine less per action.
        if isinstance(rendered, RenderedEmit):
            return self._emit(job, rendered, position)
        if isinstance(rendered, RenderedFolder):
            return self._run(job, rendered)
        if isinstance(rendered, RenderedCommand):
            return self._exec(job, rendered, env)
        if isinstance(rendered, RenderedTask):
            return self._task(job, rendered.task)
        return self._refused(job, rendered)

    async def _refused(self, job: Job, rendered: RenderRefused) -> tuple[Failed, int]:
        """Log (and count, for an emit) an action that could not be rendered; return why."""
        route, event, action, exc = job.route, job.event, rendered.action, rendered.refused
        if not isinstance(action, EmitAction):
            logger = exec_log if isinstance(action, ExecAction) else log
            logger.error("route %s: event %r: %s", route.name, event.channel, exc.reason)
        elif exc.status == "loop guard":
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
        return Failed(exc.status, exc.reason), 0

    async def _attempts(
        self,
        route: Route,
        attempt: Attempt,
        retrying: str,
        giving_up: str,
        logger: logging.Logger = log,
    ) -> Failed | None:
        """Try an action up to ``retry.attempts`` times; return why the last attempt failed.

        ``retrying`` starts the line of a failed attempt, ``giving_up`` the line after the
        last one (in ``logger``).
        """
        attempts = route.retry.attempts if route.retry is not None else 1
        failed = None
        for number in range(1, attempts + 1):
            failed = await attempt(number)
            if failed is None:
                return None
            await self._before_retry(retrying, route, number, failed.reason)
        if attempts > 1:
            logger.error("%s all %d attempts failed; giving up", giving_up, attempts)
        return failed

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
        await self.sleep(delay)

    async def _run(self, job: Job, rendered: RenderedFolder) -> tuple[Failed | None, int]:
        """Run a handler folder (with retries); return why it failed and the steps run."""
        route, event, action, env = job.route, job.event, rendered.action, rendered.env
        tag = f"{route.name} [{event.channel}]"
        durations = self.step_seconds[route.name]
        ran = 0

        async def attempt(number: int) -> Failed | None:
            nonlocal ran
            result = await self.runner.run_handler(
                action.path,
                payload=event.raw,
                env=env,
                event_name=event.name or "",
                event_source=event.source or "",
                timeout=action.timeout or self.step_timeout,
                tag=tag,
                group=route.name,
            )
            ran += _observe(result.steps, durations)
            return None if result.ok else handler_failed(result, number)

        failed = await self._attempts(route, attempt, f"{tag} attempt", tag)
        return failed, ran

    async def _exec(
        self, job: Job, rendered: RenderedCommand, env: Mapping[str, str]
    ) -> tuple[Failed | None, int]:
        """Run an ``exec:`` command (with retries); return why it failed and the runs made."""
        route, event, action, command = job.route, job.event, rendered.action, rendered.command
        tag = f"{route.name} [{event.channel}]"
        durations = self.step_seconds[route.name]
        ran = 0

        async def attempt(number: int) -> Failed | None:
            nonlocal ran
            program = find_program(command, env)
            if program is None:
                # The PATH itself is not shown: it is a value of the environment.
                reason = f"{action.describe()}: {command.argv[0]!r} not found on the command's PATH"
                exec_log.error("%s %s", tag, reason)
                return Failed("command not found", reason, command.argv[0], (), number)
            result = await self.runner.run_command(
                program,
                command.argv[1:],
                payload=event.raw,
                env=command.env,
                event_name=event.name or "",
                event_source=event.source or "",
                timeout=command.timeout or self.step_timeout,
                tag=tag,
                group=route.name,
            )
            ran += _observe(result.steps, durations)
            return None if result.ok else handler_failed(result, number)

        what = f"{tag} {action.describe()}"
        failed = await self._attempts(route, attempt, f"{what} attempt", f"{what}:", exec_log)
        return failed, ran

    async def _task(self, job: Job, task: Task) -> tuple[Failed | None, int]:
        """Submit a task (with retries); return why it failed."""
        route, event = job.route, job.event
        tag = f"{route.name} [{event.channel}]: task {task.action} on {task.agent}"

        async def attempt(number: int) -> Failed | None:
            failed = await self._task_once(tag, task)
            return None if failed is None else _exhausted(failed, number)

        return await self._attempts(route, attempt, f"{tag}: attempt", f"{tag}:"), 0

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

    async def _emit(self, job: Job, rendered: RenderedEmit, position: int) -> tuple[None, int]:
        """Hand a derived event to the publisher, once.

        Not put through ``_attempts``: handing the event over cannot fail (Redis answers
        the receipt once the run has moved on), so the loop would try it once, as this does,
        at the cost of two more coroutines for every derived event.
        """
        route, action, emit = job.route, rendered.action, rendered.emit
        back = self.comes_back(emit.channel)
        if job.trace is not None and job.trace.owner is not None:
            owner = job.trace.owner
            self.history.emitting(owner, route.name, emit.channel, emit.data, returns=back)
        self.lines.emitting(job)
        receipt = _EmitReceipt(self, job, position, action, (emit.channel, emit.data))
        await self.publisher.publish(emit.channel, emit.data, receipt)
        # Remembered once queued and before any await: it cannot come back before that, and
        # what is remembered is then either in the outbox or published (see recover).
        if back:
            self.chains.remember(emit.channel, emit.data, emit.chain)
        return None, 0
