"""The Redis publisher and subscriber against a real server."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis

from eventrouter.redis import outbox


class CrashOnce(outbox.RedisPublisher):
    """A publisher whose writer meets a bug once: the first send raises."""

    crashed = False

    async def _send(self, batch: Any) -> Any:
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("injected writer fault")
        return await super()._send(batch)


async def receive(pubsub: Any, count: int) -> list[tuple[bytes, bytes]]:
    """Return the next ``count`` pmessages as (channel, data), failing after 3 seconds."""
    got: list[tuple[bytes, bytes]] = []
    async with asyncio.timeout(3):
        while len(got) < count:
            message = await pubsub.get_message(timeout=3)
            if message and message["type"] == "pmessage":
                got.append((message["channel"], message["data"]))
    return got


async def subscribed(url: str, pattern: str) -> tuple[aioredis.Redis, Any]:
    """Return a client and its pubsub, PSUBSCRIBEd to ``pattern`` (confirmed)."""
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.psubscribe(pattern)
    while (await pubsub.get_message(timeout=1)) is None:
        pass
    return client, pubsub


async def test_a_crashed_writer_is_logged_and_restarted(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, pubsub = await subscribed(redis_url, "t/*")
    publisher = CrashOnce(redis_url)
    publisher.start()
    try:
        with caplog.at_level(logging.ERROR, logger="eventrouter"):
            await publisher.publish("t/one", b"1")
            await publisher.publish("t/two", b"2")
            assert await receive(pubsub, 2) == [(b"t/one", b"1"), (b"t/two", b"2")]
        assert publisher.crashes == 1
        crash = next(r for r in caplog.records if "crashed" in r.getMessage())
        assert "restarting" in crash.getMessage() and crash.exc_info is not None
    finally:
        assert await publisher.close(grace=1) == 0
        await pubsub.aclose()
        await client.aclose()


async def test_the_outbox_is_held_while_the_gate_is_closed(redis_url: str) -> None:
    client, pubsub = await subscribed(redis_url, "t/*")
    gate = asyncio.Event()
    publisher = outbox.RedisPublisher(redis_url, gate=gate)
    publisher.start()
    try:
        await publisher.publish("t/held", b"1")
        assert await pubsub.get_message(timeout=0.2) is None
        assert publisher.queued() == {("t/held", b"1"): 1}
        gate.set()
        assert await receive(pubsub, 1) == [(b"t/held", b"1")]
        # The reply reaches the writer after the message reached the subscriber.
        await asyncio.wait_for(publisher.close(grace=2), 3)
        assert publisher.pending == 0
    finally:
        await publisher.close(grace=1)
        await pubsub.aclose()
        await client.aclose()


async def test_close_sends_what_the_gate_held(redis_url: str) -> None:
    client, pubsub = await subscribed(redis_url, "t/*")
    publisher = outbox.RedisPublisher(
        redis_url, gate=asyncio.Event()
    )  # as after the intake stopped
    publisher.start()
    try:
        await publisher.publish("t/last", b"1")
        assert await publisher.close(grace=2) == 0
        assert await receive(pubsub, 1) == [(b"t/last", b"1")]
    finally:
        await pubsub.aclose()
        await client.aclose()
