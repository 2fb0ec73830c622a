"""The subscription's health check, in process: a PING after silence, a close without a reply."""

from __future__ import annotations

import asyncio
import time

from redis.exceptions import ConnectionError as RedisConnectionError

from eventrouter.redis.health import HealthCheck


class Link:
    """A connection stand-in: counts PINGs, answers them or not, records the close."""

    def __init__(self, health: HealthCheck, *, answers: bool) -> None:
        self.health = health
        self.answers = answers
        self.pings = 0
        self.closed = asyncio.Event()
        self.pinged_thrice = asyncio.Event()

    async def ping(self) -> None:
        self.pings += 1
        if self.pings == 3:
            self.pinged_thrice.set()
        if self.answers:  # the PONG arrives: the reader stamps it
            asyncio.get_running_loop().call_later(0.01, self.hear)

    def hear(self) -> None:
        self.health.heard = time.monotonic()

    async def close(self) -> None:
        self.closed.set()


async def test_a_quiet_link_that_answers_is_kept() -> None:
    health = HealthCheck(interval=0.05, timeout=0.2)
    link = Link(health, answers=True)
    watcher = asyncio.create_task(health.watch(link.ping, link.close))
    await asyncio.wait_for(link.pinged_thrice.wait(), 5)  # again and again, after silences
    assert not link.closed.is_set()
    assert health.stale is None
    watcher.cancel()


async def test_a_link_that_does_not_answer_is_closed_with_the_reason() -> None:
    health = HealthCheck(interval=0.05, timeout=0.05)
    link = Link(health, answers=False)
    await asyncio.wait_for(health.watch(link.ping, link.close), 5)
    assert link.closed.is_set()
    assert link.pings == 1
    assert health.stale is not None and "no reply to PING within 0.05s" in health.stale


async def test_a_ping_that_cannot_be_sent_closes_the_link() -> None:
    health = HealthCheck(interval=0.01, timeout=1)

    async def broken() -> None:
        raise RedisConnectionError("Connection reset by peer.")

    closed = asyncio.Event()

    async def close() -> None:
        closed.set()

    await asyncio.wait_for(health.watch(broken, close), 5)
    assert closed.is_set()
    assert health.stale == "PING failed: Connection reset by peer"
