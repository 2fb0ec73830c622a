"""`run` refuses, at start (the real CLI) and on SIGHUP (the daemon in process,
eventrouter.testing), what `check` reports as errors, with its messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from eventrouter.analysis.verdict import validate
from eventrouter.config.loader import load_routes
from eventrouter.testing import Harness
from tests.routerproc import run_cli, run_here

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
    checked = run_here("check", "--routes", str(tmp_path))
    assert checked.returncode == 1
    expected = cycle_errors(checked.stdout)
    assert expected, checked.stdout
    started = run_cli("run", "--routes", str(tmp_path), "--redis", redis_url, timeout=20)
    assert started.returncode == 1, started.stderr
    assert cycle_errors(started.stderr) == expected
    assert "not starting" in started.stderr


async def test_sighup_keeps_the_old_routes_on_what_check_errors_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "r.yml").write_text(CYCLE.split("  - name: pong", maxsplit=1)[0])
    async with Harness(tmp_path) as router:
        (tmp_path / "r.yml").write_text(CYCLE)
        checked = validate(load_routes([tmp_path]), [])  # what `check` prints
        expected = cycle_errors("\n".join(str(item) for item in checked.diagnostics))
        assert expected
        assert not await router.reload()
        assert router.serving
    assert "reload failed" in caplog.text
    assert cycle_errors(caplog.text) == expected
    assert "reloaded:" not in caplog.text
