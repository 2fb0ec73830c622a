"""Redis streams, for the failure journal: XADD, XDEL and ranges, each failure a StoreError."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventrouter.redis.bus import as_text, reason


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


def _entry(raw: Any) -> StreamEntry:
    entry_id, fields = raw
    return as_text(entry_id), {
        as_text(name): value if isinstance(value, bytes) else as_text(value).encode()
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
    return as_text(entry_id)


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
