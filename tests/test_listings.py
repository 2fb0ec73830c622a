"""A handler folder's listing is reused while the folder is unchanged (``handlers.Listings``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from eventrouter.config import handlers
from eventrouter.config.handlers import Listings
from eventrouter.runtime.steps import StepResult, StepRunner
from tests.test_steps import run, runner_env, script


def settled(folder: Path, seconds: float = 10.0) -> os.stat_result:
    """Date the folder's last change ``seconds`` back; return its ``stat``."""
    past = time.time_ns() - int(seconds * 1e9)
    os.utime(folder, ns=(past, past))
    # utime sets the change time (ctime) to now: the listing counts from the clock below.
    return os.stat(folder)


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each folder ``handlers.scan`` lists."""
    listed: list[str] = []
    real = handlers.scan

    def scan(directory: Path | str) -> handlers.Listing:
        listed.append(os.fspath(directory))
        return real(directory)

    monkeypatch.setattr(handlers, "scan", scan)
    return listed


def later(seconds: float) -> Listings:
    """Return listings whose clock runs ``seconds`` ahead of the real one."""
    return Listings(clock=lambda: time.time_ns() + int(seconds * 1e9))


def test_a_settled_folder_is_listed_once(tmp_path: Path, scans: list[str]) -> None:
    script(tmp_path, "10first", "exit 0")
    listings = later(Listings.SETTLED + 1)
    info = settled(tmp_path)
    first = listings.get(tmp_path, info)
    assert listings.get(tmp_path, os.stat(tmp_path)) is first
    assert [step.name for step in first.steps] == ["10first"]
    assert scans == [str(tmp_path)]


def test_a_folder_changed_lately_is_listed_at_every_run(tmp_path: Path, scans: list[str]) -> None:
    script(tmp_path, "10first", "exit 0")
    listings = later(0)  # the folder changed just now: its time may not move at the next change
    listings.get(tmp_path, os.stat(tmp_path))
    listings.get(tmp_path, os.stat(tmp_path))
    assert scans == [str(tmp_path)] * 2


def test_an_entry_added_removed_or_renamed_is_seen(tmp_path: Path) -> None:
    script(tmp_path, "10first", "exit 0")
    listings = later(Listings.SETTLED + 1)
    listings.get(tmp_path, settled(tmp_path))
    script(tmp_path, "20second", "exit 0")
    assert [s.name for s in listings.get(tmp_path, os.stat(tmp_path)).steps] == [
        "10first",
        "20second",
    ]
    listings.get(tmp_path, settled(tmp_path))
    (tmp_path / "10first").rename(tmp_path / "30first")
    (tmp_path / "20second").unlink()
    assert [s.name for s in listings.get(tmp_path, os.stat(tmp_path)).steps] == ["30first"]


def test_a_change_that_kept_the_folders_time_is_seen(tmp_path: Path) -> None:
    # The racy case, made on purpose: the folder's modification time is put back after a
    # change; its change time (which utime cannot set) still tells.
    script(tmp_path, "10first", "exit 0")
    listings = later(Listings.SETTLED + 1)
    before = settled(tmp_path)
    listings.get(tmp_path, before)
    script(tmp_path, "20second", "exit 0")
    os.utime(tmp_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(tmp_path)
    assert after.st_mtime_ns == before.st_mtime_ns
    assert [s.name for s in listings.get(tmp_path, after).steps] == ["10first", "20second"]


def test_another_folder_at_the_same_path_is_listed_afresh(tmp_path: Path) -> None:
    folder = tmp_path / "h"
    script(folder, "10first", "exit 0")
    listings = later(Listings.SETTLED + 1)
    info = settled(folder)
    listings.get(folder, info)
    folder.rename(tmp_path / "old")
    script(folder, "10other", "exit 0")
    os.utime(folder, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert [s.name for s in listings.get(folder, os.stat(folder)).steps] == ["10other"]


async def test_the_runner_sees_a_step_removed_from_a_settled_folder(
    tmp_path: Path, scans: list[str]
) -> None:
    handler = tmp_path / "h"
    script(handler, "10first", f'echo 1 >> "{tmp_path}/ran"')
    script(handler, "20second", f'echo 2 >> "{tmp_path}/ran"')
    settled(handler)
    runner = StepRunner(base_env=runner_env())
    runner.listings = later(Listings.SETTLED + 1)
    for _ in range(2):
        result = await run(runner, handler)
        assert result.steps == (StepResult("10first", 0), StepResult("20second", 0))
    assert scans == [str(handler)]  # the second run reused the listing
    (handler / "20second").unlink()
    result = await run(runner, handler)
    assert result.steps == (StepResult("10first", 0),)
    assert (tmp_path / "ran").read_text().split() == ["1", "2", "1", "2", "1"]
