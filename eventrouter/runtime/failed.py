"""Why an action failed, for the log and the failure journal."""

from __future__ import annotations

from dataclasses import dataclass

from eventrouter.runtime.steps import HandlerResult, describe_status


@dataclass(frozen=True)
class Failed:
    """Why an action failed, for the log and the failure journal."""

    status: str
    reason: str
    step: str | None = None
    tail: tuple[str, ...] = ()
    attempts: int = 1


def handler_failed(result: HandlerResult, attempts: int) -> Failed:
    """Return why a handler folder run (or an ``exec:`` command) failed, after ``attempts``."""
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
