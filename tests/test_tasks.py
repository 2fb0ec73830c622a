"""The NS8 task client against a real server and a real agent process speaking the protocol."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from eventrouter.redis.tasks import TaskClient, TaskError
from tests.cluster import start_agent
from tests.routerproc import write_step

Agent = Callable[[str], subprocess.Popen[bytes]]


@pytest.fixture
def actions(tmp_path: Path) -> Path:
    """Actions folder: configure-module echoes its data, fail-module fails with a message."""
    folder = tmp_path / "actions"
    write_step(folder / "configure-module" / "10echo", "cat; echo; echo step-done >&2")
    write_step(folder / "fail-module" / "10fail", "echo 'bad hostname' >&2; exit 3")
    write_step(folder / "validate-module" / "10validate", "echo invalid >&2; exit 10")
    return folder


@pytest.fixture
def agent(redis_url: str, actions: Path) -> Iterator[Agent]:
    """Start test agents that serve ``actions`` under a given agent id."""
    started: list[subprocess.Popen[bytes]] = []

    def start(agent_id: str) -> subprocess.Popen[bytes]:
        proc = start_agent(redis_url, agent_id, actions)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(5)


async def test_a_task_runs_and_its_output_comes_back(redis_url: str, agent: Agent) -> None:
    agent("module/mail1")
    client = TaskClient(redis_url)
    try:
        result = await client.run(
            "module/mail1", "configure-module", {"hostname": "mail.example.org"}, limit=10
        )
    finally:
        await client.close()
    assert result.exit_code == 0
    assert json.loads(result.output) == {"hostname": "mail.example.org"}
    assert result.error == "step-done\n"


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("fail-module", (3, "bad hostname\n", "exit code 3")),
        ("validate-module", (10, "invalid\n", "exit code 10 (validation failed)")),
        (
            "no-such-action",
            (8, "action no-such-action not found\n", "exit code 8 (no such action)"),
        ),
    ],
)
async def test_a_failing_task_gives_its_exit_code_and_error(
    redis_url: str, agent: Agent, action: str, expected: tuple[int, str, str]
) -> None:
    agent("module/mail1")
    client = TaskClient(redis_url)
    try:
        result = await client.run("module/mail1", action, {}, limit=10)
    finally:
        await client.close()
    assert (result.exit_code, result.error, result.describe()) == expected


async def test_an_agent_that_is_not_listening_fails_fast(redis_url: str) -> None:
    client = TaskClient(redis_url)
    try:
        with pytest.raises(TaskError, match="agent module/ghost1 is not listening"):
            await client.run("module/ghost1", "configure-module", {}, limit=10)
    finally:
        await client.close()
    assert redis.Redis.from_url(redis_url).llen("module/ghost1/tasks") == 0  # nothing queued


async def test_without_wait_the_task_is_queued_and_not_followed(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    connection.client_setname("module/idle1")  # a live agent that never pops
    client = TaskClient(redis_url)
    try:
        result = await client.run(
            "module/idle1", "configure-module", {"a": 1}, limit=1, wait=False, parent="parent-id"
        )
    finally:
        await client.close()
    assert result.exit_code is None
    task = json.loads(connection.rpop("module/idle1/tasks") or b"{}")
    assert task == {
        "id": result.task_id,
        "action": "configure-module",
        "data": {"a": 1},
        "extra": {},
        "parent": "parent-id",
    }


async def test_a_task_that_never_ends_times_out(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    connection.client_setname("module/idle1")
    client = TaskClient(redis_url)
    try:
        with pytest.raises(TaskError, match=r"no exit code after 0\.3s"):
            await client.run("module/idle1", "configure-module", {}, limit=0.3)
    finally:
        await client.close()
