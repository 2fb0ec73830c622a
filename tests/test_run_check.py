"""`run` refuses, at start and on SIGHUP, what `check` reports as errors, with its messages."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path

from tests.routerproc import Router, clean_env, run_cli

CYCLE = """
routes:
  - name: ping
    on: x/event/ping
    do: [{emit: {channel: x/event/pong}}]
  - name: pong
    on: x/event/pong
    do: [{emit: {channel: x/event/ping}}]
"""


def cycle_errors(text: str) -> list[str]:
    return re.findall(r"\S+:\d+: error: derived-event cycle: .*", text)


def test_run_refuses_to_start_on_what_check_errors_on(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "r.yml").write_text(CYCLE)
    checked = run_cli("check", "--routes", str(tmp_path))
    assert checked.returncode == 1
    expected = cycle_errors(checked.stdout)
    assert expected, checked.stdout
    started = run_cli("run", "--routes", str(tmp_path), "--redis", redis_url, timeout=20)
    assert started.returncode == 1, started.stderr
    assert cycle_errors(started.stderr) == expected
    assert "not starting" in started.stderr


def test_sighup_keeps_the_old_routes_on_what_check_errors_on(
    tmp_path: Path, router_factory: Callable[..., Router]
) -> None:
    (tmp_path / "r.yml").write_text(CYCLE.split("  - name: pong", maxsplit=1)[0])
    router = router_factory("--routes", str(tmp_path))
    (tmp_path / "r.yml").write_text(CYCLE)
    expected = cycle_errors(run_cli("check", "--routes", str(tmp_path), env=clean_env()).stdout)
    assert expected
    router.signal(signal.SIGHUP)
    log = router.wait_log("reload failed")
    assert cycle_errors(log) == expected
    assert "reloaded:" not in log
    assert router.stop() == 0
