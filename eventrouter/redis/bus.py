"""Redis: connect, PSUBSCRIBE, reconnect with backoff, publish. All of redis-py lives here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventrouter.redis.health import HealthCheck
from eventrouter.runtime.stopping import cancel_until_done

log = logging.getLogger(__name__)

BACKOFF_START = 0.1
#: Messages read (or jobs run) between two turns given to the other tasks.
YIELD_EVERY = 32
BACKOFF_CAP = 5.0
#: While Redis stays unreachable, repeat the warning this often (seconds).
STILL_DOWN_EVERY = 60.0
#: Health check of the subscription: PING after this long without traffic (seconds) ...
PING_INTERVAL = 10.0
#: ... and reconnect when no reply came within this long.
PING_TIMEOUT = 5.0
#: Longest wait for a TCP connection, or for a closing one to go away.
CONNECT_TIMEOUT = 5.0
#: Longest wait, after the subscription broke, for a batch being published to be answered.
SETTLE_TIMEOUT = 5.0

#: Takes each message; a true result asks the intake to let the work it started go first.
Handler = Callable[[str, bytes], bool | None]


def client(url: str, **options: Any) -> aioredis.Redis:
    """Return an asyncio Redis client for ``url`` (redis://, rediss://, unix://).

    redis-py's own retries are off: a subscription it re-made behind our back would hide the
    messages lost meanwhile, and a pipeline it sent again would publish twice. The callers
    retry themselves, knowing what a retry means.
    """
    options.setdefault("retry", Retry(NoBackoff(), 0))
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
        self._client = client(self.url, socket_connect_timeout=CONNECT_TIMEOUT)
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
                confirmed.add(_text(message["channel"]))
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
        self._client = client(url, socket_connect_timeout=CONNECT_TIMEOUT)
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


def reason(exc: BaseException) -> str:
    """Return an exception's message without its final full stop, to go inside a sentence.

    redis-py ends its messages with '.', which reads as '...failed (host, port).; retrying'.
    """
    text = str(exc).strip()
    return (text[:-1] if text.endswith(".") else text) or type(exc).__name__


async def publish_once(url: str, channel: str, data: bytes) -> int:
    """Publish one message and close; raise ConnectionError with a clear message."""
    connection = client(url, socket_connect_timeout=5)
    try:
        return int(await connection.publish(channel, data))
    except (RedisError, OSError) as exc:
        raise ConnectionError(f"cannot publish to Redis at {redact(url)}: {reason(exc)}") from exc
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

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        #: True when Redis could not be reached (it may be later), not a refusal.
        self.unreachable = unreachable


#: A stream entry: its id ("1700000000000-0") and its fields.
StreamEntry = tuple[str, dict[str, bytes]]


def _store_error(key: str, exc: BaseException) -> StoreError:
    unreachable = isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError))
    text = f"{type(exc).__name__}: {reason(exc)} (stream {key!r})"
    return StoreError(text, unreachable=unreachable)


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
