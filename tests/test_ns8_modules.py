"""The real NS8 modules' reactions as routes (examples/ns8-modules): their route tests pass,
and pass the same whatever the shell's environment holds (route tests are hermetic)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.routerproc import REPO, clean_env, run_here

MODULES = REPO / "examples" / "ns8-modules"
FOLDERS = sorted(path.parent for path in MODULES.glob("*/routes.d"))


def test_at_least_twelve_modules_have_routes_and_route_tests() -> None:
    with_tests = [
        folder for folder in FOLDERS if list((folder / "routes.d" / "tests").glob("*.yml"))
    ]
    assert len(with_tests) >= 12 and with_tests == FOLDERS


def shell_of_a_module(tmp_path: Path) -> dict[str, str]:
    """Return a shell environment full of another module's values, file included."""
    state = tmp_path / "state"
    state.mkdir()
    values = {
        "NODE_ID": "7",
        "AGENT_ID": "module/other9",
        "MODULE_ID": "other9",
        "POSTFIX_ORIGIN": "example.org",
        "POSTFIX_HOSTNAME": "mail.example.org",
        "LDAP_DOMAIN": "example.org",
        "MAIL_SERVER": "2a5e1f0c-mail1",
        "MAIL_MODULE_UUID": "2a5e1f0c-mail1",
        "HOSTNAME": "dc1.ad.example.org",
    }
    (state / "environment").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return clean_env(AGENT_STATE_DIR=str(state), **{k: "wrong" for k in values})


@pytest.mark.parametrize("folder", FOLDERS, ids=[folder.name for folder in FOLDERS])
def test_route_tests_pass_whatever_the_shell_holds(folder: Path, tmp_path: Path) -> None:
    routes = str(folder / "routes.d")
    empty = run_here("test", "--routes", routes, env={})
    full = run_here("test", "--routes", routes, env=shell_of_a_module(tmp_path))

    for result in (empty, full):
        assert result.returncode == 0, result.stdout + result.stderr
        summary = re.fullmatch(r"(\d+) passed, 0 failed", result.stdout.strip().splitlines()[-1])
        assert summary is not None and int(summary[1]) > 0, result.stdout
    assert empty.stdout == full.stdout


def test_the_examples_scripts_parse() -> None:
    # They run on NS8 only (the agent library), so they are compiled here, not run.
    scripts = [path for path in MODULES.glob("*/handlers/*/*") if path.is_file()]
    assert scripts
    for script in scripts:
        text = script.read_text()
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        if text.startswith("#!/usr/bin/env python3"):
            compile(text, str(script), "exec")
        else:
            assert text.startswith("#!/bin/sh"), script
            assert run_sh_syntax(script) == 0, script


def run_sh_syntax(script: Path) -> int:
    """Return the exit status of ``sh -n`` on ``script`` (syntax only)."""
    return subprocess.run(["sh", "-n", str(script)], check=False, timeout=30).returncode
