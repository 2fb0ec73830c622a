"""Carry out an ``exec:`` action: find the program, run it as a step, retry per ``retry:``.

The command gets everything a step gets, from the step runner itself (``StepRunner.
run_command``): the router's environment, the module's environment file, the action's
``env``, ``AGENT_EVENT_NAME``/``AGENT_EVENT_SOURCE``, the raw payload on stdin, its own
process group (registered with the warden, so it dies with the router), the timeout, the
concurrency cap, and every output line in the log with its ``<N>`` level.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from eventrouter.engine.decide import ActionRefused
from eventrouter.engine.execs import Command, render_exec
from eventrouter.model import ExecAction, Route
from eventrouter.runtime.failed import Failed, handler_failed
from eventrouter.runtime.lanes import Job
from eventrouter.runtime.runner import Runner
from eventrouter.runtime.stats import Histogram

log = logging.getLogger(__name__)

#: Logs a failed attempt and waits out its backoff (``Dispatcher._before_retry``).
BeforeRetry = Callable[[str, Route, int, str | None], Awaitable[None]]


def find_program(command: Command, env: Mapping[str, str]) -> str | None:
    """Return the executable a command runs: its path, or its name found on PATH; else None.

    The PATH is the one the command itself gets (its action's ``env`` over the module's),
    as a shell in the step would search it; a relative entry is taken from the router's
    working directory and made absolute, since the command may start in another.
    """
    if command.path is not None:
        return command.path
    search = command.env.get("PATH", env.get("PATH", os.defpath))
    found = shutil.which(command.argv[0], path=search)
    return os.path.abspath(found) if found is not None else None


async def run_exec(
    runner: Runner,
    job: Job,
    action: ExecAction,
    context: dict[str, Any],
    *,
    env: Mapping[str, str],
    step_timeout: float | None,
    before_retry: BeforeRetry,
    durations: Histogram,
) -> tuple[Failed | None, int]:
    """Run an ``exec:`` action (with retries); return why it failed and how often it ran.

    ``env`` is the module's environment as the event saw it, for the PATH lookup.
    """
    route, event = job.route, job.event
    try:
        command = render_exec(action, context)
    except ActionRefused as exc:
        log.error("route %s: event %r: %s", route.name, event.channel, exc.reason)
        return Failed(exc.status, exc.reason), 0
    tag = f"{route.name} [{event.channel}]"
    attempts = route.retry.attempts if route.retry is not None else 1
    ran, failed = 0, Failed("command failed", "no attempt")
    for attempt in range(1, attempts + 1):
        program = find_program(command, env)
        if program is None:
            # The PATH itself is not shown: it is a value of the environment.
            reason = f"{action.describe()}: {command.argv[0]!r} not found on the command's PATH"
            log.error("%s %s", tag, reason)
            failed = Failed("command not found", reason, command.argv[0], (), attempt)
        else:
            result = await runner.run_command(
                program,
                command.argv[1:],
                payload=event.raw,
                env=command.env,
                event_name=event.name or "",
                event_source=event.source or "",
                timeout=command.timeout or step_timeout,
                tag=tag,
                group=route.name,
            )
            for step in result.steps:
                if step.status is not None:
                    ran += 1
                    durations.observe(step.duration)
            if result.ok:
                return None, ran
            failed = handler_failed(result, attempt)
        await before_retry(f"{tag} {action.describe()} attempt", route, attempt, failed.reason)
    if attempts > 1:
        log.error("%s %s: all %d attempts failed; giving up", tag, action.describe(), attempts)
    return failed, ran
