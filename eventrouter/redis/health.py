"""The subscription's health check: PING a quiet connection, replace one that does not answer.

It runs beside the read rather than inside it. A read with a timeout arms and cancels a timer
for every message (redis-py's ``get_message(timeout=...)``: about 10 us a message more than a
blocking read, measured); this check wakes once per interval instead. The reader stamps
``heard`` with every message it gets; after ``interval`` without one the check sends a PING
and, when nothing comes back (not even the PONG) within ``timeout``, says why in ``stale`` and
closes the connection, which ends the blocked read with a connection error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError


class HealthCheck:
    """When the subscription's connection last spoke, and why it was given up, if it was."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        #: ``time.monotonic()`` when the last message (any reply) arrived; the reader sets it.
        self.heard = time.monotonic()
        #: Why the check closed the connection; None while it trusts it.
        self.stale: str | None = None

    async def watch(
        self, ping: Callable[[], Awaitable[object]], close: Callable[[], Awaitable[None]]
    ) -> None:
        """PING after ``interval`` of silence; ``close`` when no reply comes within ``timeout``."""
        try:
            while True:
                quiet = time.monotonic() - self.heard
                if quiet < self.interval:
                    await asyncio.sleep(self.interval - quiet)
                    continue
                sent = time.monotonic()
                await ping()
                await asyncio.sleep(self.timeout)
                if self.heard < sent:
                    self.stale = (
                        f"no reply to PING within {self.timeout:g}s: the connection looks "
                        "half-open; replacing it"
                    )
                    break
        except (RedisError, OSError) as exc:  # the PING could not even be sent
            self.stale = f"PING failed: {str(exc).strip().rstrip('.') or type(exc).__name__}"
        await close()
