"""The floor of publish -> step start for a Python subscriber: a bare redis-py client that
starts the step for each event.

    python bench/spawner.py URL PATTERN STEP

It PSUBSCRIBEs to PATTERN and, for each message, starts STEP with ``os.posix_spawn``, the
payload on its stdin, and waits for it: no routes, folders, trust checks, queues or logging.
What the router adds to its figure is the router's own; what this adds to the bare spawn is
the Redis hop and the client's wake-up, which every subscriber pays (NS8's agent too).
"""

from __future__ import annotations

import os
import sys

import redis


def serve(url: str, pattern: str, step: str) -> None:
    """Start ``step`` for every message of ``pattern`` until killed."""
    pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(pattern)
    env = dict(os.environ)
    for message in pubsub.listen():
        if message["type"] != "pmessage":
            continue
        read_end, write_end = os.pipe()
        try:
            pid = os.posix_spawn(
                step, [step], env, file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0)]
            )
            os.write(write_end, message["data"])
        finally:
            os.close(read_end)
            os.close(write_end)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    serve(*sys.argv[1:4])
