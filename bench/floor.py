"""The floor: the least a Python daemon on the router's stack does to run NS8 events folders.

    python bench/floor.py URL EVENTS_DIR

It PSUBSCRIBEs ``*/event/*`` with redis-py's sync client (hiredis parses the replies) and, for
each message, runs the executable files of ``EVENTS_DIR/<event name>/`` in byte-wise order with
``subprocess.run``, the payload on stdin, ``AGENT_EVENT_NAME`` and ``AGENT_EVENT_SOURCE`` set,
stopping at the first step that exits non-zero. No validation, queue, journal or log: the
baseline each target of bench/README.md is measured against, in the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import redis


def serve(url: str, events: str) -> None:
    """Run the steps of each event's folder until killed."""
    pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("*/event/*")
    base = dict(os.environ)
    root = os.fsencode(events)
    for message in pubsub.listen():
        if message["type"] != "pmessage":
            continue
        source, _, name = message["channel"].partition(b"/event/")
        if b"/" in name or name.startswith(b"."):  # the one guard: stay inside EVENTS_DIR
            continue
        folder = os.path.join(root, name)
        try:
            steps = sorted(os.listdir(folder))  # bytes in, bytes out: byte-wise order
        except OSError:
            continue
        env = dict(base, AGENT_EVENT_NAME=os.fsdecode(name), AGENT_EVENT_SOURCE=os.fsdecode(source))
        for step in steps:
            path = os.path.join(folder, step)
            if not os.access(path, os.X_OK) or os.path.isdir(path):
                continue
            if subprocess.run([path], input=message["data"], env=env, check=False).returncode:
                break


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
