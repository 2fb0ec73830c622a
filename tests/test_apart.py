"""The deep check of `run` and of a reload, in a child process (``service.apart``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from eventrouter.analysis import lint
from eventrouter.analysis.verdict import validate
from eventrouter.config.loader import LoadResult, load_routes
from eventrouter.runtime.skips import MENTIONS
from eventrouter.service import apart
from tests.routerproc import handler, write_step
from tests.routerproc import write_routes as write

REPO = Path(__file__).resolve().parent.parent
PARENT = os.getpid()

ROUTES = """\
routes:
  - name: ping
    on: cluster/event/ping-sent
    do:
      - emit: {channel: cluster/event/pong-sent}
  - name: pong
    on: cluster/event/pong-sent
    do:
      - emit: {channel: cluster/event/ping-sent}
  - name: notify
    on: module/{module}/event/backup-finished
    when: payload.stauts == "ok"
    do:
      - run: ../handlers/h
"""


@pytest.fixture
def table(tmp_path: Path) -> LoadResult:
    """A table whose deep check finds an error (a loop) and warnings (a backup file...)."""
    folder = handler(tmp_path / "handlers" / "h")
    write_step(folder / "20notify~", "exit 0")
    write(tmp_path / "routes.d", "r.yml", ROUTES)
    result = load_routes([tmp_path / "routes.d"], {})
    assert result.ok, result.diagnostics
    return result


def checked(result: LoadResult) -> LoadResult:
    """Return the verdict on ``result`` as `run` gets it: from a child, else checked here."""
    return apart.outcome(apart.start(result, []), result, [])


def in_child_only(action: Any) -> Any:
    """Return a deep check that does ``action()`` in the child and the real one here."""
    real = lint.deep_check

    def check(result: LoadResult, events_dirs: list[Path]) -> Any:
        if os.getpid() == PARENT:
            return real(result, events_dirs)
        return action(result, events_dirs)

    return check


def test_the_child_finds_what_the_check_in_process_finds(table: LoadResult) -> None:
    here = validate(table, [])
    assert any(item.severity == "error" for item in here.diagnostics)
    assert any(item.severity == "warning" for item in here.diagnostics)
    assert checked(table) == here


def test_a_table_that_does_not_load_is_not_checked(tmp_path: Path) -> None:
    write(tmp_path / "routes.d", "r.yml", "routes:\n  - name: x\n")
    result = load_routes([tmp_path / "routes.d"], {})
    assert not result.ok
    assert apart.start(result, []) is None
    assert checked(result) == result


def test_names_passed_over_that_the_child_reported_are_not_named_again(
    table: LoadResult, tmp_path: Path
) -> None:
    backup = str(tmp_path / "handlers" / "h" / "20notify~")
    checked(table)
    assert backup in MENTIONS.named()
    assert not MENTIONS.first(backup)  # the runner would not name it again


def test_a_child_that_fails_leaves_the_check_to_this_process(
    table: LoadResult, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(lint, "deep_check", in_child_only(lambda *_: os._exit(3)))
    with caplog.at_level(logging.WARNING, logger="eventrouter.service.apart"):
        result = checked(table)
    assert result == validate(table, [])
    assert "ended with status 3; checking in this process" in caplog.text


def test_a_child_that_takes_too_long_is_killed(
    table: LoadResult, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(lint, "deep_check", in_child_only(lambda *_: time.sleep(60)))
    checking = apart.start(table, [])
    assert checking is not None
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="eventrouter.service.apart"):
        assert apart.finish(checking, table, patience=0.3) is None
    assert time.monotonic() - started < 10
    assert "took more than 0.3s" in caplog.text
    with pytest.raises(ChildProcessError):  # reaped: no zombie is left behind
        os.waitpid(checking.pid, os.WNOHANG)


def test_the_child_keeps_no_descriptor_of_the_router(
    table: LoadResult, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A step's stdin must see its end of file when the router closes it, child or not.
    read_end, write_end = os.pipe()

    def check(result: LoadResult, events_dirs: list[Path]) -> Any:
        try:
            os.fstat(write_end)
        except OSError:
            return []
        os._exit(4)

    monkeypatch.setattr(lint, "deep_check", in_child_only(check))
    try:
        with caplog.at_level(logging.WARNING, logger="eventrouter.service.apart"):
            result = checked(table)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert caplog.text == ""
    assert result.diagnostics == table.diagnostics  # the child's (empty) findings came back


def test_a_signal_to_the_child_never_reaches_the_routers_handlers(
    table: LoadResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child shares the event loop's wake-up descriptor: a signal it took there would be
    # handled by the router (a second SIGTERM kills the steps at once).
    def check(result: LoadResult, events_dirs: list[Path]) -> Any:
        os.kill(os.getpid(), signal.SIGUSR1)  # at its default now: the child ends
        return []

    monkeypatch.setattr(lint, "deep_check", in_child_only(check))
    heard: list[int] = []

    async def reload_once() -> LoadResult | None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, heard.append, 1)
        try:
            checking = apart.start(table, [])
            assert checking is not None
            done = await asyncio.to_thread(apart.finish, checking, table)
            await asyncio.sleep(0.2)  # a byte on the wake-up descriptor would be read by now
            return done
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)

    assert asyncio.run(reload_once()) is None  # the child was killed by the signal
    assert heard == []


def test_run_never_imports_the_analysis_in_the_routers_process(tmp_path: Path) -> None:
    folder = handler(tmp_path / "handlers" / "h")
    write_step(folder / "20notify~", "exit 0")
    write(tmp_path / "routes.d", "r.yml", ROUTES.replace("ping-sent}", "other-sent}"))
    out = tmp_path / "modules.json"
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from eventrouter.config.loader import load_routes\n"
        "from eventrouter.service import apart\n"
        f"loaded = load_routes([Path({str(tmp_path / 'routes.d')!r})])\n"
        "result = apart.outcome(apart.start(loaded, []), loaded, [])\n"
        "assert result.ok and result.diagnostics, result.diagnostics\n"
        f"json.dump(list(sys.modules), open({str(out)!r}, 'w'))"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60, check=True)
    names = json.loads(out.read_text())
    assert "eventrouter.service.apart" in names
    assert [name for name in names if name.startswith("eventrouter.analysis")] == []


def test_a_child_reaped_elsewhere_leaves_the_check_to_this_process(
    table: LoadResult, caplog: pytest.LogCaptureFixture
) -> None:
    checking = apart.start(table, [])
    assert checking is not None
    deadline = time.monotonic() + 30
    while os.waitpid(checking.pid, os.WNOHANG) == (0, 0):  # reaped here, before finish
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with caplog.at_level(logging.WARNING, logger="eventrouter.service.apart"):
        assert apart.finish(checking, table) is None
    assert "ended with status -1" in caplog.text
