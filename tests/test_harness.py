"""The in-process harness itself: the in-memory bus behaves as Redis pub/sub does for the
router, settling waits for what the router does and says what is still going, the fake
clock keeps time order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from eventrouter.runtime.steps import HandlerResult
from eventrouter.testing import FakeClock, Harness, MemoryBus, MemorySubscriber
from tests.routerproc import handler, write_routes

ROUTES = """
routes:
  - name: overlapping
    on: ["module/*/event/changed", "module/{m}/event/*", "module/*"]
    do: [{run: ../h}, {emit: {channel: "derived/event/{{ payload.n | default('x') }}"}}]
  - name: derived
    on: derived/event/*
    do: [{run: ../h}]
"""


def routes(tmp_path: Path, text: str = ROUTES) -> Path:
    handler(tmp_path / "h")
    write_routes(tmp_path / "routes", "r.yml", text)
    return tmp_path / "routes"


async def test_a_publish_reaches_each_subscriber_once_and_says_how_many() -> None:
    bus = MemoryBus()
    seen: list[tuple[str, bytes]] = []
    one = MemorySubscriber(bus, "memory://", lambda channel, data: seen.append((channel, data)))
    await one.set_patterns(["a/*", "a/event/*", "*"])  # three globs match: one delivery
    listener = bus.listen("a/event/?")
    task = asyncio.create_task(one.run())
    await one.connected.wait()
    assert bus.publish("a/event/x", b"1") == 2  # the subscriber and the listener
    assert bus.publish(b"a/event/\xff", b"2") == 2  # bytes Redis matches, not UTF-8
    assert bus.publish("b/other", b"3") == 1
    assert bus.in_flight == 3  # delivered later, by the subscriber's own task
    while bus.in_flight:
        await bus.beacon.wait()
    assert seen == [("a/event/x", b"1"), ("a/event/\ufffd", b"2"), ("b/other", b"3")]
    assert listener.payloads() == [b"1", b"2"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert bus.publish("a/event/x", b"gone") == 1  # a subscriber gone receives nothing


async def test_the_router_handles_its_derived_events_and_settles_after_them(
    tmp_path: Path,
) -> None:
    async with Harness(routes(tmp_path)) as router:
        assert await router.send("module/m1/event/changed") == 1
        assert [call.name for call in router.fake.calls] == ["h", "h"]
        assert router.fake.calls[1].event_name == "x"  # the derived event's run
        assert router.bus.published[1] == ("derived/event/x", b"{}")
        assert router.dispatcher.counters["events"] == 2


async def test_two_routers_on_one_bus_each_handle_an_event(tmp_path: Path) -> None:
    bus = MemoryBus()
    folder = routes(tmp_path)
    async with (
        Harness(folder, bus=bus, instance="a") as first,
        Harness(folder, bus=bus, instance="b") as second,
    ):
        assert bus.publish("module/m1/event/changed", b"{}") == 2
        await first.settle()
        await second.settle()
        # Each router ran its route and the derived events of both routers.
        assert len(first.fake.calls) == len(second.fake.calls) == 3


class Stuck:
    """A runner whose runs never end: only settling's own deadline stops the wait."""

    running = 0
    base_env: dict[str, str] = {}  # noqa: RUF012 (read only)

    async def run_handler(self, directory: Path, **_: object) -> HandlerResult:
        await asyncio.Event().wait()
        raise AssertionError("never")

    async def terminate_all(self) -> int:
        return 0

    def kill_now(self) -> int:
        return 0


async def test_settling_fails_saying_what_is_still_going(tmp_path: Path) -> None:
    async with Harness(routes(tmp_path), runner=Stuck(), stop_timeout=0) as router:
        router.publish("module/m1/event/changed")
        with pytest.raises(AssertionError, match=r"not settled after 0.1s: 1 run\(s\) going"):
            await router.settle(within=0.1)


async def test_a_held_run_is_parked_and_the_router_settles_around_it(tmp_path: Path) -> None:
    async with Harness(routes(tmp_path)) as router:
        gate = router.fake.hold("h")
        await router.send("module/m1/event/changed")
        assert gate.waiting == 1 and router.fake.running == 1
        gate.open(3)
        await router.settle()
        assert router.dispatcher.counters["runs_failed"] == 1
        [failure] = router.journal.failures
        assert failure.status == "exit status 3" and failure.route == "overlapping"


async def test_the_fake_clock_fires_timers_and_wakes_sleepers_in_time_order() -> None:
    clock = FakeClock()
    order: list[str] = []
    clock.call_later(2.0, order.append, "timer at 2")
    cancelled = clock.call_later(1.0, order.append, "cancelled")
    cancelled.cancel()

    async def sleeper() -> None:
        await clock.sleep(1.5)
        order.append("sleeper at 1.5")

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0)
    assert clock.sleepers == 1
    while clock.fire_next(10.0):  # noqa: ASYNC110 (a woken sleeper runs at the next turn)
        await asyncio.sleep(0)
    await task
    assert order == ["sleeper at 1.5", "timer at 2"]
    assert clock.now == 2.0


async def test_a_refused_publication_fails_that_emit_alone(tmp_path: Path) -> None:
    text = (
        "routes:\n  - name: r\n    on: a/event/x\n    do:\n"
        "      - emit: {channel: secret/event/no}\n      - emit: {channel: open/event/yes}\n"
    )
    async with Harness(routes(tmp_path, text)) as router:
        router.bus.refuse("secret/*", "NOPERM this user has no permissions")
        await router.send("a/event/x")
        assert [channel for channel, _ in router.bus.published] == ["a/event/x", "open/event/yes"]
        [failure] = router.journal.failures
        assert failure.status == "publish refused" and "NOPERM" in failure.reason


async def test_routes_that_run_would_refuse_do_not_start(tmp_path: Path) -> None:
    text = "routes:\n  - name: r\n    on: a/event/x\n    bogus: 1\n    do: [{run: ../h}]\n"
    with pytest.raises(ValueError, match=r"r\.yml:4: error: routes\[0\]\.bogus: unknown key"):
        async with Harness(routes(tmp_path, text)):
            raise AssertionError("started")
