"""Files the router trusts: as root, what group, others or another user can change is refused."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from eventrouter.analysis.lint import deep_check
from eventrouter.analysis.verdict import where_errors_are
from eventrouter.config.handlers import handler_distrust
from eventrouter.config.loader import LoadResult, load_routes
from eventrouter.config.trust import distrust
from eventrouter.errors import Diagnostic
from eventrouter.runtime.steps import StepRunner
from tests.conftest import RedisCli
from tests.routerproc import Router, run_cli, run_here, wait_for, write_routes, write_step

#: A user other than root and the router's, owning files in these tests.
OTHER = 1000

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")


def _route_file(folder: Path, handler: str = "h") -> Path:
    return write_routes(
        folder,
        "r.yml",
        f"routes:\n  - name: r\n    on: x/event/y\n    do:\n      - run: {handler}\n",
    )


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Return a routes folder holding r.yml, which runs h/ and its step h/10step."""
    folder = tmp_path / "routes.d"
    step = write_step(folder / "h" / "10step", f"touch {tmp_path}/ran")
    return folder, _route_file(folder), step


def _findings(result: LoadResult, path: Path) -> list[Diagnostic]:
    return [d for d in result.diagnostics if str(path) in d.message]


# --- the judgement -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        (0o664, "is writable by group (mode 0664)"),
        (0o646, "is writable by others (mode 0646)"),
        (0o666, "is writable by group and others (mode 0666)"),
    ],
)
def test_writable_by_group_or_others_is_refused_as_root(
    mode: int, words: str, tmp_path: Path
) -> None:
    path = tmp_path / "f"
    path.write_text("")
    path.chmod(mode)

    doubt = distrust(path, euid=0)

    assert doubt is not None and doubt.refused and doubt.severity == "error"
    message = doubt.describe("route file")
    assert f"route file {path} {words}" in message
    assert f"refused (fix: chmod go-w {path})" in message


def test_root_owned_and_not_writable_by_others_is_trusted(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    path.chmod(0o755)

    assert distrust(path, euid=0) is None
    assert distrust(tmp_path, euid=0) is None  # a 0700 folder of root's


@needs_root
def test_owned_by_another_user_is_refused_as_root(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    os.chown(path, OTHER, -1)

    doubt = distrust(path, euid=0)

    assert doubt is not None and doubt.refused
    assert f"is owned by user {OTHER}" in doubt.describe("step")
    assert f"chown root {path}" in doubt.fix


@needs_root
def test_not_as_root_doubts_are_warnings_and_the_own_user_is_fine(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.write_text("")
    os.chown(mine, OTHER, -1)
    theirs = tmp_path / "theirs"
    theirs.write_text("")
    os.chown(theirs, OTHER + 1, -1)
    writable = tmp_path / "writable"
    writable.write_text("")
    writable.chmod(0o664)

    assert distrust(mine, euid=OTHER) is None
    assert distrust(tmp_path, euid=OTHER) is None  # root's files are fine for anyone
    for path in (theirs, writable):
        doubt = distrust(path, euid=OTHER)
        assert doubt is not None and not doubt.refused and doubt.severity == "warning"
        assert "it would be refused when running as root" in doubt.describe("step")


def test_a_symlink_is_judged_by_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("")
    target.chmod(0o666)
    link = tmp_path / "link"
    link.symlink_to(target)  # a symlink's own mode (0777) means nothing

    doubt = distrust(link, euid=0)

    assert doubt is not None and "writable by group and others" in doubt.why
    target.chmod(0o644)
    assert distrust(link, euid=0) is None


def test_handler_folder_and_its_steps_are_judged_hidden_names_are_not(tmp_path: Path) -> None:
    folder = tmp_path / "h"
    good = write_step(folder / "10good", "exit 0")
    bad = write_step(folder / "20bad", "exit 0")
    bad.chmod(0o775)
    write_step(folder / ".hidden", "exit 0").chmod(0o777)
    write_step(folder / "30old~", "exit 0").chmod(0o777)
    folder.chmod(0o777)

    found = {(what, doubt.path) for what, doubt in handler_distrust(folder, euid=0)}

    assert found == {("handler folder", folder), ("step", bad)}
    assert good.exists()


# --- loading: check, run and reload refuse ---------------------------------------------------


@pytest.mark.parametrize("target", ["route file", "routes folder", "handler folder", "step"])
def test_loading_as_root_refuses_what_others_can_change(target: str, tmp_path: Path) -> None:
    folder, routes, step = _setup(tmp_path)
    path = {"route file": routes, "routes folder": folder}.get(target, step)
    path = step.parent if target == "handler folder" else path
    path.chmod(path.stat().st_mode | 0o002)

    result = load_routes([folder], euid=0)

    [finding] = _findings(result, path)
    assert finding.severity == "error" and not result.ok
    assert f"{target} {path} is writable by others" in finding.message
    assert f"chmod go-w {path}" in finding.message
    line = {"route file": 1, "routes folder": 0}.get(target, 5)  # the run: line
    assert (finding.file, finding.line) == (str(routes if line == 5 else path), line)


def test_a_refused_route_file_is_not_read(tmp_path: Path) -> None:
    folder, routes, _ = _setup(tmp_path)
    routes.write_text("routes: [this is not read\n")
    routes.chmod(0o666)

    result = load_routes([folder], euid=0)

    assert [d.message.split(" ")[0] for d in result.diagnostics] == ["route"]


def test_not_as_root_the_same_findings_are_warnings_and_routes_load(tmp_path: Path) -> None:
    folder, routes, step = _setup(tmp_path)
    for path in (folder, routes, step.parent, step):
        path.chmod(path.stat().st_mode | 0o020)

    result = load_routes([folder], euid=OTHER)

    assert result.ok and [route.name for route in result.routes] == ["r"]
    assert sorted(d.severity for d in result.diagnostics) == ["warning"] * 4


@needs_root
def test_cli_check_reports_each_with_the_fix(tmp_path: Path) -> None:
    folder, routes, step = _setup(tmp_path)
    os.chown(routes, OTHER, -1)
    events = tmp_path / "events"
    convention = write_step(events / "module-added" / "10step", "exit 0")
    convention.chmod(0o757)
    events.chmod(0o777)

    done = run_here("check", "--routes", str(folder), "--events-dir", str(events))

    assert done.returncode == 1
    assert f"{routes}:1: error: route file {routes} is owned by user {OTHER}" in done.stdout
    assert f"(fix: chown root {routes})" in done.stdout
    step.chmod(0o757)
    os.chown(routes, 0, -1)

    done = run_here("check", "--routes", str(folder), "--events-dir", str(events))

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(f"{routes}:5: error: step {step} is writable by others" in x for x in lines)
    step.chmod(0o755)  # the deep check, which judges events folders, needs routes that load

    done = run_here("check", "--routes", str(folder), "--events-dir", str(events))

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(f"{events}:0: error: events folder {events} is writable" in x for x in lines)
    assert any(f"{convention}:0: error: step {convention} is writable" in x for x in lines)
    assert all("chmod go-w" in line for line in lines if ": error: " in line)


@needs_root
def test_cli_run_refuses_to_start(tmp_path: Path) -> None:
    folder, routes, _ = _setup(tmp_path)
    routes.chmod(0o664)

    # Refused before any connection: the address is never used.
    done = run_cli("run", "--routes", str(folder), "--redis", "redis://127.0.0.1:9", timeout=20)

    assert done.returncode == 1
    assert f"route file {routes} is writable by group" in done.stdout + done.stderr
    assert "not starting" in done.stderr


@needs_root
def test_cli_run_refusing_an_events_folder_names_it(tmp_path: Path) -> None:
    events = tmp_path / "events"
    write_step(events / "module-added" / "10step", "exit 0")
    events.chmod(0o777)
    (tmp_path / "routes.d").mkdir()

    done = run_cli(
        "run", "--routes", str(tmp_path / "routes.d"), "--events-dir", str(events),
        "--redis", "redis://127.0.0.1:9", timeout=20,
    )  # fmt: skip

    assert done.returncode == 1
    assert f"events folder {events} is writable by group and others" in done.stdout + done.stderr
    last = done.stderr.splitlines()[-1]
    assert (
        last == f"eventrouter run: events folder {events} has errors (listed above); not starting"
    )


def test_the_refusal_names_what_holds_the_errors(tmp_path: Path) -> None:
    events, other = tmp_path / "events", tmp_path / "events2"
    step = events / "module-added" / "10step"

    def where(*files: Path) -> str:
        found = [Diagnostic(str(f), 0, "error", "refused") for f in files]
        found.append(Diagnostic(str(tmp_path / "r.yml"), 1, "warning", "only a warning"))
        return where_errors_are(LoadResult((), tuple(found)), [events, other])

    assert where(step) == f"events folder {events} has errors"
    assert (
        where(events, other / "x")
        == f"events folder {events} and events folder {other} have errors"
    )
    assert where(tmp_path / "r.yml", events) == (
        f"the route files and events folder {events} have errors"
    )
    assert where(tmp_path / "events-other" / "x") == "the route files have errors"


# --- at run time: a step changed after the load is not run -----------------------------------


def _run(folder: Path, euid: int) -> tuple[bool, str | None]:
    async def main() -> tuple[bool, str | None]:
        runner = StepRunner(euid=euid)
        result = await runner.run_handler(
            folder,
            payload=b"{}",
            env={},
            event_name="y",
            event_source="x",
            timeout=5,
            tag="r [x/event/y]",
        )
        return result.ok, result.error

    return asyncio.run(main())


def test_a_step_others_can_change_is_not_run_as_root(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = write_step(tmp_path / "h" / "10first", f"touch {tmp_path}/first")
    target = write_step(tmp_path / "elsewhere", f"touch {tmp_path}/second")
    target.chmod(0o777)
    (tmp_path / "h" / "20second").symlink_to(target)
    write_step(tmp_path / "h" / "30third", f"touch {tmp_path}/third")

    ok, error = _run(first.parent, euid=0)

    assert not ok and error is not None
    assert (tmp_path / "first").exists()
    assert not (tmp_path / "second").exists() and not (tmp_path / "third").exists()
    assert f"step {tmp_path / 'h' / '20second'} is writable by group and others" in error
    assert "chmod go-w" in error
    assert any(
        record.levelname == "ERROR"
        and "r [x/event/y]" in record.getMessage()
        and "refused" in record.getMessage()
        for record in caplog.records
    )


def test_a_handler_folder_others_can_change_is_not_run_as_root(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    step = write_step(tmp_path / "h" / "10first", f"touch {tmp_path}/ran")
    step.parent.chmod(0o777)

    ok, error = _run(step.parent, euid=0)

    assert not ok and error is not None and "handler folder" in error
    assert not (tmp_path / "ran").exists()
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"r [x/event/y] {error}"
    ]


def test_not_as_root_such_a_step_runs_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    step = write_step(tmp_path / "h" / "10first", f"touch {tmp_path}/ran")
    step.chmod(0o777)

    ok, _ = _run(step.parent, euid=OTHER)

    assert ok and (tmp_path / "ran").exists()
    assert any(
        r.levelname == "WARNING" and "would be refused when running as root" in r.getMessage()
        for r in caplog.records
    )


def test_deep_check_judges_events_folders_with_the_given_user(tmp_path: Path) -> None:
    events = tmp_path / "events"
    step = write_step(events / "module-added" / "10step", "exit 0")
    step.chmod(0o775)

    as_root = deep_check(LoadResult((), ()), [events], euid=0)
    not_root = deep_check(LoadResult((), ()), [events], euid=OTHER)

    assert [(d.file, d.severity) for d in as_root] == [(str(step), "error")]
    assert [(d.file, d.severity) for d in not_root] == [(str(step), "warning")]


@needs_root
def test_the_daemon_refuses_a_step_changed_after_start_and_a_reload_others_can_change(
    tmp_path: Path, router_factory: Callable[..., Router], redis_cli: RedisCli
) -> None:
    folder, routes, step = _setup(tmp_path)
    router = router_factory("--routes", str(folder))
    step.chmod(0o757)

    redis_cli("PUBLISH", "x/event/y", "{}")

    log = router.wait_log(r"refused \(fix: chmod go-w")
    assert not (tmp_path / "ran").exists()
    [line] = [x for x in log.splitlines() if "refused (fix" in x]
    assert "ERROR" in line and "r [x/event/y]" in line and f"step {step} is writable" in line
    step.chmod(0o755)
    routes.write_text(routes.read_text().replace("x/event/y", "x/event/other"))
    routes.chmod(0o666)

    router.signal(signal.SIGHUP)

    log = router.wait_log("reload failed")
    assert f"{routes}:1: error: route file {routes} is writable by group and others" in log
    redis_cli("PUBLISH", "x/event/y", "{}")
    wait_for((tmp_path / "ran").exists, what="the old route, kept")
    assert router.stop() == 0
