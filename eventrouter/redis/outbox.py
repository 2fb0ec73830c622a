"""The outbox: derived events published in order, in pipelined batches, on their own connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from typing import Any, Protocol

from redis.exceptions import RedisError

from eventrouter.redis.bus import (
    BACKOFF_CAP,
    BACKOFF_START,
    CONNECT_TIMEOUT,
    client,
    reason,
    redact,
)
from eventrouter.support.stopping import cancel_until_done

log = logging.getLogger(__name__)

#: Longest wait, after the subscription broke, for a batch being published to be answered.
SETTLE_TIMEOUT = 5.0


class Receipt(Protocol):
    """Told what became of one derived event handed to the publisher."""

    def sent(self, receivers: int) -> None:
        """Redis accepted the PUBLISH and counted ``receivers``."""

    def refused(self, reason: str) -> None:
        """Redis refused this PUBLISH alone (NOPERM, ...): it is not sent, and never will be."""


class RedisPublisher:
    """Publish derived events in order, in pipelined batches, on their own connection.

    ``publish`` queues the event and returns at once, waiting only while the outbox is
    full; one writer sends what is queued as a pipeline, so a burst of derived events costs
    a round trip per batch, not per event, and order is kept. During a Redis outage the
    outbox holds the events (bounded: then ``publish`` waits, which slows the routes down
    instead of dropping) and sends them when Redis is back. While ``gate`` is clear (the
    router's own subscription is down) the outbox is held too, so that what the router
    routes itself is not published into a window where it cannot come back. A PUBLISH that
    Redis refuses fails alone; a lost connection sends the batch again.
    """

    def __init__(
        self,
        url: str,
        *,
        limit: int = 10_000,
        batch: int = 500,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.url = url
        self.limit = limit
        self.batch = batch
        self.gate = gate
        self.sent = 0
        self.refused = 0
        self.crashes = 0
        self._client = client(url, connect_timeout=CONNECT_TIMEOUT)
        self._outbox: deque[tuple[str, bytes, Receipt | None]] = deque()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._drained = asyncio.Event()
        self._idle = asyncio.Event()  # no batch waiting for its replies
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Return how many derived events wait to be sent."""
        return len(self._outbox)

    def queued(self) -> Counter[tuple[str, bytes]]:
        """Return the (channel, data) of the events not yet sent, with their multiplicity."""
        return Counter((channel, data) for channel, data, _ in self._outbox)

    def start(self) -> None:
        """Start the writer task, watched: a crash is logged and the writer started again."""
        self._writer = asyncio.create_task(self._supervise(), name="publisher")

    async def publish(self, channel: str, data: bytes, receipt: Receipt | None = None) -> None:
        """Queue ``data`` for ``channel``; wait only while the outbox is full."""
        while len(self._outbox) >= self.limit:
            self._space.clear()
            await self._space.wait()
        self._outbox.append((channel, data, receipt))
        self._wake.set()

    async def settle(self) -> None:
        """Wait until the batch being sent, if any, was answered (or failed), within bounds."""
        try:
            await asyncio.wait_for(self._idle.wait(), SETTLE_TIMEOUT)
        except TimeoutError:
            log.warning(
                "a batch of derived events sent to %s is still unanswered after %.1fs",
                redact(self.url),
                SETTLE_TIMEOUT,
            )

    async def _supervise(self) -> None:
        while True:
            try:
                await self._write()
            except Exception:  # the outbox is intact: log loudly, start again
                self.crashes += 1
                self._idle.set()
                log.exception(
                    "the writer publishing derived events to %s crashed; restarting it in "
                    "%.1fs (%d waiting)",
                    redact(self.url),
                    BACKOFF_START,
                    len(self._outbox),
                )
                await asyncio.sleep(BACKOFF_START)
                self._wake.set()

    async def _write(self) -> None:
        delay, down_since = BACKOFF_START, 0.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._gather()
            while self._outbox:
                if self.gate is not None and not self.gate.is_set():
                    await self.gate.wait()
                    continue  # the outbox may have changed meanwhile
                batch = [self._outbox[n] for n in range(min(self.batch, len(self._outbox)))]
                self._idle.clear()
                try:
                    results = await self._send(batch)
                except (RedisError, OSError) as exc:
                    if not down_since:
                        down_since = time.time()
                        log.error(
                            "cannot publish derived events to %s: %s; %d waiting, "
                            "retrying with backoff",
                            redact(self.url),
                            reason(exc),
                            len(self._outbox),
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_CAP)
                    continue
                finally:
                    self._idle.set()
                if down_since:
                    log.warning(
                        "publishing to %s again after %.1fs",
                        redact(self.url),
                        time.time() - down_since,
                    )
                    down_since, delay = 0.0, BACKOFF_START
                for _ in batch:
                    self._outbox.popleft()
                self._settle(batch, results)
                self._space.set()
            self._drained.set()

    def _settle(self, batch: list[tuple[str, bytes, Receipt | None]], results: list[Any]) -> None:
        """Tell each event's receipt what Redis answered for it."""
        for (channel, _, receipt), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                self.refused += 1
                if receipt is None:
                    log.error("Redis refused to publish on %r: %s", channel, result)
                else:
                    receipt.refused(f"{type(result).__name__}: {result}")
                continue
            self.sent += 1
            if receipt is not None:
                receipt.sent(int(result))

    async def _gather(self) -> None:
        """Let a burst build up a batch: wait while each turn of the loop adds to it."""
        size = len(self._outbox)
        while size < self.batch:
            await asyncio.sleep(0)
            if len(self._outbox) == size:
                return
            size = len(self._outbox)

    async def _send(self, batch: list[tuple[str, bytes, Receipt | None]]) -> list[Any]:
        """Send a batch; return each command's reply or error, raise on a connection error."""
        pipe = self._client.pipeline(transaction=False)
        for channel, data, _ in batch:
            pipe.publish(channel, data)
        return list(await pipe.execute(raise_on_error=False))

    async def close(self, grace: float = 5.0) -> int:
        """Send what is queued (for up to ``grace`` seconds), then close; return what was not."""
        # Stopping: the intake is gone, there is no subscription left to wait for.
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.set()
        if self._outbox and self._writer is not None:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):  # what is left is reported just below
                await asyncio.wait_for(self._drained.wait(), grace)
        left = len(self._outbox)
        if left:
            log.error(
                "%d derived event(s) could not be published to %s before stopping",
                left,
                redact(self.url),
            )
        if self._writer is not None:
            await cancel_until_done(self._writer, "the publisher's writer")
        await self._client.aclose()
        return left
