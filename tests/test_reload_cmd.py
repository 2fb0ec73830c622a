"""`eventrouter reload`: SIGHUP to the router of a state folder, and the result of that reload."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.routerproc import Router, run_here, write_routes

ONE = """
routes:
  - name: first
    on: x/event/one-happened
    do: [{emit: {channel: x/event/two-happened}}]
"""
TWO = (
    ONE
    + """
  - name: second
    on: x/event/two-happened
    do: [{emit: {channel: x/event/three-happened}}]
"""
)
TYPO = (
    ONE
    + """
  - name: second
    on: x/event/two-happened
    enabld: true
    do: [{emit: {channel: x/event/three-happened}}]
"""
)


def test_reload_prints_the_summary_of_the_reload_it_caused(
    tmp_path: Path, router_factory: Callable[..., Router]
) -> None:
    routes, state = tmp_path / "routes", tmp_path / "state"
    write_routes(routes, "r.yml", ONE)
    router = router_factory("--routes", str(routes), "--state-dir", str(state))
    write_routes(routes, "r.yml", TWO)
    done = run_here("reload", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert "reloaded: 2 routes (+1 -0 ~0)" in done.stdout
    assert "added: second" in done.stdout
    assert router.wait_log("reloaded: 2 routes")
    assert router.proc.poll() is None


def test_reload_prints_the_errors_and_exits_1_when_the_old_routes_are_kept(
    tmp_path: Path, router_factory: Callable[..., Router]
) -> None:
    routes, state = tmp_path / "routes", tmp_path / "state"
    write_routes(routes, "r.yml", ONE)
    router = router_factory("--routes", str(routes), "--state-dir", str(state))
    write_routes(routes, "r.yml", TYPO)
    done = run_here("reload", "--state-dir", str(state))
    assert done.returncode == 1
    assert f"{routes / 'r.yml'}:9: error: routes[1].enabld: unknown key 'enabld'" in done.stdout
    assert "reload failed with 1 error(s); keeping the 1 routes loaded before" in done.stdout
    assert router.proc.poll() is None


def test_reload_exits_1_when_no_router_runs(tmp_path: Path) -> None:
    done = run_here("reload", "--state-dir", str(tmp_path))
    assert done.returncode == 1
    assert f"no router runs with the state folder {tmp_path}" in done.stderr


def test_reload_ignores_a_pid_file_that_no_router_holds(tmp_path: Path) -> None:
    # A router killed outright leaves its pid file; the pid may since belong to anything
    # (here: this test process, which a SIGHUP would end).
    (tmp_path / "eventrouter.pid").write_text(f"{os.getpid()}\n")
    done = run_here("reload", "--state-dir", str(tmp_path))
    assert done.returncode == 1
    assert "no router runs" in done.stderr
