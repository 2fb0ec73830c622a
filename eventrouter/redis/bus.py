"""Redis: connect, PSUBSCRIBE, reconnect with backoff, publish. All of redis-py lives here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

BACKOFF_START = 0.1
#: Messages read (or jobs run) between two turns given to the other tasks.
YIELD_EVERY = 32
BACKOFF_CAP = 5.0
#: While Redis stays unreachable, repeat the warning this often (seconds).
STILL_DOWN_EVERY = 60.0

Handler = Callable[[str, bytes], None]


def client(url: str, **options: Any) -> aioredis.Redis:
    """Return an asyncio Redis client for ``url`` (redis://, rediss://, unix://)."""
    return aioredis.Redis.from_url(url, **options)


def redact(url: str) -> str:
    """Return ``url`` without its password (in the userinfo or a ``password=`` query), for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, mark, query = rest.partition("?")
    if mark:
        query = re.sub(r"(^|&)(password=)[^&#]*", r"\1\2***", query, flags=re.IGNORECASE)
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.partition(":")[0]
        rest = f"{user + ':***@' if user else '***@'}{host}"
    return f"{scheme}://{rest}{mark}{query}"


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
    """Keep a pattern subscription alive across Redis outages and hand messages to a handler."""

    def __init__(self, url: str, handler: Handler) -> None:
        self.url = url
        self.handler = handler
        self.patterns: set[str] = set()
        self.connected = asyncio.Event()
        self.duplicates = 0
        self._pubsub: Any = None
        self._client: aioredis.Redis | None = None
        self._dedup = Deduplicator()

    async def set_patterns(self, patterns: Iterable[str]) -> None:
        """Subscribe to new patterns first, then drop the old ones; no window without either."""
        wanted = set(patterns)
        added, removed = wanted - self.patterns, self.patterns - wanted
        self.patterns = wanted
        if self._pubsub is None or not self.connected.is_set():
            return  # applied on (re)connect
        try:
            if added:
                await self._pubsub.psubscribe(*sorted(added))
            if removed:
                await self._pubsub.punsubscribe(*sorted(removed))
        except (RedisError, OSError) as exc:
            log.warning("could not update subscriptions now (%s); they apply on reconnect", exc)

    async def _connect(self) -> None:
        self._client = client(self.url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        if self.patterns:
            await self._pubsub.psubscribe(*sorted(self.patterns))
        else:  # keep a live subscription so the connection is checked and reused
            await self._pubsub.subscribe("eventrouter/idle")
        self.connected.set()
        log.info("subscribed to %d pattern(s) at %s", len(self.patterns), redact(self.url))

    async def _disconnect(self) -> None:
        self.connected.clear()
        pubsub, connection, self._pubsub, self._client = self._pubsub, self._client, None, None
        for closing in (pubsub, connection):
            if closing is not None:
                try:
                    await closing.aclose()
                except (RedisError, OSError) as exc:
                    log.debug("closing the old Redis connection: %s", exc)

    async def _read(self) -> None:
        count = 0
        while True:
            message = await self._pubsub.get_message(timeout=None)
            if message is None or message.get("type") != "pmessage":
                continue
            channel, data = message["channel"], message["data"]
            if not self._dedup.first(message["pattern"], channel, data):
                self.duplicates += 1
                continue
            try:
                self.handler(channel.decode("utf-8", "replace"), data)
            except Exception:  # a bug in handling one event must not stop the intake
                log.exception("internal error while handling an event on %r", channel)
            # Buffered messages come back without suspending: yield now and then, so that
            # the routes run while a burst is read and it does not all pile up queued.
            count += 1
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def run(self) -> None:
        """Connect, subscribe and deliver messages forever, reconnecting with backoff."""
        delay, down_since, warned = BACKOFF_START, None, 0.0
        while True:
            try:
                await self._connect()
                if down_since is not None:
                    self._log_restored(down_since)
                    down_since = None
                delay = BACKOFF_START
                await self._read()
            except (RedisError, OSError) as exc:
                if down_since is None:
                    down_since, warned = time.time(), time.monotonic()
                    what = "lost the connection to" if self.connected.is_set() else "cannot reach"
                    log.error(
                        "%s Redis at %s: %s; retrying with backoff", what, redact(self.url), exc
                    )
                elif time.monotonic() - warned >= STILL_DOWN_EVERY:
                    warned = time.monotonic()
                    log.warning(
                        "Redis at %s still unreachable since %s: %s",
                        redact(self.url),
                        _clock(down_since),
                        exc,
                    )
                await self._disconnect()
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
                await self._disconnect()
                await asyncio.sleep(BACKOFF_CAP)

    def _log_restored(self, down_since: float) -> None:
        now = time.time()
        log.warning(
            "Redis at %s reachable again: outage from %s to %s (%.1fs); resubscribed "
            "to %d pattern(s)",
            redact(self.url),
            _clock(down_since),
            _clock(now),
            now - down_since,
            len(self.patterns),
        )


def _clock(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).strftime("%H:%M:%S")


class RedisPublisher:
    """Publish derived events in order, in pipelined batches, on their own connection.

    ``publish`` queues the event and returns at once, waiting only while the outbox is
    full; one writer sends what is queued as a pipeline, so a burst of derived events costs
    a round trip per batch, not per event, and order is kept. During a Redis outage the
    outbox holds the events (bounded: then ``publish`` waits, which slows the routes down
    instead of dropping) and sends them when Redis is back.
    """

    def __init__(self, url: str, *, limit: int = 10_000, batch: int = 500) -> None:
        self.url = url
        self.limit = limit
        self.batch = batch
        self.sent = 0
        self._client = client(url)
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._drained = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Return how many derived events wait to be sent."""
        return len(self._outbox)

    def start(self) -> None:
        """Start the writer task."""
        self._writer = asyncio.create_task(self._write(), name="publisher")

    async def publish(self, channel: str, data: bytes) -> None:
        """Queue ``data`` for ``channel``; wait only while the outbox is full."""
        while len(self._outbox) >= self.limit:
            self._space.clear()
            await self._space.wait()
        self._outbox.append((channel, data))
        self._wake.set()

    async def _write(self) -> None:
        delay, down_since = BACKOFF_START, 0.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._gather()
            while self._outbox:
                batch = [self._outbox[n] for n in range(min(self.batch, len(self._outbox)))]
                try:
                    await self._send(batch)
                except (RedisError, OSError) as exc:
                    if not down_since:
                        down_since = time.time()
                        log.error(
                            "cannot publish derived events to %s: %s; %d waiting, "
                            "retrying with backoff",
                            redact(self.url),
                            exc,
                            len(self._outbox),
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_CAP)
                    continue
                if down_since:
                    log.warning(
                        "publishing to %s again after %.1fs",
                        redact(self.url),
                        time.time() - down_since,
                    )
                    down_since, delay = 0.0, BACKOFF_START
                for _ in batch:
                    self._outbox.popleft()
                self.sent += len(batch)
                self._space.set()
            self._drained.set()

    async def _gather(self) -> None:
        """Let a burst build up a batch: wait while each turn of the loop adds to it."""
        size = len(self._outbox)
        while size < self.batch:
            await asyncio.sleep(0)
            if len(self._outbox) == size:
                return
            size = len(self._outbox)

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        if len(batch) == 1:
            await self._client.publish(*batch[0])
            return
        pipe = self._client.pipeline(transaction=False)
        for channel, data in batch:
            pipe.publish(channel, data)
        await pipe.execute()

    async def close(self, grace: float = 5.0) -> int:
        """Send what is queued (for up to ``grace`` seconds), then close; return what was not."""
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
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await self._client.aclose()
        return left


async def publish_once(url: str, channel: str, data: bytes) -> int:
    """Publish one message and close; raise ConnectionError with a clear message."""
    connection = client(url, socket_connect_timeout=5)
    try:
        return int(await connection.publish(channel, data))
    except (RedisError, OSError) as exc:
        raise ConnectionError(f"cannot publish to Redis at {redact(url)}: {exc}") from exc
    finally:
        await connection.aclose()


async def ping(url: str) -> bool:
    """Return True when the server at ``url`` answers."""
    connection = client(url, socket_connect_timeout=2)
    try:
        return bool(await connection.ping())
    except (RedisError, OSError):
        return False
    finally:
        await connection.aclose()


# --- Streams, for the failure journal -------------------------------------------------------


class StoreError(Exception):
    """A Redis command failed: unreachable, no permission (NOPERM), read-only replica, type."""


#: A stream entry: its id ("1700000000000-0") and its fields.
StreamEntry = tuple[str, dict[str, bytes]]


def _store_error(key: str, exc: BaseException) -> StoreError:
    return StoreError(f"{type(exc).__name__}: {exc} (stream {key!r})")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entry(raw: Any) -> StreamEntry:
    entry_id, fields = raw
    return _text(entry_id), {
        _text(name): value if isinstance(value, bytes) else _text(value).encode()
        for name, value in (fields or {}).items()
    }


async def stream_add(
    connection: aioredis.Redis, key: str, fields: dict[str, bytes], maxlen: int | None
) -> str:
    """Append an entry (XADD, trimming exactly to ``maxlen`` entries when given); return its id."""
    values: dict[Any, Any] = dict(fields)
    try:
        entry_id = await connection.xadd(key, values, maxlen=maxlen, approximate=False)
    except (RedisError, OSError) as exc:
        raise _store_error(key, exc) from exc
    return _text(entry_id)


async def stream_delete(connection: aioredis.Redis, key: str, entry_id: str) -> None:
    """Delete one entry (XDEL)."""
    try:
        await connection.xdel(key, entry_id)
    except (RedisError, OSError) as exc:
        raise _store_error(key, exc) from exc


async def stream_range_rev(
    connection: aioredis.Redis, key: str, end: str, count: int
) -> list[StreamEntry]:
    """Return up to ``count`` entries at or before ``end`` ("+", an id, "(id"), newest first."""
    try:
        raw = await connection.xrevrange(key, max=end, min="-", count=count)
    except (RedisError, OSError) as exc:
        raise _store_error(key, exc) from exc
    return [_entry(item) for item in raw or []]


async def stream_get(connection: aioredis.Redis, key: str, entry_id: str) -> StreamEntry | None:
    """Return the entry ``entry_id`` (XRANGE id id), or None when there is none."""
    try:
        raw = await connection.xrange(key, min=entry_id, max=entry_id, count=1)
    except (RedisError, OSError) as exc:
        raise _store_error(key, exc) from exc
    return _entry(raw[0]) if raw else None


async def close_quietly(connection: aioredis.Redis) -> None:
    """Close a client's connection pool; a failure to close is only worth a debug line."""
    try:
        await connection.aclose()
    except (RedisError, OSError) as exc:
        log.debug("closing a Redis connection: %s", exc)
