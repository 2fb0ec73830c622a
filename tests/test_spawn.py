"""How a step process starts: the cheap path, and what it must hand the step (issue 11).

Steps in the router's own folder start with ``os.posix_spawn``; in another folder with
``subprocess.Popen``. Both give the step its three pipes and nothing else, a new session, the
signal dispositions of a fresh process, and are reaped with their status.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from eventrouter.runtime.steps import StepRunner
from eventrouter.support.processes import Warden
from tests.test_steps import TAG, run, runner_env, script, step_messages, text_of


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="eventrouter.runtime.steps")


def _no_popen(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a step in the router's folder started through subprocess.Popen")


async def test_a_step_in_the_routers_folder_starts_without_popen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(subprocess, "Popen", _no_popen)
    script(tmp_path / "h", "10ok", 'echo "ran in $PWD"; exit 3')
    runner = StepRunner(base_env=runner_env())
    result = await run(runner, tmp_path / "h")
    assert [step.status for step in result.steps] == [3]  # the exit status, reaped by us
    assert [text_of(r, "10ok") for r in step_messages(caplog, "10ok")] == [f"ran in {os.getcwd()}"]


def _ignored_and_blocked(status: str) -> tuple[int, int]:
    fields = dict(line.split(":\t") for line in status.splitlines() if ":\t" in line)
    return int(fields["SigIgn"], 16), int(fields["SigBlk"], 16)


@pytest.mark.parametrize("state_dir", [False, True], ids=["posix_spawn", "popen"])
async def test_a_step_gets_three_descriptors_and_default_signals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, state_dir: bool
) -> None:
    # ls opens one descriptor of its own to list the folder: 0, 1, 2 and that one.
    script(tmp_path / "h", "10fds", "ls /proc/self/fd")
    script(tmp_path / "h", "20sig", "exec cat /proc/self/status")
    env = runner_env(AGENT_STATE_DIR=str(tmp_path)) if state_dir else runner_env()
    result = await run(StepRunner(base_env=env), tmp_path / "h")
    assert result.ok
    fds = [text_of(r, "10fds") for r in step_messages(caplog, "10fds")]
    assert len(fds) == 4, fds
    status = "\n".join(text_of(r, "20sig") for r in step_messages(caplog, "20sig"))
    ignored, blocked = _ignored_and_blocked(status.replace("\\t", "\t"))
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (sig - 1)), f"{sig.name} ignored in the step"
    assert blocked == 0
    assert TAG


async def test_a_step_is_the_leader_of_its_own_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script(tmp_path / "h", "10sid", "echo $$; cat /proc/$$/stat")
    result = await run(StepRunner(base_env=runner_env()), tmp_path / "h")
    assert result.ok
    pid, stat = (text_of(r, "10sid") for r in step_messages(caplog, "10sid"))
    fields = stat.rpartition(")")[2].split()  # after the command name: state, ppid, pgrp, sid
    assert fields[2] == fields[3] == pid


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))


def test_the_warden_is_a_small_process() -> None:
    # Every router has one, idle or not: a Python interpreter took about 9 MiB of it.
    warden = Warden()
    warden.start(grace=0.1)
    try:
        assert warden.pid is not None
        time.sleep(0.2)
        assert _rss_kib(warden.pid) < 3 * 1024
    finally:
        warden.stop()


def test_the_warden_stops_the_groups_still_registered_and_only_those() -> None:
    kept, forgotten, other = (
        subprocess.Popen(["sleep", "30"], start_new_session=True) for _ in range(3)
    )
    warden = Warden()
    warden.start(grace=0.2)
    try:
        for proc in (kept, forgotten, other):
            warden.watch(proc.pid)
        warden.forget(forgotten.pid)
        warden.forget(4_000_000)  # never registered: no effect
    finally:
        warden.stop()  # end of file: the warden stops what is registered, then exits
    try:
        assert kept.wait(5) == -signal.SIGTERM
        assert other.wait(5) == -signal.SIGTERM
        assert forgotten.poll() is None
    finally:
        for proc in (kept, forgotten, other):
            proc.kill()
            proc.wait()


async def test_steps_get_the_environment_the_runner_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Copied once: the daemon's environment does not change, and copying os.environ for
    # every step cost a decode per variable.
    monkeypatch.setenv("ER_BEFORE", "1")
    runner = StepRunner()
    monkeypatch.setenv("ER_AFTER", "1")
    script(tmp_path / "h", "10env", 'echo "${ER_BEFORE:-unset} ${ER_AFTER:-unset}"')
    assert (await run(runner, tmp_path / "h")).ok
    assert [text_of(r, "10env") for r in step_messages(caplog, "10env")] == ["1 unset"]
