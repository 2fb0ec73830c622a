"""`run --watch`: a saved route file is loaded without a signal, whole, by the rules of SIGHUP."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from eventrouter.cli.main import build_parser
from eventrouter.service.intents import Intents
from eventrouter.service.watch import RouteWatch, describe, is_route_file
from tests.conftest import RedisCli
from tests.routerproc import REPO, Router, clean_env, lines, run_here, wait_for, write_step

UNITS = (
    REPO / "examples" / "systemd" / "eventrouter.service",
    REPO / "examples" / "systemd" / "user" / "eventrouter.service",
)
RELOADED = r"(?:reloaded: \d+ routes|reload failed)"


def _route(name: str, who: str) -> str:
    """Return a route file: a comment of 40 lines, then route ``name`` running ../h/NAME."""
    comment = "".join(
        f"# {n:02d}: route {name} runs ../h/{name} with WHO={who}\n" for n in range(40)
    )
    return (
        f"{comment}routes:\n  - name: {name}\n    on: x/event/{name}-changed\n"
        f"    do: [{{run: ../h/{name}, env: {{WHO: {who}}}}}]\n"
    )


def _watching(router: Router, folder: Path) -> bool:
    """Return True once the router holds an inotify watch on ``folder`` (its fdinfo says)."""
    inode = f"ino:{os.stat(folder).st_ino:x} "
    base = Path(f"/proc/{router.proc.pid}/fdinfo")
    for info in base.iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        if any(line.startswith("inotify wd:") and inode in line for line in text.splitlines()):
            return True
    return False


def _start(
    tmp_path: Path, router_factory: Callable[..., Router], *names: str
) -> tuple[Path, Router]:
    """Start a router with --watch on a folder holding a route file for each of ``names``."""
    folder = tmp_path / "routes.d"
    folder.mkdir()
    for name in ("r", "s", "t"):
        write_step(tmp_path / "h" / name / "10", f'echo "$WHO" >> {tmp_path}/out-{name}')
    for name in names:
        (folder / f"{name}.yml").write_text(_route(name, "v1"))
    router = router_factory("--routes", str(folder), "--watch")
    wait_for(lambda: _watching(router, folder), what="the router watching its routes folder")
    return folder, router


def _acts(redis_cli: RedisCli, out: Path, name: str) -> Callable[[], list[str]]:
    """Return a check that publishes route ``name``'s event until its step has written."""

    def check() -> list[str]:
        found = lines(out)
        if not found:
            redis_cli("PUBLISH", f"x/event/{name}-changed", "{}")
            time.sleep(0.05)
        return found

    return check


def test_a_new_route_file_is_loaded_and_acts(
    tmp_path: Path, router_factory: Callable[..., Router], redis_cli: RedisCli
) -> None:
    folder, router = _start(tmp_path, router_factory, "r")

    (folder / "s.yml").write_text(_route("s", "v1"))

    log = router.wait_log(RELOADED)
    assert "route files changed (s.yml): reloading routes from" in log
    assert "reloaded: 2 routes (+1 -0 ~0)" in log
    assert wait_for(_acts(redis_cli, tmp_path / "out-s", "s"), what="route s") == ["v1"]
    assert router.stop() == 0


def test_a_file_written_slowly_in_place_is_loaded_once_whole(
    tmp_path: Path, router_factory: Callable[..., Router], redis_cli: RedisCli
) -> None:
    folder, router = _start(tmp_path, router_factory, "r")
    new = _route("r", "v2").encode()
    cut = len(new) // 3  # inside the comment: alone, a file without routes

    with (folder / "r.yml").open("r+b") as handle:  # in place: same inode
        handle.truncate(0)
        handle.write(new[:cut])
        handle.flush()
        time.sleep(0.4)  # the writer pauses longer than the watch groups changes, and the quiet
        handle.write(new[cut:])  # rule waits: only knowing the file open keeps it unread

    log = router.wait_log(RELOADED)
    assert re.findall(RELOADED + r".*", log)[0] == "reloaded: 1 routes (+0 -0 ~1)"
    assert wait_for(_acts(redis_cli, tmp_path / "out-r", "r"), what="route r") == ["v2"]
    log = router.log  # a later reload, if the last writes came as a change of their own
    assert all(" -0 " in found for found in re.findall(RELOADED + r".*", log))
    assert "file is empty" not in log
    assert router.stop() == 0


def test_a_rename_over_a_file_is_one_reload_and_signals_still_reload(
    tmp_path: Path, router_factory: Callable[..., Router]
) -> None:
    folder, router = _start(tmp_path, router_factory, "r")
    temporary = folder / ".r.yml.new"  # an editor's way: write aside, rename over
    temporary.write_text(_route("r", "v2"))
    os.replace(temporary, folder / "r.yml")
    router.wait_log(RELOADED)
    (folder / "t.yml").write_text(_route("t", "v1"))  # the next change: the next reload
    log = router.wait_log(RELOADED, count=2)

    assert re.findall(r"daemon: (.*): reloading routes", log) == [
        "route files changed (r.yml)",
        "route files changed (t.yml)",
    ]
    assert re.findall(RELOADED + r".*", log) == [
        "reloaded: 1 routes (+0 -0 ~1)",
        "reloaded: 2 routes (+1 -0 ~0)",
    ]
    router.signal(signal.SIGHUP)
    assert "SIGHUP: reloading" in router.wait_log(RELOADED, count=3)
    done = run_here("reload", "--state-dir", str(router.state))
    assert done.returncode == 0, done.stderr
    assert "reloaded: 2 routes (+0 -0 ~0)" in done.stdout
    assert router.stop() == 0


def test_a_broken_save_keeps_the_old_table(
    tmp_path: Path, router_factory: Callable[..., Router], redis_cli: RedisCli
) -> None:
    folder, router = _start(tmp_path, router_factory, "r")

    (folder / "r.yml").write_text(_route("r", "v2").replace("    on:", "    onn:"))

    log = router.wait_log(RELOADED)
    assert re.search(r"reload failed with \d+ error\(s\); keeping the 1 routes loaded before", log)
    assert "'onn'" in log
    assert wait_for(_acts(redis_cli, tmp_path / "out-r", "r"), what="route r") == ["v1"]
    assert router.stop() == 0


def test_watch_is_off_by_default_and_a_clear_hint_without_watchfiles(tmp_path: Path) -> None:
    assert build_parser().parse_args(["run"]).watch is False
    hide = (
        "import sys; sys.modules['watchfiles'] = None; "
        "from eventrouter.cli.main import main; sys.exit(main())"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide, "run", "--routes", str(tmp_path), "--watch"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "--watch needs the watchfiles package: pip install 'eventrouter[watch]'" in (
        result.stderr
    )


@pytest.mark.parametrize("unit", UNITS, ids=["system", "user"])
def test_the_units_show_watch_as_a_commented_option(unit: Path) -> None:
    found = re.search(r"^#\s*ExecStart=(.*--watch.*)$", unit.read_text(), re.M)
    assert found is not None
    words = shlex.split(found[1].replace("${AGENT_INSTALL_DIR}", "/srv").replace("%S", "/srv"))
    args = build_parser().parse_args(words[1:])
    assert args.command == "run" and args.watch and args.routes


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("r.yml", True),
        ("r.yaml", True),
        (".r.yml", False),  # hidden: an editor's temporary file
        ("r.yml~", False),
        (".r.yml.swp", False),
        ("4913", False),  # vim's probe file
        ("r.yml.new", False),
    ],
)
def test_only_the_files_a_reload_reads_count(name: str, read: bool) -> None:
    assert is_route_file(None, f"/etc/eventrouter/routes.d/{name}") is read


def test_the_reload_names_the_files_that_changed_bounded() -> None:
    paths = [Path(f"/r/{n}.yml") for n in range(7)]
    assert describe(paths[:2]) == "route files changed (0.yml, 1.yml)"
    assert describe(paths) == "route files changed (0.yml, 1.yml, 2.yml, 3.yml, 4.yml and 2 more)"


async def test_requests_coalesce_into_one_reload_named_by_the_first() -> None:
    intents = Intents()
    intents.ask_reload("route files changed (r.yml)")
    intents.ask_reload()

    assert intents.reload and intents.wake.is_set()
    assert intents.reload_by == "route files changed (r.yml)"
    intents.reload = False
    intents.ask_reload()
    assert intents.reload_by == "SIGHUP"


async def test_a_folder_that_cannot_be_watched_is_logged_and_the_watch_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[str] = []
    await asyncio.wait_for(RouteWatch([tmp_path / "gone"], asked.append).run(), 10)

    assert asked == []
    assert "cannot watch the routes folders: No such file or directory" in caplog.text
    assert "reload with SIGHUP instead" in caplog.text
