"""``task:`` actions run by the dispatcher against a real server and a stand-in NS8 agent:
failure stops the route, is journaled and retried per ``retry:``; a silent agent fails fast."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from eventrouter.config.loader import load_routes
from eventrouter.config.patterns import RouteIndex
from eventrouter.model import Settings
from eventrouter.redis.tasks import TaskClient
from eventrouter.runtime.dispatch import Dispatcher, Receipt
from eventrouter.runtime.journal import Failure
from eventrouter.runtime.steps import StepRunner
from tests.cluster import start_agent
from tests.routerproc import lines, write_step


class Recorder:
    """A failure journal that keeps what it is given."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    async def record(self, failure: Failure) -> str:
        self.failures.append(failure)
        return f"f{len(self.failures)}"


class NoPublish:
    async def publish(self, channel: str, data: bytes, receipt: Receipt | None = None) -> None:
        raise AssertionError("nothing is published here")


@pytest.fixture
def agent(redis_url: str, tmp_path: Path) -> Iterator[Path]:
    """A live module/mail1 whose actions log each call to ``calls``: ok, and always-fail."""
    actions, calls = tmp_path / "actions", tmp_path / "calls"
    write_step(
        actions / "always-fail" / "10fail", f"echo fail >> {calls}; echo 'no cert' >&2; exit 3"
    )
    write_step(actions / "ok" / "10ok", f"cat >> {calls}; echo >> {calls}")
    proc: subprocess.Popen[bytes] = start_agent(redis_url, "module/mail1", actions)
    yield calls
    proc.kill()
    proc.wait(5)


def dispatcher(
    tmp_path: Path, redis_url: str, do: str, retry: str = ""
) -> tuple[Dispatcher, Recorder, TaskClient]:
    write_step(tmp_path / "after" / "10mark", f"echo after >> {tmp_path}/after-ran")
    text = f"routes:\n  - name: r\n    on: a/event/x\n{retry}    do:\n{do}      - run: after\n"
    (tmp_path / "r.yml").write_text(text)
    result = load_routes([tmp_path])
    assert result.ok, result.diagnostics
    journal, client = Recorder(), TaskClient(redis_url)
    found = Dispatcher(
        Settings(),
        StepRunner(),
        NoPublish(),
        RouteIndex(result.routes),
        journal=journal,
        tasks=client,
    )
    return found, journal, client


async def settle(found: Dispatcher, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    await asyncio.sleep(0.01)
    while found.busy:
        assert time.monotonic() < deadline, "the run did not end"
        await asyncio.sleep(0.01)


async def test_a_failing_task_stops_the_route_is_retried_and_journaled(
    tmp_path: Path, redis_url: str, agent: Path
) -> None:
    do = "      - task: {agent: module/mail1, action: always-fail, timeout: 5s}\n"
    retry = "    retry: {attempts: 2, backoff: 10ms}\n"
    found, journal, client = dispatcher(tmp_path, redis_url, do, retry)
    try:
        found.receive("a/event/x", b"{}")
        await settle(found)
    finally:
        await client.close()
    assert lines(agent) == ["fail", "fail"]  # two attempts reached the agent
    assert not (tmp_path / "after-ran").exists()  # the later action did not run
    [failure] = journal.failures
    assert failure.status == "retries exhausted (2 attempts): task exit code 3"
    assert failure.action == "task always-fail on module/mail1"
    assert failure.tail == ("no cert",)
    assert found.counters["retries"] == 1


async def test_a_task_that_succeeds_lets_the_route_go_on(
    tmp_path: Path, redis_url: str, agent: Path
) -> None:
    do = '      - task: {agent: module/mail1, action: ok, data: {n: "{{ payload.n }}"}}\n'
    found, journal, client = dispatcher(tmp_path, redis_url, do)
    try:
        found.receive("a/event/x", b'{"n": 5}')
        await settle(found)
    finally:
        await client.close()
    assert lines(agent) == ['{"n": 5}']
    assert lines(tmp_path / "after-ran") == ["after"]
    assert journal.failures == []


async def test_a_task_for_an_agent_that_is_not_listening_fails_fast(
    tmp_path: Path, redis_url: str
) -> None:
    do = "      - task: {agent: module/ghost1, action: ok}\n"
    found, journal, client = dispatcher(tmp_path, redis_url, do)
    started = time.monotonic()
    try:
        found.receive("a/event/x", b"{}")
        await settle(found)
    finally:
        await client.close()
    assert time.monotonic() - started < 2
    [failure] = journal.failures
    assert "agent module/ghost1 is not listening" in failure.reason
    assert redis.Redis.from_url(redis_url).llen("module/ghost1/tasks") == 0


async def test_without_wait_the_route_goes_on_once_the_task_is_queued(
    tmp_path: Path, redis_url: str
) -> None:
    idle = redis.Redis.from_url(redis_url)
    idle.client_setname("module/idle1")  # live, but never pops
    do = "      - task: {agent: module/idle1, action: ok, wait: false}\n"
    found, journal, client = dispatcher(tmp_path, redis_url, do)
    try:
        found.receive("a/event/x", b"{}")
        await settle(found)
    finally:
        await client.close()
    assert lines(tmp_path / "after-ran") == ["after"]
    assert idle.llen("module/idle1/tasks") == 1
    assert journal.failures == []


def _assert_retry_said(records: list[logging.LogRecord]) -> None:
    """The retry line says what happens next; the attempt's own error line said why."""
    [retry] = [record.getMessage() for record in records if "retrying in" in record.getMessage()]
    assert re.search(r"[]:] attempt 1/2 failed; retrying in \d+\.\d\ds$", retry), retry


def _reason_lines(records: list[logging.LogRecord], reason: str) -> list[str]:
    return [record.getMessage() for record in records if reason in record.getMessage()]


async def test_each_failed_task_attempt_logs_its_reason_once(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    do = "      - task: {agent: module/ghost1, action: ok}\n"
    found, _, client = dispatcher(
        tmp_path, redis_url, do, "    retry: {attempts: 2, backoff: 10ms}\n"
    )
    caplog.set_level(logging.INFO, logger="eventrouter")
    try:
        found.receive("a/event/x", b"{}")
        await settle(found)
    finally:
        await client.close()
    said = _reason_lines(caplog.records, "agent module/ghost1 is not listening")
    assert len(said) == 2, said  # one line per attempt
    _assert_retry_said(caplog.records)


async def test_each_failed_handler_attempt_logs_its_reason_once(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_step(tmp_path / "broken" / "10fail", "exit 3")
    do = "      - run: broken\n"
    found, _, client = dispatcher(
        tmp_path, redis_url, do, "    retry: {attempts: 2, backoff: 10ms}\n"
    )
    caplog.set_level(logging.INFO, logger="eventrouter")
    try:
        found.receive("a/event/x", b"{}")
        await settle(found)
    finally:
        await client.close()
    said = _reason_lines(caplog.records, "failed: exit status 3")
    assert len(said) == 2, said
    _assert_retry_said(caplog.records)
