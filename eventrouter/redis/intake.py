"""The intake: one pattern subscription, kept alive across Redis outages, handing on messages.

The subscription is confirmed before it counts as connected, checked by a PING when quiet
(``health``), made again with backoff after a break, and each PUBLISH is handed over once
however many of the patterns match its channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from eventrouter.redis.bus import (
    BACKOFF_CAP,
    BACKOFF_START,
    CONNECT_TIMEOUT,
    as_text,
    client,
    reason,
    redact,
)
from eventrouter.redis.health import HealthCheck
from eventrouter.support.stopping import cancel_until_done

log = logging.getLogger(__name__)

#: Messages read (or jobs run) between two turns given to the other tasks.
YIELD_EVERY = 32
#: While Redis stays unreachable, repeat the warning this often (seconds).
STILL_DOWN_EVERY = 60.0
#: Health check of the subscription: PING after this long without traffic (seconds) ...
PING_INTERVAL = 10.0
#: ... and reconnect when no reply came within this long.
PING_TIMEOUT = 5.0

#: Takes each message; a true result asks the intake to let the work it started go first.
Handler = Callable[[str, bytes], bool | None]


class Deduplicator:
    """Let through one message per PUBLISH, however many of our patterns match its channel.

    Redis writes all the copies of one PUBLISH for one client back to back, one per matching
    pattern; so a copy is a duplicate exactly when it repeats the previous message's channel
    and data under a pattern not yet seen for that message.
    """

    def __init__(self) -> None:
        self._last: tuple[bytes, bytes] | None = None
        self._patterns: set[bytes] = set()

    def first(self, pattern: bytes, channel: bytes, data: bytes) -> bool:
        """Return True when this message is the first copy of its PUBLISH."""
        if self._last == (channel, data) and pattern not in self._patterns:
            self._patterns.add(pattern)
            return False
        self._last = (channel, data)
        self._patterns = {pattern}
        return True


class Subscriber:
    """Keep a pattern subscription alive across Redis outages and hand messages to a handler.

    ``connected`` is set only once Redis confirmed every PSUBSCRIBE, and cleared as soon as the
    connection breaks or stops answering PING: the publisher holds derived events meanwhile.
    After a break, ``settle`` is awaited before subscribing again (a batch being published
    then is answered first) and ``resync`` is called once the new subscription is confirmed,
    before ``connected`` is set: the router handles there what it published and never saw.
    """

    def __init__(
        self,
        url: str,
        handler: Handler,
        *,
        connected: asyncio.Event | None = None,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float = PING_TIMEOUT,
        settle: Callable[[], Awaitable[None]] | None = None,
        resync: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.handler = handler
        self.patterns: set[str] = set()
        self.connected = connected if connected is not None else asyncio.Event()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.settle = settle
        self.resync = resync
        self.duplicates = 0
        #: Outages ended (reconnections), and the last outage: its start and end (None: going).
        self.reconnects = 0
        self.last_outage: tuple[float, float | None] | None = None
        self._pubsub: Any = None
        self._client: aioredis.Redis | None = None
        self._subscribed: set[str] = set()  # sent on the current connection
        self._dedup = Deduplicator()

    async def set_patterns(self, patterns: Iterable[str]) -> None:
        """Subscribe to new patterns first, then drop the old ones; no window without either."""
        self.patterns = set(patterns)
        if self._pubsub is None:
            return  # applied on (re)connect
        try:
            await self._apply_patterns()
        except (RedisError, OSError) as exc:
            log.warning("could not update subscriptions now (%s); they apply on reconnect", exc)

    async def _apply_patterns(self) -> None:
        added = self.patterns - self._subscribed
        removed = self._subscribed - self.patterns
        self._subscribed = set(self.patterns)
        if added:
            await self._pubsub.psubscribe(*sorted(added))
        if removed:
            await self._pubsub.punsubscribe(*sorted(removed))

    async def _connect(self) -> None:
        self._client = client(self.url, connect_timeout=CONNECT_TIMEOUT)
        self._pubsub = self._client.pubsub()
        self._dedup = Deduplicator()  # copies of one PUBLISH never span two connections
        self._subscribed = set()
        wanted = set(self.patterns)
        if wanted:
            await self._apply_patterns()
        else:  # keep a live subscription so the connection is checked and reused
            await self._pubsub.subscribe("eventrouter/idle")
            wanted = {"eventrouter/idle"}
        await self._confirm(wanted)
        log.info("subscribed to %d pattern(s) at %s", len(self.patterns), redact(self.url))

    async def _confirm(self, wanted: set[str]) -> None:
        """Read until Redis confirmed a subscription to each of ``wanted``, within the deadline."""
        deadline = time.monotonic() + self.ping_timeout
        confirmed: set[str] = set()
        while not wanted <= confirmed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RedisConnectionError(
                    f"Redis did not confirm the subscription within {self.ping_timeout:g}s"
                )
            message = await self._pubsub.get_message(timeout=left)
            if message is None:
                continue
            if message["type"] in ("psubscribe", "subscribe"):
                confirmed.add(as_text(message["channel"]))
            elif message["type"] == "pmessage":  # one pattern may be live before the others
                self._deliver(message)

    async def _disconnect(self) -> None:
        self.connected.clear()
        pubsub, connection, self._pubsub, self._client = self._pubsub, self._client, None, None
        for closing in (pubsub, connection):
            if closing is not None:
                try:  # a half-open connection may not even close: do not wait for it forever
                    await asyncio.wait_for(closing.aclose(), CONNECT_TIMEOUT)
                except (RedisError, OSError, TimeoutError) as exc:
                    log.debug("closing the old Redis connection: %s", exc)

    def _deliver(self, message: dict[str, Any]) -> bool:
        """Hand a message over; return True when the handler asks to let its work go first."""
        channel, data = message["channel"], message["data"]
        if not self._dedup.first(message["pattern"], channel, data):
            self.duplicates += 1
            return False
        try:
            return bool(self.handler(channel.decode("utf-8", "replace"), data))
        except Exception:  # a bug in handling one event must not stop the intake
            log.exception("internal error while handling an event on %r", channel)
            return False

    async def _serve(self) -> None:
        """Deliver messages until the connection fails; a health check PINGs it when quiet."""
        health = HealthCheck(self.ping_interval, self.ping_timeout)
        watcher = asyncio.create_task(
            health.watch(self._pubsub.ping, self._close_read), name="subscription health"
        )
        try:
            await self._read(health)
        except (RedisError, OSError) as exc:
            if health.stale is not None:  # the check closed it: say why
                raise RedisConnectionError(health.stale) from exc
            raise
        finally:
            await cancel_until_done(watcher, "the subscription's health check")

    async def _close_read(self) -> None:
        """Close the subscription's connection under the read, which then fails."""
        connection = self._pubsub.connection if self._pubsub is not None else None
        if connection is not None:
            await connection.disconnect(nowait=True)

    async def _read(self, health: HealthCheck) -> None:
        count = 0
        clock = time.monotonic
        while True:
            if health.stale is not None:  # closed while this delivered: never read it again
                raise RedisConnectionError(health.stale)
            # No timeout: the health check watches the silence (see redis/health.py).
            message = await self._pubsub.get_message(timeout=None)
            health.heard = clock()  # any reply proves the connection alive
            if message is None or message.get("type") != "pmessage":
                continue
            urgent = self._deliver(message)
            # Buffered messages come back without suspending: yield now and then, so that
            # the routes run while a burst is read and it does not all pile up queued. A
            # message that starts a run yields at once: the step starts before the next read
            # is set up, not after (an idle router reacting to one event).
            count += 1
            if urgent or count % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def run(self) -> None:
        """Connect, subscribe and deliver messages forever, reconnecting with backoff."""
        delay, down_since, warned = BACKOFF_START, None, 0.0
        while True:
            try:
                await self._connect()
                if down_since is not None:
                    self._log_restored(down_since)
                    if self.resync is not None:
                        self.resync()
                    down_since = None
                self.connected.set()
                delay = BACKOFF_START
                await self._serve()
            except (RedisError, OSError) as exc:
                was_up = self.connected.is_set()
                self.connected.clear()  # hold the outbox from now on
                if down_since is None:
                    down_since, warned = time.time(), time.monotonic()
                    self.last_outage = (down_since, None)
                    what = "lost the connection to" if was_up else "cannot reach"
                    log.error(
                        "%s Redis at %s: %s; retrying with backoff",
                        what,
                        redact(self.url),
                        reason(exc),
                    )
                elif time.monotonic() - warned >= STILL_DOWN_EVERY:
                    warned = time.monotonic()
                    log.warning(
                        "Redis at %s still unreachable since %s: %s",
                        redact(self.url),
                        _clock(down_since),
                        reason(exc),
                    )
                await self._disconnect()
                if was_up and self.settle is not None:
                    await self.settle()
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP)
            except asyncio.CancelledError:
                await self._disconnect()
                raise
            except Exception:  # a client bug or misuse: say so loudly, but keep trying
                log.exception(
                    "unexpected error on the Redis connection to %s; reconnecting in %.1fs",
                    redact(self.url),
                    BACKOFF_CAP,
                )
                if down_since is None:
                    down_since = time.time()
                await self._disconnect()
                await asyncio.sleep(BACKOFF_CAP)

    def _log_restored(self, down_since: float) -> None:
        now = time.time()
        self.reconnects += 1
        self.last_outage = (down_since, now)
        log.warning(
            "Redis at %s reachable again: outage from %s to %s (%.1fs); events published "
            "in that window may have been missed; resubscribed to %d pattern(s)",
            redact(self.url),
            _clock(down_since),
            _clock(now),
            now - down_since,
            len(self.patterns),
        )


def _clock(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).strftime("%H:%M:%S")
