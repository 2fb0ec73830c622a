"""At INFO the log tells the story: one line per run ended, one per derived event; an event
that runs nothing only at DEBUG with one reason (the router in process, eventrouter.testing,
with real steps); nothing said twice at start (the real CLI)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from eventrouter.runtime.steps import StepRunner
from eventrouter.testing import Harness
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
    assert "nothing runs: route guarded: when: payload.go is defined is false (false)" in guarded[0]


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
