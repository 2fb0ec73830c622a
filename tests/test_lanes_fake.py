"""The scheduler's fast tier: modes, keys, debounce, throttle and bounds, on a fake clock.

No server, no subprocess, no sleeping: a fake runner holds each run until the test lets it
finish, and the fake clock of eventrouter.testing fires the debounce/throttle timers when the
test moves it on. ``tests/test_modes.py`` checks the same semantics through the whole router.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from eventrouter.config.templates import Text
from eventrouter.model import Event, Mode, RetryPolicy, Route
from eventrouter.runtime.lanes import Job, Scheduler
from eventrouter.testing import FakeClock


class FakeRunner:
    """Runs that start when the scheduler says and end when the test says."""

    def __init__(self) -> None:
        self.started: list[str] = []  # "route:channel", in start order
        self.stopped: list[str] = []  # cancelled runs (restart)
        self._ends: dict[str, asyncio.Future[None]] = {}

    async def __call__(self, job: Job) -> None:
        name = f"{job.route.name}:{job.event.channel}"
        self.started.append(name)
        self._ends[name] = asyncio.get_running_loop().create_future()
        try:
            await self._ends[name]
        except asyncio.CancelledError:
            self.stopped.append(name)
            raise

    @property
    def running(self) -> list[str]:
        """Return the runs started and not ended, in start order."""
        return [name for name in self.started if not self._ends[name].done()]

    def finish(self, name: str) -> None:
        """End the run ``name`` (route:channel)."""
        self._ends[name].set_result(None)


async def settle() -> None:
    """Let the scheduler's tasks take every step they can without time passing."""
    for _ in range(20):
        await asyncio.sleep(0)


def make_route(name: str = "r", mode: Mode = "queued", **options: Any) -> Route:
    """Return a route with no actions: the fake runner stands for them."""
    return Route(name=name, patterns=(), actions=(), file="r.yml", line=1, mode=mode, **options)


def job(route: Route, channel: str, key: str = "") -> Job:
    """Return a job of ``route`` for an event on ``channel``."""
    return Job(route, Event(channel, b"{}"), {}, key)


@dataclass
class Bench:
    """A scheduler wired to a fake runner and a fake clock."""

    runner: FakeRunner
    clock: FakeClock
    counters: Counter[str]
    scheduler: Scheduler


Maker = Callable[..., Bench]


@pytest.fixture
async def make_bench() -> AsyncIterator[Maker]:
    """Return a maker of benches (bounds as keywords); stop their runs at the end."""
    made: list[Bench] = []

    def make(queue_limit: int = 100, max_pending: int = 1000) -> Bench:
        runner, clock, counters = FakeRunner(), FakeClock(), Counter[str]()
        scheduler = Scheduler(
            runner,
            queue_limit=queue_limit,
            max_pending=max_pending,
            counters=counters,
            call_later=clock.call_later,
        )
        made.append(Bench(runner, clock, counters, scheduler))
        return made[-1]

    yield make
    for item in made:
        item.scheduler.close()
        running = item.scheduler.running
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


@pytest.fixture
def bench(make_bench: Maker) -> Bench:
    """Return a scheduler with roomy bounds, a fake runner and a fake clock."""
    return make_bench()


# --- modes -----------------------------------------------------------------------------------


async def test_queued_runs_one_at_a_time_in_arrival_order(bench: Bench) -> None:
    route = make_route()
    for channel in ("e1", "e2", "e3"):
        assert bench.scheduler.submit(job(route, channel))
    await settle()
    assert bench.runner.running == ["r:e1"]
    bench.runner.finish("r:e1")
    await settle()
    assert bench.runner.running == ["r:e2"]
    bench.runner.finish("r:e2")
    await settle()
    bench.runner.finish("r:e3")
    await settle()
    assert bench.runner.started == ["r:e1", "r:e2", "r:e3"]
    assert bench.scheduler.lanes == {}  # an idle lane is forgotten
    assert bench.scheduler.pending == 0


async def test_queued_routes_run_side_by_side(bench: Bench) -> None:
    bench.scheduler.submit(job(make_route("a"), "e1"))
    bench.scheduler.submit(job(make_route("b"), "e1"))
    await settle()
    assert bench.runner.running == ["a:e1", "b:e1"]


async def test_keys_order_each_key_and_run_keys_side_by_side(bench: Bench) -> None:
    route = make_route(key=Text("{{ payload.module }}"))
    for channel, key in (("m1-1", "m1"), ("m2-1", "m2"), ("m1-2", "m1")):
        bench.scheduler.submit(job(route, channel, key))
    await settle()
    assert bench.runner.running == ["r:m1-1", "r:m2-1"]
    assert set(bench.scheduler.lanes) == {"r[m1]", "r[m2]"}
    bench.runner.finish("r:m2-1")
    await settle()
    assert bench.runner.running == ["r:m1-1"]  # m1's second event waits for its first
    bench.runner.finish("r:m1-1")
    await settle()
    assert bench.runner.running == ["r:m1-2"]


async def test_parallel_runs_at_most_max_and_queues_the_rest_in_order(bench: Bench) -> None:
    route = make_route(mode="parallel", max_runs=2)
    for channel in ("e1", "e2", "e3", "e4"):
        bench.scheduler.submit(job(route, channel))
    await settle()
    assert bench.runner.running == ["r:e1", "r:e2"]
    bench.runner.finish("r:e2")
    await settle()
    assert bench.runner.running == ["r:e1", "r:e3"]
    bench.runner.finish("r:e1")
    await settle()
    assert bench.runner.running == ["r:e3", "r:e4"]


async def test_single_drops_what_arrives_during_a_run(bench: Bench) -> None:
    route = make_route(mode="single")
    assert bench.scheduler.submit(job(route, "e1"))
    await settle()
    assert not bench.scheduler.submit(job(route, "e2"))
    assert not bench.scheduler.submit(job(route, "e3"))
    assert bench.counters["dropped_single"] == 2
    bench.runner.finish("r:e1")
    await settle()
    assert bench.scheduler.submit(job(route, "e4"))  # the lane is free again
    await settle()
    assert bench.runner.started == ["r:e1", "r:e4"]


async def test_restart_stops_the_run_going_and_runs_the_newest(bench: Bench) -> None:
    route = make_route(mode="restart")
    bench.scheduler.submit(job(route, "e1"))
    await settle()
    bench.scheduler.submit(job(route, "e2"))
    bench.scheduler.submit(job(route, "e3"))  # replaces e2, which never started
    await settle()
    assert bench.runner.stopped == ["r:e1"]
    assert bench.runner.running == ["r:e3"]
    assert bench.runner.started == ["r:e1", "r:e3"]
    assert bench.counters["restarted"] == 2
    assert bench.scheduler.pending == 0


# --- debounce and throttle -------------------------------------------------------------------


async def test_debounce_runs_the_last_event_once_the_lane_is_quiet(bench: Bench) -> None:
    route = make_route(debounce=2.0)
    bench.scheduler.submit(job(route, "e1"))
    bench.clock.advance(1.5)
    bench.scheduler.submit(job(route, "e2"))  # restarts the quiet period
    bench.clock.advance(1.5)
    bench.scheduler.submit(job(route, "e3"))
    await settle()
    assert bench.runner.started == []
    bench.clock.advance(1.99)
    await settle()
    assert bench.runner.started == []
    bench.clock.advance(0.01)
    await settle()
    assert bench.runner.started == ["r:e3"]
    assert bench.counters["coalesced"] == 2


async def test_debounce_applies_per_key(bench: Bench) -> None:
    route = make_route(debounce=1.0, key=Text("{{ payload.k }}"))
    bench.scheduler.submit(job(route, "a1", "a"))
    bench.clock.advance(0.5)
    bench.scheduler.submit(job(route, "b1", "b"))
    bench.clock.advance(0.5)
    await settle()
    assert bench.runner.started == ["r:a1"]
    bench.clock.advance(0.5)
    await settle()
    assert bench.runner.started == ["r:a1", "r:b1"]


async def test_throttle_runs_the_first_at_once_and_the_last_of_each_period(bench: Bench) -> None:
    route = make_route(throttle=10.0)
    bench.scheduler.submit(job(route, "e1"))
    await settle()
    assert bench.runner.started == ["r:e1"]
    bench.runner.finish("r:e1")
    for channel in ("e2", "e3", "e4"):
        bench.clock.advance(2.0)
        bench.scheduler.submit(job(route, channel))
    await settle()
    assert bench.runner.started == ["r:e1"]
    bench.clock.advance(4.0)  # t=10: the period ends, its last event runs, a new one opens
    await settle()
    assert bench.runner.started == ["r:e1", "r:e4"]
    assert bench.counters["coalesced"] == 2
    bench.runner.finish("r:e4")
    bench.clock.advance(1.0)
    bench.scheduler.submit(job(route, "e5"))  # inside the new period: held
    await settle()
    assert bench.runner.started == ["r:e1", "r:e4"]
    bench.clock.advance(9.0)
    await settle()
    assert bench.runner.started == ["r:e1", "r:e4", "r:e5"]


async def test_throttle_period_without_events_closes_the_lane(bench: Bench) -> None:
    route = make_route(throttle=5.0)
    bench.scheduler.submit(job(route, "e1"))
    await settle()
    bench.runner.finish("r:e1")
    bench.clock.advance(5.0)
    await settle()
    assert bench.scheduler.lanes == {}
    bench.scheduler.submit(job(route, "e2"))  # a new first event runs at once
    await settle()
    assert bench.runner.started == ["r:e1", "r:e2"]


# --- bounds and shutdown ---------------------------------------------------------------------


async def test_queue_limit_drops_beyond_the_lane_bound(make_bench: Maker) -> None:
    bench = make_bench(queue_limit=2)
    route = make_route()
    results = [bench.scheduler.submit(job(route, f"e{n}")) for n in range(4)]
    assert results == [True, True, False, False]
    assert bench.counters["dropped_queue_full"] == 2
    await settle()  # e0 started: its place in the queue is free
    assert bench.scheduler.submit(job(route, "e4"))


async def test_max_pending_bounds_all_lanes_together(make_bench: Maker) -> None:
    bench = make_bench(queue_limit=100, max_pending=3)
    results = [bench.scheduler.submit(job(make_route(f"r{n}"), "e")) for n in range(4)]
    assert results == [True, True, True, False]
    assert bench.counters["dropped_queue_full"] == 1


async def test_held_events_count_towards_max_pending(make_bench: Maker) -> None:
    bench = make_bench(max_pending=1)
    assert bench.scheduler.submit(job(make_route("a", debounce=1.0), "e"))
    assert not bench.scheduler.submit(job(make_route("b"), "e"))
    bench.clock.advance(1.0)
    await settle()
    assert bench.runner.started == ["a:e"]
    assert bench.scheduler.submit(job(make_route("b"), "e"))


async def test_close_returns_what_waits_and_starts_nothing_more(bench: Bench) -> None:
    queued, debounced = make_route("q"), make_route("d", debounce=1.0)
    bench.scheduler.submit(job(queued, "e1"))
    bench.scheduler.submit(job(queued, "e2"))
    bench.scheduler.submit(job(debounced, "e3"))
    await settle()
    left = bench.scheduler.close()
    assert sorted(f"{j.route.name}:{j.event.channel}" for j in left) == ["d:e3", "q:e2"]
    assert not bench.scheduler.submit(job(queued, "e4"))
    bench.runner.finish("q:e1")
    bench.clock.advance(5.0)
    await settle()
    assert bench.runner.started == ["q:e1"]


async def test_a_failing_run_does_not_stop_its_lane() -> None:
    started: list[str] = []

    async def fail_first(item: Job) -> None:
        started.append(item.event.channel)
        if item.event.channel == "e1":
            raise RuntimeError("a bug in one run")

    scheduler = Scheduler(fail_first, queue_limit=10, max_pending=10, counters=Counter())
    route = make_route()
    scheduler.submit(job(route, "e1"))
    scheduler.submit(job(route, "e2"))
    await settle()
    assert started == ["e1", "e2"]


# --- retry -----------------------------------------------------------------------------------


def test_retry_backoff_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(attempts=6, backoff=1.0, max_backoff=5.0)
    assert [policy.delay(attempt) for attempt in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
