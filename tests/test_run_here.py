"""``run_here`` (the CLI in the test's process) answers as ``run_cli`` (a subprocess) does.

The tests of check, explain, test, routes and schema run the CLI in process: this is what
lets them, so each case here runs both ways and compares status, stdout and stderr.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.routerproc import REPO, clean_env, run_cli, run_here

EXAMPLES = REPO / "examples" / "ns8-cluster"
GOOD = """\
routes:
  - name: x
    on: module/{m}/event/y
    when: payload.n > 0
    do: [{emit: {channel: "a/event/{{ payload.n }}"}}]
"""
BAD = GOOD.replace("payload.n }}", "payload.n }")


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--routes", str(EXAMPLES / "routes.d"), "--events-dir", str(EXAMPLES / "events")],
        ["check", "--routes", "routes.d"],  # relative to the working folder
        ["check", "--routes", "bad.d"],
        ["check", "--no-such-option"],
        ["explain", "--routes", "routes.d", "module/m1/event/y", "-"],  # the payload on stdin
        ["explain", "--routes", "bad.d", "module/m1/event/y", "{}"],
        ["routes", "--routes", str(EXAMPLES / "routes.d")],
        ["schema", "other"],
        ["test", "--help"],
    ],
)
def test_in_process_and_subprocess_agree(args: list[str], tmp_path: Path) -> None:
    for name, text in (("routes.d", GOOD), ("bad.d", BAD)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.yml").write_text(text)
    here = run_here(*args, cwd=tmp_path, stdin='{"n": 1}')
    there = run_cli(*args, cwd=tmp_path, stdin='{"n": 1}')
    assert here.stdout or here.stderr
    assert (here.returncode, here.stdout, here.stderr) == (
        there.returncode,
        there.stdout,
        there.stderr,
    )


def test_the_process_is_left_as_it_was(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = (root.handlers[:], root.level, dict(os.environ), os.getcwd())
    done = run_here("check", "--routes", str(tmp_path), env={"ONLY": "this"}, cwd=tmp_path)
    assert done.returncode == 1  # an empty routes folder named on the command line
    assert (root.handlers, root.level, dict(os.environ), os.getcwd()) == before


def test_only_commands_of_our_own_code_run_in_process() -> None:
    with pytest.raises(ValueError, match="use run_cli"):
        run_here("run")


@pytest.mark.parametrize(
    "args",
    [
        ["publish", "--raw", "a/event/b", "x"],
        ["publish", "no-event-channel", "{}"],
        ["failures", "--json"],
        ["history"],
    ],
)
def test_commands_that_talk_to_redis_agree_too(
    args: list[str], redis_url: str, tmp_path: Path
) -> None:
    env = clean_env(EVENTROUTER_STATE_DIR=str(tmp_path))
    here = run_here(*args, "--redis", redis_url, env=env)
    there = run_cli(*args, "--redis", redis_url, env=env)
    assert here.stdout or here.stderr
    assert (here.returncode, here.stdout, here.stderr) == (
        there.returncode,
        there.stdout,
        there.stderr,
    )


async def test_a_coroutine_may_run_a_command_that_starts_a_loop(redis_url: str) -> None:
    done = run_here("publish", "--raw", "--redis", redis_url, "a/event/b", "x")
    assert done.returncode == 0, done.stderr
