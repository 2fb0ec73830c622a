"""The floor of an emit route in Python: a bare redis-py client relaying each event.

    python bench/relay.py URL IN_PATTERN OUT_CHANNEL

It PSUBSCRIBEs to IN_PATTERN and, for each message, parses its JSON payload and publishes one
derived event ``{"n": "<n>"}`` on OUT_CHANNEL; what arrives together goes out in one pipeline
(up to 256 at a time). No routes, templates, logging or bounds: the baseline of the emit bench.
"""

from __future__ import annotations

import asyncio
import json
import sys

import redis.asyncio as aioredis

BATCH = 256


async def relay(url: str, pattern: str, out: str) -> None:
    """Relay every message of ``pattern`` to ``out`` until killed."""
    listener, sender = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    await pubsub.psubscribe(pattern)
    await sender.ping()
    while True:
        message = await pubsub.get_message(timeout=1.0)
        if message is None:
            continue
        pipe = sender.pipeline(transaction=False)
        while message is not None:
            n = json.loads(message["data"])["n"]
            pipe.publish(out, json.dumps({"n": str(n)}))
            if len(pipe) >= BATCH:
                break
            message = await pubsub.get_message(timeout=0.0)
        await pipe.execute()


if __name__ == "__main__":
    asyncio.run(relay(*sys.argv[1:4]))
