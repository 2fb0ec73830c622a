"""Where the router keeps its state by default: systemd folders, /run for root, the home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from eventrouter.redis.embedded import default_state_dir
from tests.routerproc import clean_env, run_here


def test_root_without_xdg_runtime_dir_keeps_state_in_run() -> None:
    assert default_state_dir({"HOME": "/root"}, euid=0) == Path("/run/eventrouter")


def test_a_user_without_xdg_runtime_dir_keeps_state_in_its_home() -> None:
    found = default_state_dir({"HOME": "/home/u"}, euid=1000)
    assert found == Path("/home/u/.local/state/eventrouter")


@pytest.mark.parametrize("euid", [0, 1000])
def test_systemd_state_directory_comes_first(euid: int) -> None:
    env = {"STATE_DIRECTORY": "/var/lib/eventrouter:/var/lib/other", "XDG_RUNTIME_DIR": "/x"}
    assert default_state_dir(env, euid=euid) == Path("/var/lib/eventrouter")


def test_systemd_runtime_directory_when_no_state_directory() -> None:
    env = {"RUNTIME_DIRECTORY": "/run/eventrouter2", "XDG_RUNTIME_DIR": "/run/user/0"}
    assert default_state_dir(env, euid=0) == Path("/run/eventrouter2")


def test_eventrouter_state_dir_wins_over_everything() -> None:
    env = {"EVENTROUTER_STATE_DIR": "/srv/er", "STATE_DIRECTORY": "/var/lib/eventrouter"}
    assert default_state_dir(env, euid=0) == Path("/srv/er")


def test_xdg_runtime_dir_for_a_login_session() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/u"}
    assert default_state_dir(env, euid=1000) == Path("/run/user/1000/eventrouter")


@pytest.mark.skipif(os.geteuid() != 0, reason="shows the root default; needs root")
def test_the_cli_as_root_looks_in_run_eventrouter() -> None:
    env = clean_env()
    for name in ("XDG_RUNTIME_DIR", "STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
        env.pop(name, None)
    done = run_here("publish", "--raw", "cluster/event/x-changed", "{}", env=env)
    assert done.returncode == 1
    assert "/run/eventrouter/redis.sock" in done.stderr
