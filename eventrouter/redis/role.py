"""Whether the Redis this router subscribes to is the master: the router is then the leader.

NS8 makes the leader node's Redis the master and every other node's a replica, so ``ROLE``
on the subscribe connection tells a router whether it is the leader's. The answer is read at
start, every ``every`` seconds, and at once when asked (after a reconnect, or when
``cluster/event/leader-changed`` arrives).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from eventrouter.redis.bus import client, redact

log = logging.getLogger(__name__)

#: How often the role is read when nothing asks for it sooner (seconds).
ROLE_EVERY = 2.0


async def is_master(connection: aioredis.Redis) -> bool:
    """Return True when ``ROLE`` says the server is a master."""
    reply = await connection.role()
    role = reply[0]
    return (role.decode() if isinstance(role, bytes) else str(role)) == "master"


class RoleWatch:
    """Keep ``leader`` up to date with the role of the server at ``url``."""

    def __init__(
        self,
        url: str,
        every: float = ROLE_EVERY,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.url, self.every = url, every
        #: Told the new answer whenever it differs from the last one.
        self.on_change = on_change
        #: None until the role was read once.
        self.leader: bool | None = None
        self._asked = asyncio.Event()
        self._connection = client(url, connect_timeout=2, timeout=5)

    def ask(self) -> None:
        """Read the role again now (after a reconnect, on leader-changed)."""
        self._asked.set()

    async def refresh(self) -> bool | None:
        """Read the role once; log a change; keep the last answer when Redis does not reply."""
        try:
            leader = await is_master(self._connection)
        except (RedisError, OSError) as exc:
            log.debug("cannot read the role of Redis at %s: %s", redact(self.url), exc)
            return self.leader
        if leader != self.leader:
            log.info(  # the URL is in the "subscribed ... at" line already
                "this router is %s: the Redis it subscribes to is %s",
                "the leader" if leader else "not the leader",
                "the master" if leader else "a replica",
            )
            if self.on_change is not None:
                self.on_change(leader)
        self.leader = leader
        return leader

    async def run(self) -> None:
        """Refresh the role every ``every`` seconds, or sooner when asked, until cancelled."""
        while True:
            await self.refresh()
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for can lose a cancellation
            # that comes as its inner wait ends, and the router then never stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every):
                    await self._asked.wait()
            self._asked.clear()

    async def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(RedisError, OSError):
            await self._connection.aclose()
