"""Each step is decided at its turn, as NS8's agent does: real step scripts, real routers.

A step the kernel refuses to start is skipped and the next steps run; a step made executable
by an earlier step runs; names passed over (hidden, editor and package backups) are named in
the log once; each events folder of one event runs as a handler of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eventrouter.runtime.steps import HandlerResult, StepResult, StepRunner
from tests.conftest import RedisCli
from tests.routerproc import Router, lines, wait_for, write_step

LOGGER = "eventrouter.runtime.steps"
TAG = "[route r1 event cluster/event/e1]"


def raw(path: Path, text: str, mode: int = 0o755) -> Path:
    """Write ``text`` as it is (no #! line added) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def mark(tmp_path: Path, name: str) -> str:
    """Return a step body that leaves the marker ``name`` in ``tmp_path``."""
    return f'touch "{tmp_path}/{name}"'


def markers(folder: Path) -> list[str]:
    """Return the names of the files (the markers steps left) directly in ``folder``."""
    return sorted(path.name for path in folder.iterdir() if path.is_file())


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Return the messages of the warnings logged so far."""
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def run(
    runner: StepRunner, directory: Path, env: dict[str, str] | None = None
) -> HandlerResult:
    """Run a handler with the usual event, never waiting more than 15 s."""
    return await asyncio.wait_for(
        runner.run_handler(
            directory,
            payload=b"{}",
            env=env or {},
            event_name="e1",
            event_source="cluster",
            timeout=None,
            tag=TAG,
        ),
        15,
    )


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)


def _runner(tmp_path: Path, where: str) -> StepRunner:
    """Return a runner whose steps run in the router's folder or in a state folder.

    The two start steps differently (posix_spawn, or Popen to change folder): both must
    report a refused start alike.
    """
    env = {"PATH": os.environ["PATH"]}
    if where == "state":
        (tmp_path / "state").mkdir()
        env["AGENT_STATE_DIR"] = str(tmp_path / "state")
    return StepRunner(base_env=env)


# --- a step that cannot be started ------------------------------------------------------------


@pytest.mark.parametrize("where", ["cwd", "state"])
async def test_a_step_the_kernel_refuses_is_skipped_and_the_next_steps_run(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    handler = tmp_path / "h"
    raw(handler / "10noshebang", f"{mark(tmp_path, 'noshebang')}\n")
    raw(handler / "20nointerpreter", f"#!/nonexistent/python3 -u\n{mark(tmp_path, 'interp')}\n")
    raw(handler / "25crlf", f"#!/bin/sh\r\n{mark(tmp_path, 'crlf')}\r\n")
    write_step(handler / "30after", mark(tmp_path, "after"))

    result = await run(_runner(tmp_path, where), handler)

    assert result.ok, result.error
    assert [(s.name, s.status) for s in result.steps] == [
        ("10noshebang", None),
        ("20nointerpreter", None),
        ("25crlf", None),
        ("30after", 0),
    ]
    no_shebang, no_interpreter, crlf = (s.skipped or "" for s in result.steps[:3])
    assert "no #! line" in no_shebang
    assert "/nonexistent/python3" in no_interpreter and "does not exist" in no_interpreter
    assert "carriage return" in crlf and "/bin/sh\\x0d" in crlf
    assert markers(tmp_path) == ["after"]
    said = warnings(caplog)
    assert f"{TAG} skipping step 10noshebang of handler {handler}: {no_shebang}" in said
    assert f"{TAG} skipping step 20nointerpreter of handler {handler}: {no_interpreter}" in said


async def test_a_step_gone_between_its_turn_and_its_start_is_skipped(tmp_path: Path) -> None:
    handler = tmp_path / "h"
    write_step(handler / "10first", mark(tmp_path, "first"))
    write_step(handler / "20second", mark(tmp_path, "second"))
    write_step(handler / "30third", mark(tmp_path, "third"))
    runner = _runner(tmp_path, "cwd")
    start = runner._spawn

    async def remove_then_start(job: Any, step: Any, protocol: Any) -> Any:
        if step.name == "20second":
            os.unlink(step.file)
        return await start(job, step, protocol)

    runner._spawn = remove_then_start  # type: ignore[method-assign]

    result = await run(runner, handler)

    assert result.ok, result.error
    assert result.steps == (
        StepResult("10first", 0),
        StepResult("20second", None, skipped="vanished"),
        StepResult("30third", 0),
    )
    assert markers(tmp_path) == ["first", "third"]


async def test_a_step_that_starts_and_fails_still_aborts(tmp_path: Path) -> None:
    handler = tmp_path / "h"
    raw(handler / "10noshebang", "exit 0\n")
    write_step(handler / "20fails", "exit 4")
    write_step(handler / "30never", mark(tmp_path, "never"))

    result = await run(_runner(tmp_path, "cwd"), handler)

    assert not result.ok
    assert [(s.name, s.status) for s in result.steps] == [("10noshebang", None), ("20fails", 4)]
    assert result.error == f"step 20fails of handler {handler} failed: exit status 4"
    assert not (tmp_path / "never").exists()


async def test_a_start_refused_for_want_of_resources_aborts(tmp_path: Path) -> None:
    # An argument or variable over the kernel's 128 KiB (E2BIG) says nothing about the step:
    # running the later steps without it would be wrong.
    handler = tmp_path / "h"
    write_step(handler / "10first", mark(tmp_path, "first"))
    write_step(handler / "20never", mark(tmp_path, "never"))

    result = await run(_runner(tmp_path, "cwd"), handler, env={"HUGE": "x" * 200_000})

    assert not result.ok and result.error is not None
    assert result.steps == (StepResult("10first", None),)
    assert "step 10first of handler" in result.error and "could not start" in result.error
    assert not (tmp_path / "never").exists()


# --- decided at its turn ----------------------------------------------------------------------


async def test_a_step_made_executable_by_an_earlier_step_runs(tmp_path: Path) -> None:
    handler = tmp_path / "h"
    write_step(handler / "10enable", f'chmod +x "{handler}/20enabled"')
    write_step(handler / "20enabled", mark(tmp_path, "enabled")).chmod(0o644)
    # Listed at the start: a step an earlier one creates is not part of this run.
    write_step(handler / "30create", f'cp "{handler}/20enabled" "{handler}/40created"')

    result = await run(_runner(tmp_path, "cwd"), handler)

    assert result.ok, result.error
    assert [(s.name, s.status) for s in result.steps] == [
        ("10enable", 0),
        ("20enabled", 0),
        ("30create", 0),
    ]
    assert (tmp_path / "enabled").exists()


async def test_each_step_is_looked_at_at_its_turn_only(tmp_path: Path) -> None:
    handler = tmp_path / "h"
    write_step(handler / "10disable", f'chmod -x "{handler}/30later"')
    write_step(handler / "20plain", "exit 0").chmod(0o644)
    write_step(handler / "30later", mark(tmp_path, "later"))

    result = await run(_runner(tmp_path, "cwd"), handler)

    assert result.ok, result.error
    assert result.steps == (
        StepResult("10disable", 0),
        StepResult("20plain", None, skipped="not executable"),
        StepResult("30later", None, skipped="not executable"),
    )
    assert not (tmp_path / "later").exists()


# --- names passed over ------------------------------------------------------------------------


async def test_names_passed_over_are_named_once_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = tmp_path / "h"
    names = [".hidden", "10a~", ".10a.swp", "10a.orig", "10a.rej", "10a.dpkg-old", "10a.rpmnew"]
    for name in names:
        write_step(handler / name, mark(tmp_path, "passed-over"))
    write_step(handler / "10a", "exit 0")
    runner = _runner(tmp_path, "cwd")

    first = await run(runner, handler)
    second = await run(runner, handler)

    assert first.ok and second.ok
    assert [s.name for s in first.steps] == ["10a"]
    assert not (tmp_path / "passed-over").exists()
    said = [m for m in warnings(caplog) if "passing over" in m]
    assert len(said) == len(names), said
    for name in names:
        [line] = [m for m in said if f" {name} in handler {handler}: " in m]
        assert "never run" in line
    assert any("hidden name" in m for m in said if " .hidden " in m)
    assert any("backup left by patch" in m for m in said if " 10a.orig " in m)


# --- one event, two events folders: two handlers ----------------------------------------------


def test_one_event_in_two_events_folders_runs_two_handlers(
    tmp_path: Path, router_factory: Callable[..., Router], redis_cli: RedisCli
) -> None:
    out = tmp_path / "out"
    first, second = tmp_path / "events-a", tmp_path / "events-b"
    write_step(first / "e1" / "10same", f'echo "a 10same" >> "{out}"')
    write_step(first / "e1" / "20fails", f'echo "a 20fails" >> "{out}"; exit 3')
    write_step(second / "e1" / "10same", f'echo "b 10same" >> "{out}"')
    write_step(second / "e1" / "30other", f'echo "b 30other" >> "{out}"')
    (tmp_path / "empty").mkdir()
    router = router_factory(
        "--routes", str(tmp_path / "empty"), "--events-dir", str(first), "--events-dir",
        str(second),
    )  # fmt: skip

    redis_cli("PUBLISH", "cluster/event/e1", "{}")

    wait_for(lambda: len(lines(out)) == 4, 30, "both handlers")
    assert sorted(lines(out)) == ["a 10same", "a 20fails", "b 10same", "b 30other"]
    router.wait_log(r"step 20fails of handler .* failed: exit status 3")
    # Each handler's lines are tagged with its own folder; the second's may come a moment
    # after the four lines are written (its run ends after its last step's output).
    for folder in (first, second):
        router.wait_log(re.escape(f"events:{folder / 'e1'}"))


def test_the_router_skips_what_cannot_start_and_runs_what_became_executable(
    tmp_path: Path, router_factory: Callable[..., Router], redis_cli: RedisCli
) -> None:
    out = tmp_path / "out"
    events = tmp_path / "events"
    folder = events / "e1"
    write_step(folder / "10enable", f'chmod +x "{folder}/30enabled"; echo 10 >> "{out}"')
    raw(folder / "20noshebang", f'echo 20 >> "{out}"\n')
    write_step(folder / "30enabled", f'echo 30 >> "{out}"').chmod(0o644)
    write_step(folder / "30enabled.orig", f'echo orig >> "{out}"')
    (tmp_path / "empty").mkdir()
    router = router_factory("--routes", str(tmp_path / "empty"), "--events-dir", str(events))

    redis_cli("PUBLISH", "cluster/event/e1", "{}")

    wait_for(lambda: lines(out) == ["10", "30"], 30, "steps 10 and 30")
    log = router.wait_log(r"skipping step 20noshebang of handler .*: .*no #! line")
    # Named once: by the check at start; the run does not name it again.
    [named] = [line for line in log.splitlines() if "30enabled.orig" in line]
    assert "an editor" not in named and "never run" in named and "(*.orig)" in named
