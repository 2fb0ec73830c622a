"""Execution semantics through the whole router: modes, per-key order, debounce, throttle, retries.

In process (eventrouter.testing): the real daemon and dispatcher on an in-memory bus, fake
steps held at gates, and a fake clock for the timers and backoff. The restart test runs real
steps, to see the process group go. ``tests/test_lanes_fake.py`` checks the scheduler alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eventrouter.runtime.steps import StepRunner
from eventrouter.testing import Harness
from tests.routerproc import handler, lines, write_routes, write_step


def routes_file(folder: Path, text: str) -> Path:
    """Write a route file into its own folder, with its handler ``h``; return the folder."""
    handler(folder / "h")
    write_routes(folder / "routes.d", "r.yml", text)
    return folder / "routes.d"


def payloads(router: Harness, folder: str = "h") -> list[Any]:
    """Return the payloads the runs of ``folder`` were given, in start order, decoded."""
    return [json.loads(call.payload) for call in router.fake.runs(folder)]


async def eventually(check: Callable[[], object], what: str, within: float = 10.0) -> None:
    """Wait for a condition only a real process can make true (a file, a pid gone)."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 (a real process tells no event to wait on)
            await asyncio.sleep(0.02)
    assert check(), what


async def test_per_key_order_under_a_burst(tmp_path: Path) -> None:
    routes = routes_file(
        tmp_path,
        """
routes:
  - name: per-module
    on: module/{module}/event/changed
    key: "{{ match.module }}"
    do:
      - run: ../h
        env: {KEY: "{{ match.module }}", SEQ: "{{ payload.n }}"}
""",
    )
    async with Harness(routes) as router:
        gate = router.fake.hold("h")  # every key's first run waits: the rest queue behind
        for n in range(1000):
            router.publish(f"module/m{n % 20}/event/changed", json.dumps({"n": n}))
        await router.settle()
        assert router.fake.held == 20  # the keys run side by side, one run each
        gate.open()
        await router.settle()
    seen: dict[str, list[int]] = {}
    for call in router.fake.calls:
        seen.setdefault(call.env["KEY"], []).append(int(call.env["SEQ"]))
    assert len(router.fake.calls) == 1000
    for key in range(20):
        assert seen[f"m{key}"] == list(range(key, 1000, 20)), f"key m{key} out of order"


PARALLEL = (
    "routes:\n  - name: par\n    on: a/event/go\n    mode: parallel\n    max: 2\n"
    "    do: [{run: ../h}]\n"
)


async def test_parallel_runs_at_most_max_at_once(tmp_path: Path) -> None:
    async with Harness(routes_file(tmp_path, PARALLEL)) as router:
        gate = router.fake.hold("h")
        for n in range(6):
            router.publish("a/event/go", json.dumps({"n": n}))
        await router.settle()
        most = 0
        while gate.waiting:
            most = max(most, gate.waiting)
            gate.end_all(0)  # the runs going end; the next ones start
            await router.settle()
        assert most == 2
        assert sorted(payload["n"] for payload in payloads(router)) == list(range(6))


async def test_parallel_starts_a_run_arriving_while_another_goes(tmp_path: Path) -> None:
    async with Harness(routes_file(tmp_path, PARALLEL)) as router:
        gate = router.fake.hold("h")
        await router.send("a/event/go", '{"n": 1}')
        assert gate.waiting == 1
        # Alone in the queue while the first run goes: it must not wait for it to end.
        await router.send("a/event/go", '{"n": 2}')
        assert gate.waiting == 2
        gate.open()


async def test_queued_runs_one_at_a_time(tmp_path: Path) -> None:
    routes = routes_file(
        tmp_path, "routes:\n  - name: q\n    on: a/event/go\n    do: [{run: ../h}]\n"
    )
    async with Harness(routes) as router:
        gate = router.fake.hold("h")
        for n in range(5):
            router.publish("a/event/go", json.dumps({"n": n}))
        await router.settle()
        for n in range(5):
            assert gate.waiting == 1
            assert payloads(router)[-1] == {"n": n}  # in arrival order
            gate.end_all(0)
            await router.settle()
        assert len(router.fake.calls) == 5


async def test_single_drops_events_while_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes = routes_file(
        tmp_path,
        "routes:\n  - name: one\n    on: a/event/go\n    mode: single\n    do: [{run: ../h}]\n",
    )
    async with Harness(routes) as router:
        gate = router.fake.hold("h")
        for n in range(3):
            router.publish("a/event/go", json.dumps({"n": n}))
        await router.settle()
        assert caplog.text.count("dropped: a run is going") == 2
        assert "2 dropped so far" in caplog.text
        gate.open()
        await router.settle()
        assert payloads(router) == [{"n": 0}]


async def test_restart_stops_the_running_process_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pids = tmp_path / "pids"
    out = tmp_path / "out"
    write_step(
        tmp_path / "h" / "10",
        f'sleep 60 & echo "$! $$" >> {pids}; sleep 0.05; [ "$(cat)" = 1 ] && exit 0; '
        f"wait; echo never >> {out}",
    )
    write_routes(
        tmp_path / "routes.d",
        "r.yml",
        "routes:\n  - name: again\n    on: a/event/go\n    mode: restart\n    do: [{run: ../h}]\n",
    )
    async with Harness(tmp_path / "routes.d", runner=StepRunner()) as router:
        router.publish("a/event/go", "0")
        await eventually(lambda: lines(pids), "the first run")
        first = lines(pids)[0].split()
        await router.send("a/event/go", "1")
        assert "restarts the run going" in caplog.text
        for pid in first:  # the step and its background child: the whole group
            await eventually(lambda pid=pid: not Path(f"/proc/{pid}").exists(), f"{pid} gone")
        assert len(lines(pids)) == 2
        assert not out.exists()
    background = int(lines(pids)[1].split()[0])  # the second run left its sleep behind
    with contextlib.suppress(ProcessLookupError):
        os.kill(background, signal.SIGKILL)


async def test_debounce_runs_once_with_the_last_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes = routes_file(
        tmp_path,
        'routes:\n  - name: calm\n    on: a/event/go\n    key: "{{ payload.k }}"\n'
        "    debounce: 400ms\n    do: [{run: ../h}]\n",
    )
    async with Harness(routes) as router:
        for n in range(5):
            router.publish("a/event/go", json.dumps({"k": "a", "n": n}))
        router.publish("a/event/go", json.dumps({"k": "b", "n": 9}))
        await router.advance(0.39)
        assert router.fake.calls == []  # not quiet long enough yet
        await router.advance(0.01)
        assert sorted(payloads(router), key=str) == [{"k": "a", "n": 4}, {"k": "b", "n": 9}]
        await router.advance(10)
        assert len(router.fake.calls) == 2
    assert "one run for 5 events" in caplog.text and "coalesced by debounce" in caplog.text


async def test_throttle_runs_first_then_one_trailing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes = routes_file(
        tmp_path,
        "routes:\n  - name: slow-down\n    on: a/event/go\n    throttle: 600ms\n"
        "    do: [{run: ../h}]\n",
    )
    async with Harness(routes) as router:
        for n in range(5):
            router.publish("a/event/go", json.dumps({"n": n}))
        await router.settle()
        assert payloads(router) == [{"n": 0}]  # the first at once
        await router.advance(0.6)
        assert payloads(router) == [{"n": 0}, {"n": 4}]  # one trailing run for the rest
        await router.advance(10)
        assert len(router.fake.calls) == 2
    assert "one run for 4 events" in caplog.text


RETRYING = (
    "routes:\n  - name: {name}\n    on: a/event/go\n    retry: {retry}\n    do: [{{run: ../h}}]\n"
)


async def test_retry_until_success(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    retry = "{attempts: 3, backoff: 100ms, max_backoff: 1s}"
    routes = routes_file(tmp_path, RETRYING.format(name="flaky", retry=retry))
    async with Harness(routes) as router:
        router.fake.exits("h", 7, 7)
        await router.send("a/event/go")
        assert len(router.fake.calls) == 1  # the second attempt waits for its backoff
        await router.advance(10)
        assert len(router.fake.calls) == 3
        assert router.dispatcher.counters["runs_ok"] == 1
    assert "attempt 1/3 failed" in caplog.text and "attempt 2/3 failed" in caplog.text
    assert "exit status 7" in caplog.text
    assert "all 3 attempts failed" not in caplog.text


async def test_retry_gives_up_after_the_last_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes = routes_file(
        tmp_path, RETRYING.format(name="broken", retry="{attempts: 2, backoff: 50ms}")
    )
    async with Harness(routes) as router:
        router.fake.exits("h", 1, 1, 1)
        await router.send("a/event/go")
        await router.advance(10)
        assert "all 2 attempts failed" in caplog.text
        assert len(router.fake.calls) == 2
        [failure] = router.journal.failures
        assert failure.status == "retries exhausted (2 attempts): exit status 1"
