"""What a new user trips on in the first ten minutes (issue 10, "What a newcomer trips on")."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.routerproc import REPO, Router, run_cli


def test_check_with_no_routes_and_no_events_folder_is_an_error(tmp_path: Path) -> None:
    done = run_cli("check", cwd=tmp_path)
    assert done.returncode == 1
    assert "nothing to check" in done.stderr
    assert "routes.d" in done.stderr  # the folder it looked in


def test_check_of_an_empty_folder_named_explicitly_names_it(tmp_path: Path) -> None:
    done = run_cli("check", "--routes", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert f"no route files in {tmp_path}" in done.stderr


def test_explain_says_no_routes_were_loaded(tmp_path: Path) -> None:
    done = run_cli(
        "explain", "cluster/event/module-added", '{"module": "a", "node": 1}', cwd=tmp_path
    )
    assert done.returncode == 0
    assert "no routes loaded" in done.stdout
    assert "routes.d" in done.stdout


def test_run_with_nothing_to_route_warns_naming_the_folders(tmp_path: Path, redis_url: str) -> None:
    router = Router(
        ["run", "--redis", redis_url, "--state-dir", str(tmp_path / "s")], tmp_path / "log"
    )
    try:
        router.wait_log(
            r"WARNING .*nothing to route: no route files in routes\.d, and no --events-dir"
        )
    finally:
        router.close()


def test_the_licence_is_an_spdx_string() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "GPL-3.0-or-later"
