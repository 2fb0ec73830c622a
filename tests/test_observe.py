"""`eventrouter status` and `eventrouter history`.

The CLI against real routers on a real server for `status`; the history's outcomes, its
filters and the control channel's distrust in process (eventrouter.testing): the real daemon
and scheduler answer over an in-memory bus.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eventrouter.cli.status import event_lines
from eventrouter.testing import Harness
from tests.conftest import RedisCli
from tests.routerproc import Router, run_here, write_routes, write_step

ROUTES = """\
routes:
  - name: ok
    on: a/event/ok
    do:
      - run: h-ok
      - emit: {channel: a/event/derived, payload: {from: ok}}
  - name: guarded
    on: a/event/ok
    when: payload.go is defined
    do: [{run: h-ok}]
  - name: elsewhere
    on: a/event/ok
    runs_on: "99"
    do: [{run: h-ok}]
  - name: sink
    on: a/event/derived
    do: [{run: h-ok}]
  - name: fails
    on: a/event/fail
    do: [{run: h-fail}]
  - name: lonely
    on: a/event/single
    mode: single
    do: [{run: h-slow}]
  - name: quiet
    on: a/event/deb
    debounce: 200ms
    do: [{run: h-ok}]
  - name: loop
    on: a/event/loop
    when: payload.stop is not defined  # check cannot read a templated payload: it starts
    do: [{emit: {channel: a/event/loop, payload: "{{ {} }}"}}]
"""


def _routes(folder: Path) -> Path:
    write_step(folder / "h-ok" / "10ok", "exit 0")
    write_step(folder / "h-fail" / "10fail", "exit 3")
    write_step(folder / "h-slow" / "10slow", "sleep 0.5")
    write_routes(folder, "r.yml", ROUTES)
    return folder


def _cli(redis_url: str, *args: str) -> Any:
    result = run_here(*args, "--redis", redis_url, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_of_one_router_and_of_all(
    tmp_path: Path, redis_url: str, router_factory: Callable[..., Router], redis_cli: RedisCli
) -> None:
    folder = _routes(tmp_path / "routes")
    first = router_factory("--routes", str(folder), "--instance", "node-a")
    router_factory("--routes", str(folder), "--instance", "node-b")
    redis_cli("PUBLISH", "a/event/fail", "{}")
    first.wait_log(r"route fails: event 'a/event/fail': run failed")

    every = _cli(redis_url, "status", "--all")
    assert [item["instance"] for item in every] == ["node-a", "node-b"]
    one = every[0]
    assert one["pid"] == first.proc.pid
    assert one["redis"]["subscribe"]["connected"] is True
    assert one["redis"]["subscribe"]["role"] == "master"
    assert "a/event/ok" in one["redis"]["subscribe"]["patterns"]
    assert one["routes"]["count"] == 8
    assert one["routes"]["generation"] == 1
    assert one["routes"]["digest"] == every[1]["routes"]["digest"]
    assert one["counters"]["events"] >= 1
    assert one["counters"]["runs"] == {"failed": 1}

    # history --route names no route of the router: an error listing its routes
    unknown = run_here("history", "--redis", redis_url, "--instance", "node-a", "--route", "nosuch")
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert "no route matches 'nosuch' on router 'node-a'; its routes: elsewhere, fails, " in (
        unknown.stderr
    ), unknown.stderr

    text = run_here("status", "--redis", redis_url, "--instance", "node-b")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("node-b: pid ")
    assert "routes: 8, generation 1, digest " in text.stdout


def test_status_exits_1_when_no_router_answers(redis_url: str) -> None:
    started = time.monotonic()
    result = run_here("status", "--redis", redis_url, "--all")
    assert result.returncode == 1
    assert "no router answered" in result.stderr
    assert time.monotonic() - started < 10


def test_status_of_a_router_not_running_exits_1(
    tmp_path: Path, redis_url: str, router_factory: Callable[..., Router]
) -> None:
    router_factory("--routes", str(_routes(tmp_path / "routes")), "--instance", "here")
    result = run_here("status", "--redis", redis_url, "--instance", "elsewhere")
    assert result.returncode == 1
    assert "router 'elsewhere' did not answer" in result.stderr


def _by_route(events: list[dict[str, Any]], channel: str) -> list[dict[str, str]]:
    return [trace for event in events if event["channel"] == channel for trace in event["routes"]]


async def _history(router: Harness, **fields: Any) -> list[dict[str, Any]]:
    [answer] = await router.ask("history", instance="r", **fields)
    events: list[dict[str, Any]] = answer["events"]
    return events


async def test_history_gives_every_outcome(tmp_path: Path) -> None:
    folder = _routes(tmp_path / "routes")
    async with Harness(folder, instance="r", max_depth=2) as router:
        slow = router.fake.hold("h-slow")
        router.fake.exits("h-fail", 3)
        await router.send("a/event/ok", "{}")
        router.publish("a/event/fail", "{}")
        router.publish("a/event/single", "{}")
        router.publish("a/event/single", "{}")
        router.publish("a/event/deb", '{"n": 1}')
        router.publish("a/event/deb", '{"n": 2}')
        router.publish("a/event/loop", "{}")
        await router.settle()
        slow.open()
        await router.advance(0.2)  # the debounce period
        events = await _history(router, limit=50)
        await _check_filters(router)

    ok = next(event for event in events if event["channel"] == "a/event/ok")
    outcomes = {trace["route"]: trace for trace in ok["routes"]}
    assert outcomes["ok"]["outcome"] == "ran"
    assert outcomes["ok"]["steps"] == 1
    assert outcomes["ok"]["status"] == "ok"
    assert outcomes["guarded"]["outcome"] == "condition false"
    assert "payload.go is defined is false" in outcomes["guarded"]["detail"]
    assert outcomes["elsewhere"]["outcome"] == "skipped here"
    assert "runs_on" in outcomes["elsewhere"]["detail"]
    assert ok["derived"] == [{"route": "ok", "channel": "a/event/derived", "receivers": 1}]
    derived = next(event for event in events if event["channel"] == "a/event/derived")
    assert derived["caused_by"] == ok["seq"]
    assert derived["chain"] == ["ok"]
    assert _by_route(events, "a/event/derived")[0]["outcome"] == "ran"

    failed = _by_route(events, "a/event/fail")[0]
    assert (failed["outcome"], failed["status"]) == ("failed", "exit status 3")
    single = [trace["outcome"] for trace in _by_route(events, "a/event/single")]
    assert sorted(single) == ["dropped", "ran"]
    dropped = next(t for t in _by_route(events, "a/event/single") if t["outcome"] == "dropped")
    assert "mode: single" in dropped["detail"]
    debounced = [trace["outcome"] for trace in reversed(_by_route(events, "a/event/deb"))]
    assert debounced == ["coalesced", "ran"]
    loops = [trace["outcome"] for trace in _by_route(events, "a/event/loop")]
    assert "cut by the loop guard" in loops


async def _check_filters(router: Harness) -> None:
    # --route: the events that route matched, not the newest events whatever they were.
    filtered = await _history(router, route="fails", limit=50)
    assert [event["channel"] for event in filtered] == ["a/event/fail"]
    [trace] = filtered[0]["routes"]
    assert (trace["route"], trace["outcome"], trace["status"]) == (
        "fails",
        "failed",
        "exit status 3",
    )
    first = await _history(router, route="sink", limit=1)
    assert [event["channel"] for event in first] == ["a/event/derived"]
    every = await _history(router, route="fails", verbose=True)
    by_channel = {event["channel"]: event["routes"] for event in every}
    assert by_channel["a/event/ok"] == [{"route": "fails", "outcome": "did not match"}]
    [unknown] = await router.ask("history", instance="r", route="nosuch")
    assert "unknown_route" in unknown
    assert {"elsewhere", "fails", "sink"} <= set(unknown["routes"])
    only = await _history(router, event="fail")
    assert [event["channel"] for event in only] == ["a/event/fail"]
    verbose = await _history(router, event="fail", verbose=True)
    assert {"route": "sink", "outcome": "did not match"} in verbose[0]["routes"]

    [ok] = await _history(router, event="ok")
    text = "\n".join(event_lines(ok))  # as `eventrouter history` prints it
    assert "  route guarded: condition false: when: payload.go is defined is false" in text
    assert "  emitted a/event/derived (route ok, 1 receiver(s))" in text


async def test_control_requests_are_untrusted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Harness(_routes(tmp_path / "routes"), instance="r") as router:
        channel = "eventrouter/control/query"
        router.publish(channel, b"x" * 5000)
        router.publish(channel, "[" * 3000 + "]" * 3000)
        router.publish(
            channel, json.dumps({"op": "status", "instance": "*", "reply": "a/event/ok"})
        )
        router.publish(
            channel,
            json.dumps({"op": "status", "reply": "eventrouter/control/reply/x", "a": [[[[[1]]]]]}),
        )
        await router.settle()
        lines = [line for line in caplog.messages if "ignored a control request" in line]
        assert len(lines) == 4
        assert all(len(line) < 300 for line in lines), lines
        assert "5000 bytes, over the 4096-byte limit" in lines[0]
        assert "reply must be a channel eventrouter/control/reply/<id>" in lines[2]
        assert "nested deeper than 4" in lines[3]
        assert "route ok: event 'a/event/ok'" not in caplog.text  # the forged reply ran nothing
        assert router.fake.calls == []
        [answer] = await router.ask("status", instance="r")
        assert answer["instance"] == "r"


async def test_history_shows_a_retry_and_its_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _routes(tmp_path / "routes")
    async with Harness(folder, instance="r") as router:
        router.fake.exits("h-fail", 3)  # the next run of h-fail succeeds: fixed meanwhile
        await router.send("a/event/fail", "{}")
        failure_id = re.findall(r"failure recorded as (\S+)", caplog.text)[0]
        await router.retry(failure_id)
        assert "route fails: event 'a/event/fail': run ok" in caplog.text
        [newest] = await _history(router, limit=1)
    assert newest["channel"] == "a/event/fail"
    assert newest["routes"][0]["outcome"] == "ran"
    assert newest["routes"][0]["route"] == "fails"
    assert newest["routes"][0]["detail"] == f"retry {failure_id}"
