"""``task:`` actions in the whole router: failure stops the route, is journaled and retried
per ``retry:``; an agent not listening fails the action; ``wait: false`` goes on once the
task is queued. In process (eventrouter.testing): agents answer as scripted. The task client
against a real server and a stand-in NS8 agent is tests/test_tasks.py; a route reaching a
real agent, tests/test_cluster.py."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from eventrouter.model import TaskResult
from eventrouter.runtime.steps import StepRunner
from eventrouter.testing import Harness
from tests.routerproc import handler, write_routes, write_step


def routes(tmp_path: Path, do: str, retry: str = "") -> Path:
    """Write route r: the actions ``do``, then a run of the handler ``after``."""
    handler(tmp_path / "after")
    text = f"routes:\n  - name: r\n    on: a/event/x\n{retry}    do:\n{do}      - run: ../after\n"
    return write_routes(tmp_path / "routes", "r.yml", text).parent


async def test_a_failing_task_stops_the_route_is_retried_and_journaled(tmp_path: Path) -> None:
    do = "      - task: {agent: module/mail1, action: always-fail, timeout: 5s}\n"
    retry = "    retry: {attempts: 2, backoff: 10ms}\n"
    async with Harness(routes(tmp_path, do, retry)) as router:
        router.tasks.answer("module/mail1", "always-fail", TaskResult("t1", 3, error="no cert"))
        await router.send("a/event/x")
        await router.advance(1)  # the backoff
    calls = [(call.agent, call.action, call.limit) for call in router.tasks.calls]
    assert calls == [("module/mail1", "always-fail", 5.0)] * 2  # two attempts reached it
    assert router.fake.calls == []  # the later action did not run
    [failure] = router.journal.failures
    assert failure.status == "retries exhausted (2 attempts): task exit code 3"
    assert failure.action == "task always-fail on module/mail1"
    assert failure.tail == ("no cert",)
    assert router.dispatcher.counters["retries"] == 1


async def test_a_task_that_succeeds_lets_the_route_go_on(tmp_path: Path) -> None:
    do = '      - task: {agent: module/mail1, action: ok, data: {n: "{{ payload.n }}"}}\n'
    async with Harness(routes(tmp_path, do)) as router:
        router.tasks.answer("module/mail1", "ok", 0)
        await router.send("a/event/x", b'{"n": 5}')
    [call] = router.tasks.calls
    assert (call.agent, call.action, call.data, call.wait) == ("module/mail1", "ok", {"n": 5}, True)
    assert [run.name for run in router.fake.calls] == ["after"]
    assert router.journal.failures == []


async def test_a_task_for_an_agent_that_is_not_listening_fails_fast(tmp_path: Path) -> None:
    do = "      - task: {agent: module/ghost1, action: ok}\n"
    async with Harness(routes(tmp_path, do)) as router:
        router.tasks.answer("module/mail1", "ok")  # another agent listens; ghost1 does not
        await router.send("a/event/x")
    assert [call.agent for call in router.tasks.calls] == ["module/ghost1"]
    assert router.fake.calls == []
    [failure] = router.journal.failures
    assert "agent module/ghost1 is not listening" in failure.reason
    assert failure.status == "task failed"


async def test_without_wait_the_route_goes_on_once_the_task_is_queued(tmp_path: Path) -> None:
    do = "      - task: {agent: module/idle1, action: ok, wait: false}\n"
    async with Harness(routes(tmp_path, do)) as router:
        router.tasks.answer("module/idle1", "ok", 1)  # live; it would fail, were it waited for
        await router.send("a/event/x")
    assert [call.wait for call in router.tasks.calls] == [False]
    assert [run.name for run in router.fake.calls] == ["after"]
    assert router.journal.failures == []


def _assert_retry_said(records: list[logging.LogRecord]) -> None:
    """The retry line says what happens next; the attempt's own error line said why."""
    [retry] = [record.getMessage() for record in records if "retrying in" in record.getMessage()]
    assert re.search(r"[]:] attempt 1/2 failed; retrying in \d+\.\d\ds$", retry), retry


def _reason_lines(records: list[logging.LogRecord], reason: str) -> list[str]:
    return [record.getMessage() for record in records if reason in record.getMessage()]


RETRY_TWICE = "    retry: {attempts: 2, backoff: 10ms}\n"


async def test_each_failed_task_attempt_logs_its_reason_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    do = "      - task: {agent: module/ghost1, action: ok}\n"
    caplog.set_level(logging.INFO, logger="eventrouter")
    async with Harness(routes(tmp_path, do, RETRY_TWICE)) as router:
        router.tasks.answer("module/mail1", "ok")  # another agent listens; ghost1 does not
        await router.send("a/event/x")
        await router.advance(1)  # the backoff
    said = _reason_lines(caplog.records, "agent module/ghost1 is not listening")
    assert len(said) == 2, said  # one line per attempt
    _assert_retry_said(caplog.records)


async def test_each_failed_handler_attempt_logs_its_reason_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_step(tmp_path / "routes" / "broken" / "10fail", "exit 3")
    do = "      - run: broken\n"
    caplog.set_level(logging.INFO, logger="eventrouter")
    async with Harness(routes(tmp_path, do, RETRY_TWICE), runner=StepRunner()) as router:
        await router.send("a/event/x")
        await router.advance(1)  # the backoff
    said = _reason_lines(caplog.records, "failed: exit status 3")
    assert len(said) == 2, said
    _assert_retry_said(caplog.records)
