"""`eventrouter status` and `eventrouter history` against real routers on a real server.

The request/response goes over the control channel; every outcome of the history is made
happen by real events, real steps and the real scheduler.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.conftest import RedisCli
from tests.routerproc import Router, run_cli, write_routes, write_step

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
    result = run_cli(*args, "--redis", redis_url, "--json")
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

    text = run_cli("status", "--redis", redis_url, "--instance", "node-b")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("node-b: pid ")
    assert "routes: 8, generation 1, digest " in text.stdout


def test_status_exits_1_when_no_router_answers(redis_url: str) -> None:
    started = time.monotonic()
    result = run_cli("status", "--redis", redis_url, "--all")
    assert result.returncode == 1
    assert "no router answered" in result.stderr
    assert time.monotonic() - started < 10


def test_status_of_a_router_not_running_exits_1(
    tmp_path: Path, redis_url: str, router_factory: Callable[..., Router]
) -> None:
    router_factory("--routes", str(_routes(tmp_path / "routes")), "--instance", "here")
    result = run_cli("status", "--redis", redis_url, "--instance", "elsewhere")
    assert result.returncode == 1
    assert "router 'elsewhere' did not answer" in result.stderr


def _by_route(events: list[dict[str, Any]], channel: str) -> list[dict[str, str]]:
    return [trace for event in events if event["channel"] == channel for trace in event["routes"]]


def test_history_gives_every_outcome(
    tmp_path: Path, redis_url: str, router_factory: Callable[..., Router]
) -> None:
    folder = _routes(tmp_path / "routes")
    router = router_factory("--routes", str(folder), "--instance", "r", "--max-depth", "2")
    publish = redis.Redis.from_url(redis_url).publish
    publish("a/event/ok", "{}")
    router.wait_log(r"route sink: event 'a/event/derived': run ok")
    publish("a/event/fail", "{}")
    publish("a/event/single", "{}")
    publish("a/event/single", "{}")
    publish("a/event/deb", '{"n": 1}')
    publish("a/event/deb", '{"n": 2}')
    publish("a/event/loop", "{}")
    router.wait_log(r"route quiet: event 'a/event/deb': run ok")
    router.wait_log(r"route lonely: event 'a/event/single': run ok")
    router.wait_log(r"route loop: event 'a/event/loop': run failed")

    events = _cli(redis_url, "history", "--instance", "r", "--limit", "50")
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

    _check_filters(redis_url)


def _check_filters(redis_url: str) -> None:
    # --route: the events that route matched, not the newest events whatever they were.
    filtered = _cli(redis_url, "history", "--instance", "r", "--route", "fails", "--limit", "50")
    assert [event["channel"] for event in filtered] == ["a/event/fail"]
    [trace] = filtered[0]["routes"]
    assert (trace["route"], trace["outcome"], trace["status"]) == (
        "fails",
        "failed",
        "exit status 3",
    )
    first = _cli(redis_url, "history", "--instance", "r", "--route", "sink", "--limit", "1")
    assert [event["channel"] for event in first] == ["a/event/derived"]
    every = _cli(redis_url, "history", "--instance", "r", "--route", "fails", "--verbose")
    by_channel = {event["channel"]: event["routes"] for event in every}
    assert by_channel["a/event/ok"] == [{"route": "fails", "outcome": "did not match"}]
    unknown = run_cli("history", "--redis", redis_url, "--instance", "r", "--route", "nosuch")
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert "no route matches 'nosuch' on router 'r'; its routes: elsewhere, fails, " in (
        unknown.stderr
    ), unknown.stderr
    only = _cli(redis_url, "history", "--instance", "r", "--event", "fail")
    assert [event["channel"] for event in only] == ["a/event/fail"]
    verbose = _cli(redis_url, "history", "--instance", "r", "--event", "fail", "--verbose")
    assert {"route": "sink", "outcome": "did not match"} in verbose[0]["routes"]

    text = run_cli("history", "--redis", redis_url, "--instance", "r", "--event", "ok")
    assert text.returncode == 0, text.stderr
    assert "  route guarded: condition false: when: payload.go is defined is false" in text.stdout
    assert "  emitted a/event/derived (route ok, 1 receiver(s))" in text.stdout


def test_control_requests_are_untrusted(
    tmp_path: Path, redis_url: str, router_factory: Callable[..., Router]
) -> None:
    router = router_factory("--routes", str(_routes(tmp_path / "routes")), "--instance", "r")
    publish = redis.Redis.from_url(redis_url).publish
    channel = "eventrouter/control/query"
    publish(channel, b"x" * 5000)
    publish(channel, "[" * 3000 + "]" * 3000)
    publish(channel, json.dumps({"op": "status", "instance": "*", "reply": "a/event/ok"}))
    publish(
        channel,
        json.dumps({"op": "status", "reply": "eventrouter/control/reply/x", "a": [[[[[1]]]]]}),
    )
    log = router.wait_log("ignored a control request", count=4)
    lines = [line for line in log.splitlines() if "ignored a control request" in line]
    assert all(len(line) < 300 for line in lines), lines
    assert "5000 bytes, over the 4096-byte limit" in lines[0]
    assert "reply must be a channel eventrouter/control/reply/<id>" in lines[2]
    assert "nested deeper than 4" in lines[3]
    assert "route ok: event 'a/event/ok'" not in router.log  # the forged reply ran nothing
    assert _cli(redis_url, "status", "--instance", "r")["instance"] == "r"


def test_history_shows_a_retry_and_its_run(
    tmp_path: Path, redis_url: str, router_factory: Callable[..., Router]
) -> None:
    folder = _routes(tmp_path / "routes")
    router = router_factory("--routes", str(folder), "--instance", "r")
    redis.Redis.from_url(redis_url).publish("a/event/fail", "{}")
    log = router.wait_log(r"failure recorded as \S+")
    failure_id = re.findall(r"failure recorded as (\S+)", log)[0]
    write_step(folder / "h-fail" / "10fail", "exit 0")  # fixed meanwhile
    asked = run_cli("retry", "--redis", redis_url, failure_id)
    assert asked.returncode == 0, asked.stderr
    router.wait_log(r"route fails: event 'a/event/fail': run ok")
    newest = _cli(redis_url, "history", "--instance", "r", "--limit", "1")[0]
    assert newest["channel"] == "a/event/fail"
    assert newest["routes"][0]["outcome"] == "ran"
    assert newest["routes"][0]["route"] == "fails"
    assert newest["routes"][0]["detail"] == f"retry {failure_id}"
