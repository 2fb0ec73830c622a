"""Ask the routers over the control channel and collect their answers; read a server's role.

The protocol (messages, limits) is ``runtime/control.py``; this is only its transport.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.exceptions import RedisError

from eventrouter.redis.bus import CONNECT_TIMEOUT, client, redact


async def ask(
    url: str, channel: str, request: bytes, reply: str, *, wait: float, first: bool
) -> list[bytes]:
    """Publish ``request`` and return the answers on ``reply`` within ``wait`` seconds.

    The reply channel is subscribed before the request goes out, so no answer is missed;
    with ``first`` the first answer ends the wait. No subscriber to ``channel``: no wait.
    Raise ConnectionError with a clear message when Redis cannot be reached.
    """
    connection = client(url, connect_timeout=CONNECT_TIMEOUT)
    pubsub: Any = connection.pubsub()
    answers: list[bytes] = []
    try:
        await pubsub.subscribe(reply)
        if await pubsub.get_message(timeout=wait) is None:  # the subscription, confirmed
            raise ConnectionError(f"Redis at {redact(url)} did not confirm SUBSCRIBE in time")
        if not await connection.publish(channel, request):
            return answers
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            message = await pubsub.get_message(timeout=left)
            if message is None or message.get("type") != "message":
                continue
            answers.append(message["data"])
            if first:
                break
        return answers
    except (RedisError, OSError) as exc:
        raise ConnectionError(f"cannot ask the routers at {redact(url)}: {exc}") from exc
    finally:
        await pubsub.aclose()
        await connection.aclose()


async def role(url: str, within: float = 1.0) -> str:
    """Return the ROLE of the server at ``url`` (master, replica, ...), or why it is unknown."""
    connection = client(url, connect_timeout=within)
    try:
        reply = await asyncio.wait_for(connection.role(), within)
        name = reply[0]
        text = name.decode() if isinstance(name, bytes) else str(name)
        # ROLE still says "slave"; Redis has called it a replica since 5.0, and so do we.
        return "replica" if text == "slave" else text
    except (RedisError, OSError, TimeoutError) as exc:
        return f"unknown ({type(exc).__name__})"
    finally:
        await connection.aclose()
