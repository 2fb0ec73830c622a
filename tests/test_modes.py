"""Execution semantics end to end: modes, per-key order, debounce, throttle, retries.

The real CLI in a subprocess, a real Redis, real step scripts that write what they saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.routerproc import Router, lines, wait_for, write_step

Start = Callable[..., Router]


def routes_file(folder: Path, text: str) -> Path:
    """Write a route file into its own folder and return the folder."""
    routes = folder / "routes.d"
    routes.mkdir(exist_ok=True)
    (routes / "r.yml").write_text(text)
    return routes


def publish_all(url: str, channel: str, payloads: list[dict[str, object]]) -> None:
    """Publish a burst of JSON payloads in one pipeline."""
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.publish(channel, json.dumps(payload))
    pipe.execute()


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """Return the most spans open at one instant."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    best = current = 0
    for _, change in edges:
        current += change
        best = max(best, current)
    return best


def spans_of(path: Path) -> list[tuple[float, float]]:
    """Read "start end" lines written by a timing step."""
    return [(float(a), float(b)) for a, b in (line.split() for line in lines(path))]


TIMING_STEP = 'start=$EPOCHREALTIME; sleep {sleep}; echo "$start $EPOCHREALTIME" >> {out}'


def timing_step(path: Path, out: Path, sleep: float) -> None:
    """Write a bash step that records when it ran."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/bash\n" + TIMING_STEP.format(sleep=sleep, out=out) + "\n")
    path.chmod(0o755)


def test_per_key_order_under_a_burst(tmp_path: Path, router_factory: Start, redis_url: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_step(tmp_path / "h" / "10", f'echo "$SEQ" >> {out}/"$KEY"')
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
    router_factory("--routes", str(routes))
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for n in range(1000):
        pipe.publish(f"module/m{n % 20}/event/changed", json.dumps({"n": n}))
    pipe.execute()
    total = lambda: sum(len(lines(path)) for path in out.iterdir())  # noqa: E731
    wait_for(lambda: total() >= 1000, timeout=120, what="1,000 runs")
    for key in range(20):
        seen = [int(n) for n in lines(out / f"m{key}")]
        assert seen == list(range(key, 1000, 20)), f"key m{key} out of order or incomplete"


def test_parallel_runs_at_most_max_at_once(
    tmp_path: Path, router_factory: Start, redis_url: str
) -> None:
    spans = tmp_path / "spans"
    timing_step(tmp_path / "h" / "10", spans, 0.3)
    routes = routes_file(
        tmp_path,
        "routes:\n  - name: par\n    on: a/event/go\n    mode: parallel\n    max: 2\n"
        "    do: [{run: ../h}]\n",
    )
    router_factory("--routes", str(routes))
    publish_all(redis_url, "a/event/go", [{"n": n} for n in range(6)])
    wait_for(lambda: len(lines(spans)) >= 6, timeout=20, what="six runs")
    assert max_overlap(spans_of(spans)) == 2


def test_parallel_starts_a_run_arriving_while_another_goes(
    tmp_path: Path, router_factory: Start, redis_url: str
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    step = f"echo $$ >> {started}\nwhile [ ! -e {release} ]; do sleep 0.02; done"
    write_step(tmp_path / "h" / "10", step)
    routes = routes_file(
        tmp_path,
        "routes:\n  - name: par\n    on: a/event/go\n    mode: parallel\n    max: 2\n"
        "    do: [{run: ../h}]\n",
    )
    router_factory("--routes", str(routes))
    try:
        publish_all(redis_url, "a/event/go", [{"n": 1}])
        wait_for(lambda: len(lines(started)) == 1, what="the first run")
        # Alone in the queue while the first run goes: it must not wait for it to end.
        publish_all(redis_url, "a/event/go", [{"n": 2}])
        wait_for(lambda: len(lines(started)) == 2, timeout=5, what="the second run, alongside")
    finally:
        release.touch()


def test_queued_runs_one_at_a_time(tmp_path: Path, router_factory: Start, redis_url: str) -> None:
    spans = tmp_path / "spans"
    timing_step(tmp_path / "h" / "10", spans, 0.1)
    routes = routes_file(
        tmp_path, "routes:\n  - name: q\n    on: a/event/go\n    do: [{run: ../h}]\n"
    )
    router_factory("--routes", str(routes))
    publish_all(redis_url, "a/event/go", [{"n": n} for n in range(5)])
    wait_for(lambda: len(lines(spans)) >= 5, timeout=20, what="five runs")
    assert max_overlap(spans_of(spans)) == 1


def test_single_drops_events_while_running(
    tmp_path: Path, router_factory: Start, redis_url: str
) -> None:
    out = tmp_path / "out"
    write_step(tmp_path / "h" / "10", f"sleep 0.5; cat >> {out}; echo >> {out}")
    routes = routes_file(
        tmp_path,
        "routes:\n  - name: one\n    on: a/event/go\n    mode: single\n    do: [{run: ../h}]\n",
    )
    router = router_factory("--routes", str(routes))
    publish_all(redis_url, "a/event/go", [{"n": n} for n in range(3)])
    wait_for(lambda: lines(out), what="the first run")
    log = router.wait_log("dropped: a run is going", count=2)
    assert "2 dropped so far" in log
    time.sleep(0.7)
    assert lines(out) == ['{"n": 0}']


def test_restart_stops_the_running_process_group(
    tmp_path: Path, router_factory: Start, redis_url: str
) -> None:
    pids = tmp_path / "pids"
    out = tmp_path / "out"
    write_step(
        tmp_path / "h" / "10",
        f'sleep 60 & echo "$! $$" >> {pids}; sleep 0.05; [ "$(cat)" = 1 ] && exit 0; '
        f"wait; echo never >> {out}",
    )
    routes = routes_file(
        tmp_path,
        "routes:\n  - name: again\n    on: a/event/go\n    mode: restart\n    do: [{run: ../h}]\n",
    )
    router = router_factory("--routes", str(routes))
    client = redis.Redis.from_url(redis_url)
    client.publish("a/event/go", "0")
    wait_for(lambda: lines(pids), what="the first run")
    first = lines(pids)[0].split()
    client.publish("a/event/go", "1")
    router.wait_log("restarts the run going")
    for pid in first:  # the step and its background child: the whole group
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), what=f"pid {pid} gone")
    wait_for(lambda: len(lines(pids)) == 2, what="the second run")
    assert not out.exists()
    background = int(lines(pids)[1].split()[0])  # the second run left its sleep behind
    with contextlib.suppress(ProcessLookupError):
        os.kill(background, signal.SIGKILL)


def test_debounce_runs_once_with_the_last_event(
    tmp_path: Path, router_factory: Start, redis_url: str
) -> None:
    out = tmp_path / "out"
    write_step(tmp_path / "h" / "10", f'printf "%s\\n" "$(cat)" >> {out}')
    routes = routes_file(
        tmp_path,
        'routes:\n  - name: calm\n    on: a/event/go\n    key: "{{ payload.k }}"\n'
        "    debounce: 400ms\n    do: [{run: ../h}]\n",
    )
    router = router_factory("--routes", str(routes))
    publish_all(redis_url, "a/event/go", [{"k": "a", "n": n} for n in range(5)])
    publish_all(redis_url, "a/event/go", [{"k": "b", "n": 9}])
    wait_for(lambda: len(lines(out)) >= 2, what="the debounced runs")
    time.sleep(0.6)
    assert sorted(lines(out)) == ['{"k": "a", "n": 4}', '{"k": "b", "n": 9}']
    assert "one run for 5 events" in router.log and "coalesced by debounce" in router.log


def test_throttle_runs_first_then_one_trailing(
    tmp_path: Path, router_factory: Start, redis_url: str
) -> None:
    out = tmp_path / "out"
    write_step(tmp_path / "h" / "10", f"cat >> {out}; echo >> {out}")
    routes = routes_file(
        tmp_path,
        "routes:\n  - name: slow-down\n    on: a/event/go\n    throttle: 600ms\n"
        "    do: [{run: ../h}]\n",
    )
    router = router_factory("--routes", str(routes))
    publish_all(redis_url, "a/event/go", [{"n": n} for n in range(5)])
    wait_for(lambda: len(lines(out)) >= 2, what="the leading and trailing runs")
    time.sleep(0.9)
    assert lines(out) == ['{"n": 0}', '{"n": 4}']
    assert "one run for 4 events" in router.log


def test_retry_until_success(tmp_path: Path, router_factory: Start, redis_url: str) -> None:
    count = tmp_path / "count"
    write_step(
        tmp_path / "h" / "10",
        f'echo x >> {count}; [ "$(wc -l < {count})" -ge 3 ] || {{ echo "<3>not yet"; exit 7; }}',
    )
    routes = routes_file(
        tmp_path,
        "routes:\n  - name: flaky\n    on: a/event/go\n"
        "    retry: {attempts: 3, backoff: 100ms, max_backoff: 1s}\n    do: [{run: ../h}]\n",
    )
    router = router_factory("--routes", str(routes))
    redis.Redis.from_url(redis_url).publish("a/event/go", "{}")
    wait_for(lambda: len(lines(count)) >= 3, what="three attempts")
    log = router.wait_log("attempt 2/3 failed")
    assert "attempt 1/3 failed" in log and "exit status 7" in log
    time.sleep(0.5)
    assert len(lines(count)) == 3
    assert "all 3 attempts failed" not in router.log


def test_retry_gives_up_after_the_last_attempt(
    tmp_path: Path, router_factory: Start, redis_url: str
) -> None:
    count = tmp_path / "count"
    write_step(tmp_path / "h" / "10", f"echo x >> {count}; exit 1")
    routes = routes_file(
        tmp_path,
        "routes:\n  - name: broken\n    on: a/event/go\n"
        "    retry: {attempts: 2, backoff: 50ms}\n    do: [{run: ../h}]\n",
    )
    router = router_factory("--routes", str(routes))
    redis.Redis.from_url(redis_url).publish("a/event/go", "{}")
    router.wait_log("all 2 attempts failed")
    assert len(lines(count)) == 2
