"""The step-directory runner: list a handler's steps and run them as NS8's agent does.

Each step is a child process in its own session (so its whole process group can be signalled),
fed the raw payload on stdin, with every output line relayed to the log. ``spawn.Child``
starts it and pushes its output, and its exit, to a small protocol object: the exit is
reported on its own (a step that leaves a background process holding its stdout must not
hang the handler), and the output is then drained for at most ``PIPE_GRACE`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eventrouter.config.handlers import (
    Listings,
    SkippedEntry,
    StepEntry,
    list_steps,
    reason_of,
    scan,
    step_state,
    unrunnable_reason,
)
from eventrouter.config.trust import distrust, effective_uid, judge
from eventrouter.runtime.envfile import read_environment_file
from eventrouter.runtime.limiter import FairLimiter
from eventrouter.runtime.skips import MENTIONS, start_refusal
from eventrouter.runtime.spawn import Child
from eventrouter.runtime.stepoutput import LineRelay, StepProtocol

logger = logging.getLogger(__name__)

__all__ = [
    "SkippedEntry",
    "StepEntry",
    "StepRunner",
    "list_steps",
    "read_environment_file",
    "unrunnable_reason",
]

#: How many output lines of a failing step are kept for the failure report.
TAIL_LINES = 20
#: How long to keep reading output after a step exited (a background child may hold the pipes).
PIPE_GRACE = 1.0


@dataclass(frozen=True)
class StepResult:
    """How one step ended; ``status`` < 0 means killed by signal -status, None not started."""

    name: str
    status: int | None
    timed_out: bool = False
    skipped: str | None = None
    #: Seconds from the start of the process to the end of its output (0: not started);
    #: a measurement, not part of what the step did, so results compare without it.
    duration: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class HandlerResult:
    """How a handler directory run ended."""

    directory: Path
    steps: tuple[StepResult, ...]
    ok: bool
    error: str | None = None
    tail: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Job:
    """What one handler run needs for each of its steps."""

    directory: Path
    payload: bytes
    env: Mapping[str, str]
    event_name: str
    event_source: str
    timeout: float | None
    tag: str
    group: str
    #: An ``exec:`` command: its arguments after the program (None: a handler's steps).
    args: tuple[str, ...] | None = None

    def what(self, step: StepEntry) -> str:
        """Return how the log names ``step``: a step of the handler, or the exec command."""
        if self.args is not None:
            return f"command {step.file}"
        return f"step {step.name} of handler {self.directory}"


@dataclass(frozen=True)
class _Outcome:
    result: StepResult
    error: str | None = None
    tail: tuple[str, ...] = ()


def describe_status(status: int | None, *, timed_out: bool, timeout: float | None) -> str:
    """Return an operator's description of how a step ended."""
    if timed_out:
        return f"timed out after {timeout:g}s" if timeout is not None else "timed out"
    if status is None:
        return "not started"
    if status < 0:
        try:
            return f"killed by signal {-status} ({signal.Signals(-status).name})"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def _skip(job: _Job, step: StepEntry, reason: str) -> _Outcome:
    """Log and record a step that cannot run at its turn; the next steps run, as in NS8."""
    # A symlink to a folder is simply not a step; the others deserve an operator's look.
    level = logging.DEBUG if reason == "is a directory" else logging.WARNING
    logger.log(level, "%s skipping %s: %s", job.tag, job.what(step), reason)
    return _Outcome(StepResult(step.name, None, skipped=reason))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        logger.debug("process group %d already gone before %s", pgid, sig.name)
    except PermissionError as exc:
        logger.warning("cannot send %s to process group %d: %s", sig.name, pgid, exc)


class StepRunner:
    """Run handler directories, bounding the number of step processes running at once."""

    def __init__(
        self,
        *,
        max_concurrency: int = 32,
        kill_grace: float = 5.0,
        max_line: int = 16384,
        base_env: Mapping[str, str] | None = None,
        euid: int | None = None,
    ) -> None:
        if max_concurrency < 1 or max_line < 1:
            raise ValueError("max_concurrency and max_line must be at least 1")
        self._limiter = FairLimiter(max_concurrency)
        self._kill_grace = kill_grace
        self._max_line = max_line
        # The router's environment as it started, copied once: decoding os.environ for every
        # step cost about 40 lookups per start.
        self._base_env = dict(base_env if base_env is not None else os.environ)
        # Process group id (= pid of the step) -> the future set when that step exits.
        self._running: dict[int, asyncio.Future[None]] = {}
        self._stopping = False
        #: Whose trust rules apply to handler folders and steps (root: refuse, else warn).
        self._euid = effective_uid(euid)
        #: The handler folders' listings, reused while a folder is unchanged.
        self.listings = Listings()

    @property
    def running(self) -> int:
        """Return how many step processes are running now."""
        return len(self._running)

    @property
    def base_env(self) -> Mapping[str, str]:
        """Return the router's environment, as every step's environment starts from it."""
        return self._base_env

    async def run_handler(
        self,
        directory: Path,
        *,
        payload: bytes,
        env: Mapping[str, str],
        event_name: str,
        event_source: str,
        timeout: float | None,  # noqa: ASYNC109 (per step, not for the whole call)
        tag: str,
        group: str = "",
    ) -> HandlerResult:
        """Run the steps of ``directory`` in order, stopping at the first that fails.

        A step that cannot start (not executable, gone, refused by the kernel) is skipped.
        ``group`` (the route) is what the concurrency cap shares slots fairly between.
        """
        try:
            info: os.stat_result | None = os.stat(directory)
        except OSError:
            info = None  # scan says why, in its words
        refused = self._refused(directory, "handler folder", tag, info)
        if refused is not None:
            logger.error("%s %s", tag, refused)
            return HandlerResult(directory, (), ok=False, error=refused)
        try:
            listing = scan(directory) if info is None else self.listings.get(directory, info)
        except OSError as exc:
            error = f"handler directory {directory}: {reason_of(exc)}"
            logger.error("%s %s", tag, error)
            return HandlerResult(directory, (), ok=False, error=error)
        for name, kind in MENTIONS.unnamed(listing) if listing.passed_over else ():
            logger.warning("%s passing over %s in handler %s: %s", tag, name, directory, kind)
        job = _Job(directory, payload, env, event_name, event_source, timeout, tag, group or tag)
        results: list[StepResult] = []
        for step in listing.steps:
            # Listed by name when the run started, looked at when its turn comes: the steps
            # before it may remove it, or make it executable.
            outcome = await self._take_turn(job, step)
            results.append(outcome.result)
            if outcome.error is not None:
                logger.error("%s %s", tag, outcome.error)
                return HandlerResult(directory, tuple(results), False, outcome.error, outcome.tail)
        return HandlerResult(directory, tuple(results), ok=True)

    async def run_command(
        self,
        program: str,
        args: Sequence[str],
        *,
        payload: bytes,
        env: Mapping[str, str],
        event_name: str,
        event_source: str,
        timeout: float | None,  # noqa: ASYNC109 (of the command, as of each step)
        tag: str,
        group: str = "",
    ) -> HandlerResult:
        """Run one command as a step of its own (``exec:``), failing where a step is skipped.

        ``program`` is the executable's path. Environment, stdin, process group, timeout,
        output relay, the concurrency cap and the stop at shutdown are a step's.
        """
        job = _Job(Path(program), payload, env, event_name, event_source, timeout, tag,
                   group or tag, tuple(args))  # fmt: skip
        step = StepEntry(os.path.basename(program), program)
        refused = self._refused(program, "command", tag)
        outcome = (
            _Outcome(StepResult(step.name, None, skipped="refused"), refused)
            if refused is not None
            else await self._run_step(job, step)
        )
        if outcome.error is not None:
            logger.error("%s %s", tag, outcome.error)
        ok = outcome.error is None
        return HandlerResult(job.directory, (outcome.result,), ok, outcome.error, outcome.tail)

    async def terminate_all(self) -> int:
        """SIGTERM then (after kill_grace) SIGKILL every running step's group; return how many."""
        self._stopping = True
        running = dict(self._running)
        if not running:
            return 0
        logger.warning("stopping %d running step(s)", len(running))
        for pgid in running:
            _signal_group(pgid, signal.SIGTERM)
        _, pending = await asyncio.wait(running.values(), timeout=self._kill_grace)
        stubborn = [pgid for pgid, exited in running.items() if exited in pending]
        for pgid in stubborn:
            logger.warning("step process group %d ignored SIGTERM; killing it", pgid)
            _signal_group(pgid, signal.SIGKILL)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self._kill_grace)
            if pending:
                logger.error("%d step process(es) survived SIGKILL", len(pending))
        return len(running)

    def kill_now(self) -> int:
        """SIGKILL every running step's group at once, starting no more; return how many."""
        self._stopping = True
        for pgid in self._running:
            _signal_group(pgid, signal.SIGKILL)
        return len(self._running)

    async def _take_turn(self, job: _Job, step: StepEntry) -> _Outcome:
        """Run ``step`` if it is an executable file now; skip it with a warning if not."""
        reason, info = step_state(step.file)  # one stat serves this and the trust check
        if reason is not None:
            return _skip(job, step, reason)
        # Checked at its turn: a step can be changed after the routes were loaded.
        refused = self._refused(step.file, "step", job.tag, info)
        if refused is not None:
            return _Outcome(StepResult(step.name, None, skipped="refused"), refused)
        return await self._run_step(job, step)

    def _refused(
        self, path: Path | str, what: str, tag: str, info: os.stat_result | None = None
    ) -> str | None:
        """Return the error when ``path`` may not be trusted as root; warn when not root."""
        doubt = distrust(path, self._euid) if info is None else judge(path, info, self._euid)
        if doubt is None:
            return None
        if doubt.refused:
            return doubt.describe(what)  # logged by the caller, with route and event
        logger.warning("%s %s", tag, doubt.describe(what))
        return None

    async def _run_step(self, job: _Job, step: StepEntry) -> _Outcome:
        """Start one step, feed it the payload, supervise it and relay its output."""
        tail: deque[str] = deque(maxlen=TAIL_LINES)

        def emit(level: int, text: str) -> None:
            tail.append(text)
            logger.log(level, "%s step %s: %s", job.tag, step.name, text)

        # stdout and stderr are one pipe (spawn.Child): one relay, lines in written order.
        protocol = StepProtocol({1: LineRelay(emit, self._max_line)})
        async with self._limiter.slot(job.group):
            if self._stopping:
                error = f"{job.what(step)} not started: the router is stopping"
                return _Outcome(StepResult(step.name, None), error)
            started = time.monotonic()
            try:
                transport = await self._spawn(job, step, protocol)
            except (OSError, ValueError) as exc:
                # Refused by the kernel (no #! line, a missing interpreter, removed since its
                # turn): skipped, as NS8's agent does. Any other failure aborts the handler.
                # An exec: command is the whole action: it fails, it is never skipped.
                refused = (
                    start_refusal(step.file, exc)
                    if isinstance(exc, OSError) and job.args is None
                    else None
                )
                if refused is not None:
                    return _skip(job, step, refused)
                error = f"{job.what(step)} could not start: {exc}"
                return _Outcome(StepResult(step.name, None), error)
            try:
                timed_out = await self._supervise(job, step, transport, protocol)
            except BaseException:
                transport.close()
                raise
        try:
            await self._drain(job, step, protocol)
        finally:
            transport.close()
        status = transport.get_returncode()
        result = StepResult(
            step.name, status, timed_out=timed_out, duration=time.monotonic() - started
        )
        if status == 0 and not timed_out:
            logger.debug("%s %s done", job.tag, job.what(step))
            return _Outcome(result)
        how = describe_status(status, timed_out=timed_out, timeout=job.timeout)
        error = f"{job.what(step)} failed: {how}"
        return _Outcome(result, error, tuple(tail))

    async def _spawn(self, job: _Job, step: StepEntry, protocol: StepProtocol) -> Child:
        """Start the step's process in a new session and hand it the payload on stdin."""
        cwd, env = self._step_environment(job)
        # Absolute, because the child changes directory before exec.
        argv = [step.file, *(job.args or ())]
        logger.debug("%s running %s", job.tag, job.what(step))
        # The payload is written as the pipe takes it: a step that never reads stdin cannot
        # block us, and the write error when it exits is reported to the protocol.
        # Alone, start it right here; with others running, in a thread so they go on.
        return await Child.start(
            argv, cwd=cwd, env=env, payload=job.payload, sink=protocol, inline=not self.running
        )

    def _step_environment(self, job: _Job) -> tuple[str | None, dict[str, str]]:
        """Return the working directory (None: the router's own) and the environment."""
        base = self._base_env
        # The environment file lives in the working directory, so it cannot choose it.
        state_dir = job.env.get("AGENT_STATE_DIR", base.get("AGENT_STATE_DIR"))
        cwd = None
        if state_dir:
            if os.path.isdir(state_dir):
                cwd = os.path.abspath(state_dir)
            else:
                logger.warning(
                    "%s AGENT_STATE_DIR %s is not a directory; running in %s",
                    job.tag,
                    state_dir,
                    os.getcwd(),
                )
        # Re-read for every step: a step may change it for the next ones.
        env = {**base, **read_environment_file(os.path.join(cwd or "", "environment")), **job.env}
        env["AGENT_EVENT_NAME"] = job.event_name
        env["AGENT_EVENT_SOURCE"] = job.event_source
        env["AGENT_COMFD"] = "2"
        return cwd, env

    async def _supervise(
        self,
        job: _Job,
        step: StepEntry,
        transport: Child,
        protocol: StepProtocol,
    ) -> bool:
        """Wait for the step to exit, enforcing the timeout; return whether it timed out."""
        pgid = transport.get_pid()
        self._running[pgid] = protocol.exited
        try:
            try:
                if job.timeout is None:  # the usual case: no timer to set up
                    await protocol.exit_seen
                else:
                    await asyncio.wait_for(asyncio.shield(protocol.exited), job.timeout)
            except TimeoutError:
                logger.error(
                    "%s %s timed out after %gs; stopping it", job.tag, job.what(step), job.timeout
                )
                await self._stop_group(pgid, protocol.exited)
                return True
            return False
        except asyncio.CancelledError:
            # Never leave a child behind: stop the group (TERM, then KILL after the grace
            # period) and reap it before giving up; a second cancellation kills at once.
            logger.warning("%s %s cancelled; stopping it", job.tag, job.what(step))
            try:
                await self._stop_group(pgid, protocol.exited)
            finally:
                if not protocol.exited.done():
                    _signal_group(pgid, signal.SIGKILL)
            raise
        finally:
            del self._running[pgid]

    async def _stop_group(self, pgid: int, exited: asyncio.Future[None]) -> None:
        """SIGTERM the process group, then SIGKILL it after the grace period; await the exit."""
        _signal_group(pgid, signal.SIGTERM)
        await asyncio.wait([exited], timeout=self._kill_grace)
        if not exited.done():
            _signal_group(pgid, signal.SIGKILL)
            await exited

    async def _drain(self, job: _Job, step: StepEntry, protocol: StepProtocol) -> None:
        """Read the rest of the output, but not forever: a background child may hold it open."""
        if protocol.output_closed.done():  # the usual case: no timer, no waiter to set up
            return
        await asyncio.wait([protocol.output_closed], timeout=PIPE_GRACE)
        if not protocol.output_closed.done():
            logger.warning(
                "%s %s exited but a background process still holds its output open; "
                "no longer reading it",
                job.tag,
                job.what(step),
            )
