"""Connections to Redis: the one client factory, and what the users of a connection share.

The reconnect backoff and the connect timeout, a URL fit for logs, an error's reason fit for
a sentence, a reply as text, a quiet close, and the one-shot PUBLISH of ``eventrouter
publish`` and ``eventrouter retry``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: First wait before connecting again after a failure; it doubles up to BACKOFF_CAP.
BACKOFF_START = 0.1
BACKOFF_CAP = 5.0
#: Longest wait for a TCP connection, or for a closing one to go away.
CONNECT_TIMEOUT = 5.0


def client(url: str, *, connect_timeout: float, timeout: float | None = None) -> aioredis.Redis:
    """Return an asyncio Redis client for ``url`` (redis://, rediss://, unix://).

    Every connection of the package is made here, each use giving its own bounds:
    ``connect_timeout`` for making a connection, ``timeout`` for each reply (None: a read
    waits as long as it takes, as the subscription's blocking read must).

    redis-py's own retries are off: a subscription it re-made behind our back would hide the
    messages lost meanwhile, a pipeline it sent again would publish twice, and a task pushed
    again would run twice. The callers retry themselves, knowing what a retry means.
    """
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


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


def reason(exc: BaseException) -> str:
    """Return an exception's message without its final full stop, to go inside a sentence.

    redis-py ends its messages with '.', which reads as '...failed (host, port).; retrying'.
    """
    text = str(exc).strip()
    return (text[:-1] if text.endswith(".") else text) or type(exc).__name__


async def publish_once(url: str, channel: str, data: bytes) -> int:
    """Publish one message and close; raise ConnectionError with a clear message."""
    connection = client(url, connect_timeout=CONNECT_TIMEOUT)
    try:
        return int(await connection.publish(channel, data))
    except (RedisError, OSError) as exc:
        raise ConnectionError(f"cannot publish to Redis at {redact(url)}: {reason(exc)}") from exc
    finally:
        await connection.aclose()


def as_text(value: Any) -> str:
    """Return a reply (bytes or not) as text; bytes that are not UTF-8 are replaced."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def close_quietly(connection: aioredis.Redis) -> None:
    """Close a client's connection pool; a failure to close is only worth a debug line."""
    try:
        await connection.aclose()
    except (RedisError, OSError) as exc:
        log.debug("closing a Redis connection: %s", exc)
