"""Stopping a background task when a library may swallow its cancellation.

``task.cancel()`` followed by awaiting the task assumes the task lets the CancelledError
through. redis-py 8.1 was seen not to, when the cancellation arrived during a command on a
connection it was opening again after an outage: the command completed and the task went
on. A shutdown that awaits such a task hangs until systemd kills the router. Here the task is
cancelled again while it goes on, and left with an error after a bound, so that the router
always stops.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_until_done(
    task: asyncio.Task[Any], what: str, *, every: float = 0.1, within: float = 5.0
) -> None:
    """Cancel ``task`` until it ends, for up to ``within`` seconds; log an error if it does not.

    What the task raised is retrieved and dropped, as ``gather(..., return_exceptions=True)``
    would: the caller is stopping it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not task.done():
        if loop.time() >= deadline:
            log.error("%s did not stop within %gs of being cancelled; leaving it", what, within)
            return
        task.cancel()
        await asyncio.wait([task], timeout=every)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at exit
