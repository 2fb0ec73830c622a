"""Where the router's CPU per event goes: the same step run in process, without Redis.

Run by ``bench/traffic.py`` in a fresh interpreter: ``python bench/inproc.py FOLDER RUNS``.
``FOLDER`` is an events folder holding ``spawn/`` (the spawn benchmark's one step). Prints
one JSON object: runs/s and CPU seconds per run of

* ``runner``: ``StepRunner.run_handler`` on ``FOLDER/spawn`` in a loop, one run after
  another (the step runner alone: listing, trust checks, spawn, output, exit);
* ``dispatcher``: ``RUNS`` events handed to ``Dispatcher.receive`` at once, the way the
  Redis intake hands them over, until none is left (decision, queue, run, bookkeeping; log
  level WARNING, so no line per run).

What the router's own figure has on top of the second is the Redis intake and the log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

from eventrouter.config.patterns import RouteIndex
from eventrouter.model import Settings
from eventrouter.runtime.dispatch import Dispatcher
from eventrouter.runtime.steps import StepRunner

WARM_UP = 20


class _NoPublisher:
    """The dispatcher's publisher; the events folder emits nothing."""

    async def publish(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the spawn benchmark's folder publishes nothing")


async def _runner(events: Path, runs: int, env: dict[str, str]) -> tuple[float, float]:
    runner = StepRunner(base_env=env)
    folder = events / "spawn"

    async def once() -> None:
        result = await runner.run_handler(
            folder, payload=b'{"seq": 0}', env={}, event_name="spawn",
            event_source="bench", timeout=None, tag="bench",
        )  # fmt: skip
        if not result.ok:
            raise SystemExit(f"the step failed: {result.error}")

    for _ in range(WARM_UP):
        await once()
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(runs):
        await once()
    return runs / (time.perf_counter() - start), (time.process_time() - cpu) / runs


async def _dispatcher(events: Path, runs: int, env: dict[str, str]) -> tuple[float, float]:
    runner = StepRunner(base_env=env)
    dispatcher = Dispatcher(Settings(events_dirs=(events,)), runner, _NoPublisher(), RouteIndex(()))

    async def burst(count: int) -> None:
        for seq in range(count):
            dispatcher.receive("bench/event/spawn", b'{"seq": %d}' % seq)
        while dispatcher.busy:  # the lane's worker runs until its queue is empty
            running = dispatcher.scheduler.running
            if not running:
                raise SystemExit("jobs wait with no worker to run them")
            await asyncio.wait(running)

    await burst(WARM_UP)
    cpu, start = time.process_time(), time.perf_counter()
    await burst(runs)
    elapsed = time.perf_counter() - start
    ended = dispatcher.counters["runs_ok"]
    if ended != runs + WARM_UP:
        raise SystemExit(f"{ended} of {runs + WARM_UP} runs ended well")
    return runs / elapsed, (time.process_time() - cpu) / runs


def main() -> None:
    """Print the two measurements as JSON."""
    events, runs = Path(sys.argv[1]), int(sys.argv[2])
    logging.basicConfig(level=logging.WARNING)
    env = dict(os.environ)
    runner = asyncio.run(_runner(events, runs, env))
    dispatcher = asyncio.run(_dispatcher(events, runs, env))
    print(json.dumps({"runner": runner, "dispatcher": dispatcher}))


if __name__ == "__main__":
    main()
