"""At INFO the log tells the story: one line per run ended, one per derived event; an event
that runs nothing only at DEBUG with one reason (the router in process, eventrouter.testing,
with real steps); nothing said twice at start (the real CLI)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from eventrouter.runtime.steps import StepRunner
from eventrouter.testing import Harness
from tests.conftest import free_port
from tests.routerproc import Router, clean_env, write_routes, write_step

ROUTES = """\
routes:
  - name: announces
    on: a/event/added
    do:
      - run: h-ok
      - emit: {channel: a/event/announced, payload: {}}
  - name: hears
    on: a/event/announced
    do: [{run: h-ok}]
  - name: breaks
    on: a/event/broken
    do: [{run: h-fail}]
  - name: guarded
    on: a/event/guarded
    when: payload.go is defined
    do: [{run: h-ok}]
"""


def _routes(folder: Path) -> Path:
    write_step(folder / "h-ok" / "10ok", "exit 0")
    write_step(folder / "h-ok" / "20ok", "exit 0")
    write_step(folder / "h-fail" / "10fail", "exit 3")
    write_routes(folder, "r.yml", ROUTES)
    (folder / "events").mkdir()
    return folder


async def test_info_log_has_a_line_per_run_and_per_derived_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _routes(tmp_path / "routes")
    async with Harness(folder, runner=StepRunner()) as router:
        router.publish("a/event/added", "{}")
        router.publish("a/event/broken", "{}")
        await router.settle()
    log = caplog.text
    assert "route hears: event 'a/event/announced': run ok" in log
    assert re.search(
        r"INFO .*route announces: event 'a/event/added': run ok in \d+\.\d{3}s, 2 step\(s\) run",
        log,
    ), log
    assert re.search(
        r"route breaks: event 'a/event/broken': run failed in \d+\.\d{3}s, 1 step\(s\) run "
        r"\(exit status 3\)",
        log,
    ), log
    assert (
        "route announces emitted 'a/event/announced' (caused by 'a/event/added'): 1 receiver(s)"
    ) in log


async def test_an_event_that_runs_nothing_is_one_debug_line_with_one_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _routes(tmp_path / "routes")
    async with Harness(folder, events=[folder / "events"], log_level=logging.DEBUG) as router:
        router.publish("zz/event/unknown", "{}")
        router.publish("a/event/guarded", "{}")
        await router.settle()
    unknown = [record for record in caplog.records if "zz/event/unknown" in record.getMessage()]
    assert len(unknown) == 1, unknown
    assert unknown[0].levelname == "DEBUG"
    assert "nothing runs: no route or events folder matches it" in unknown[0].getMessage()
    guarded = [line for line in caplog.messages if "'a/event/guarded'" in line]
    assert len(guarded) == 1, guarded
    assert "nothing runs: route guarded: when: payload.go is defined is false" in guarded[0]


def test_start_says_each_thing_once_with_the_embedded_server(
    tmp_path: Path, short_tmp: Path
) -> None:
    folder = _routes(tmp_path / "routes")
    env = clean_env(EVENTROUTER_STATE_DIR=str(short_tmp))
    router = Router(["run", "--routes", str(folder)], tmp_path / "log", env)
    try:
        log = router.ready().log
        url = f"unix://{short_tmp}/redis.sock"
        mentions = [line for line in log.splitlines() if url in line]
        # The server's start (binary, pid, URL) and the subscription: nothing more.
        assert len(mentions) == 2, mentions
        assert router.stop() == 0
    finally:
        router.kill()


def test_a_run_that_emits_ends_after_its_emitted_line(
    tmp_path: Path, redis_url: str, router_factory: Callable[..., Router]
) -> None:
    folder = _routes(tmp_path / "routes")
    router = router_factory("--routes", str(folder))
    publish = redis.Redis.from_url(redis_url).publish
    for _ in range(5):  # each run's two lines, in the order they happened, every time
        publish("a/event/added", "{}")
    log = router.wait_log(r"route announces: event 'a/event/added': run ok", count=5)
    router.wait_log(r"route announces emitted 'a/event/announced'", count=5)
    log = router.log
    story = [
        "emitted" if " emitted " in line else "run ok"
        for line in log.splitlines()
        if "route announces" in line
    ]
    assert story == ["emitted", "run ok"] * 5, log


def test_a_run_whose_emit_never_went_out_is_still_told_at_shutdown(
    tmp_path: Path, redis_url: str, router_factory: Callable[..., Router]
) -> None:
    folder = _routes(tmp_path / "routes")
    nowhere = f"redis://127.0.0.1:{free_port()}"  # the emit waits in the outbox for good
    router = router_factory("--routes", str(folder), "--publish-redis", nowhere)
    redis.Redis.from_url(redis_url).publish("a/event/added", "{}")
    router.wait_log(r"cannot publish derived events to .*; 1 waiting")
    assert router.stop() == 0
    log = router.log
    assert re.search(r"route announces: event 'a/event/added': run ok in ", log), log
    assert " emitted 'a/event/announced'" not in log
