"""Failures written to the failure journal: failed runs, and runs that never ran.

A run that failed is recorded when it ends; a failure met before a run (``when:``, ``key:``,
``runs_on:``, a drop at a queue bound) or after it (Redis refusing a derived event) is
recorded in the background, at most ``MAX_RECORDING`` writes at once; at shutdown, the runs
killed and the runs never started are recorded too. Each can be retried
(`eventrouter retry ID`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Coroutine
from typing import Any

from eventrouter.runtime.failed import Failed
from eventrouter.runtime.journal import Failure, journal_payload
from eventrouter.runtime.lanes import Job
from eventrouter.runtime.ports import FailureJournal
from eventrouter.runtime.runevents import EmitRefused, NotFired, RunDropped, RunEnded

# The dispatcher's logger: these lines kept the name they were logged under before this
# module was split out of it (the log shows it).
log = logging.getLogger("eventrouter.runtime.dispatch")

#: Journal writes in flight at most: a flood of drops must not queue a task for each.
MAX_RECORDING = 256


class FailureRecorder:
    """Record failures in the journal (None records nothing: tests, tools); a run listener."""

    def __init__(
        self,
        journal: FailureJournal | None,
        instance: str,
        payload_limit: int,
        counters: Counter[str],
    ) -> None:
        self.journal = journal
        #: This router's name in the journal: retries name it.
        self.instance = instance
        self.payload_limit = payload_limit
        self.counters = counters
        self._recording: set[asyncio.Task[None]] = set()

    @property
    def recording(self) -> list[asyncio.Task[None]]:
        """Return the failure journal writes in flight."""
        return list(self._recording)

    async def settle(self) -> None:
        """Wait for the writes in flight."""
        await asyncio.gather(*self._recording, return_exceptions=True)

    def run_ended(self, ended: RunEnded) -> Awaitable[None] | None:
        """Record a run that failed: the run waits for it, so a flood of failures waits too."""
        if ended.failed is None or self.journal is None:
            return None
        return self.run_failed(ended.job, ended.position, ended.action, ended.failed, ended.started)

    def not_fired(self, not_fired: NotFired) -> None:
        """Record a template or expression error that kept a route from running."""
        if not_fired.problem in ("key", "runs_on", "when"):
            item = not_fired.item
            job = Job(item.route, not_fired.event, item.captures)
            self.before_run(job, not_fired.problem, not_fired.reason)

    def run_dropped(self, dropped: RunDropped) -> None:
        """Nothing here: a drop at a queue bound is recorded by ``dropped``, from the lanes."""

    def emit_refused(self, refused: EmitRefused) -> None:
        """Record a refused emit in the background: its run has ended or gone on."""
        self.run_failed_soon(
            refused.job, refused.position, refused.action, refused.failed, refused.started
        )

    async def run_failed(
        self,
        job: Job,
        position: int,
        action: str,
        failed: Failed,
        started: float,
        *,
        quiet: bool = False,
    ) -> None:
        """Record a run whose action at ``position`` (1-based; 0: none) failed."""
        if self.journal is not None:
            await self._record(self._failure(job, position, action, failed, started), quiet=quiet)

    def run_failed_soon(
        self, job: Job, position: int, action: str, failed: Failed, started: float
    ) -> None:
        """Record a failed run in the background (a derived event refused after the run)."""
        if self.journal is None:
            return
        self._start(self.run_failed(job, position, action, failed, started))

    def before_run(self, job: Job, where: str, reason: str, status: str = "template error") -> None:
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
        self._start(self._record(failure))

    def dropped(self, job: Job, reason: str) -> None:
        """Record a run dropped at a queue bound: it can be retried once the burst is over."""
        self.before_run(job, "dropped", reason, status="dropped")

    async def killed(self, jobs: list[Job], grace: float) -> None:
        """Count and record the runs killed because they outlasted the stop timeout."""
        self.counters["killed"] += len(jobs)
        failed = Failed(
            "killed at shutdown",
            f"still running when the router stopped (--stop-timeout {grace:g}s)",
        )
        for job in jobs:
            await self.run_failed(job, 0, "killed at shutdown", failed, time.time(), quiet=True)

    async def not_started(self, jobs: list[Job]) -> None:
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
            await self.run_failed(job, 0, "not started", failed, time.time(), quiet=True)

    def _start(self, write: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(write)
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    def _failure(
        self, job: Job, position: int, action: str, failed: Failed, started: float
    ) -> Failure:
        payload, payload_b64, cut = journal_payload(job.event.raw, self.payload_limit)
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
