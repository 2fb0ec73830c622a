"""The shipped systemd units: valid for systemd, and their command lines valid for the CLI."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eventrouter.cli.main import build_parser
from tests.routerproc import REPO

UNITS = {
    "system": REPO / "examples" / "systemd" / "eventrouter.service",
    "user": REPO / "examples" / "systemd" / "user" / "eventrouter.service",
}
BINARY = Path(sys.executable).with_name("eventrouter")


def verify(unit: Path, scope: str, tmp_path: Path, *, keep_path: bool = False) -> str:
    """Return what ``systemd-analyze verify`` says of ``unit``.

    Its ExecStart line, the one line the unit says to change, names our binary's real path
    unless ``keep_path``.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copy = tmp_path / unit.name
    rows = unit.read_text().splitlines(keepends=True)
    index, line = _exec_start(unit.read_text())
    if not keep_path:
        rows[index] = line.replace("/usr/local/bin/eventrouter", str(BINARY), 1) + "\n"
    copy.write_text("".join(rows))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    flags = ["--user"] if scope == "user" else []
    done = subprocess.run(
        [analyze, "verify", "--man=no", *flags, str(copy)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        timeout=60,
        check=False,
    )
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}".strip()


@pytest.mark.parametrize("scope", sorted(UNITS))
def test_systemd_accepts_the_unit_without_a_remark(scope: str, tmp_path: Path) -> None:
    assert verify(UNITS[scope], scope, tmp_path) == "exit 0"


def test_the_verification_reports_a_typo(tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "eventrouter.service"
    broken.parent.mkdir()
    broken.write_text(UNITS["system"].read_text().replace("RestartSec=", "RestartSecs="))
    assert "Unknown key 'RestartSecs'" in verify(broken, "system", tmp_path)


@pytest.mark.parametrize("scope", sorted(UNITS))
def test_the_units_command_lines_parse(scope: str) -> None:
    text = UNITS[scope].read_text()
    line = re.search(r"^ExecStart=(.*)$", text, re.M)
    assert line is not None
    words = shlex.split(line[1].replace("${AGENT_INSTALL_DIR}", "/srv").replace("%S", "/srv"))
    assert words[0] == "/usr/local/bin/eventrouter"
    args = build_parser().parse_args(words[1:])
    assert args.command == "run" and args.routes and args.events_dir


@pytest.mark.parametrize("scope", sorted(UNITS))
def test_the_units_behave_as_a_notify_service_that_reloads(scope: str) -> None:
    settings = dict(
        line.split("=", 1) for line in UNITS[scope].read_text().splitlines() if "=" in line
    )
    assert settings["Type"] == "notify"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["Restart"] == "on-failure"
    assert settings["KillMode"] == "mixed"


def _exec_start(text: str) -> tuple[int, str]:
    """Return the index and the text of the unit's ExecStart line."""
    rows = text.splitlines()
    index = next(i for i, row in enumerate(rows) if row.startswith("ExecStart="))
    return index, rows[index]


@pytest.mark.parametrize("scope", sorted(UNITS))
def test_the_unit_says_the_one_line_to_change_for_the_command(scope: str) -> None:
    rows = UNITS[scope].read_text().splitlines()
    index, line = _exec_start(UNITS[scope].read_text())
    # The comment right above it: pip's place for a command installed as root, and the fix.
    comment = " ".join(row.lstrip("# ") for row in rows[index - 4 : index] if row.startswith("#"))
    assert "/usr/local/bin" in comment and "pip install" in comment, comment
    assert "command -v eventrouter" in comment and "the one line to change" in comment.lower(), (
        comment
    )
    assert line.startswith("ExecStart=/usr/local/bin/eventrouter run ")
    # one line in force names it (a commented alternative, such as --watch, is not in force)
    active = [row for row in rows if not row.startswith("#")]
    assert sum("/usr/local/bin/eventrouter" in row for row in active) == 1


@pytest.mark.parametrize("scope", sorted(UNITS))
def test_as_shipped_only_the_command_path_can_stand_in_the_way(scope: str, tmp_path: Path) -> None:
    # As shipped: fine where the command is installed, else the one complaint is its path.
    said = verify(UNITS[scope], scope, tmp_path, keep_path=True)
    if Path("/usr/local/bin/eventrouter").exists():
        assert said == "exit 0"
    else:
        name = UNITS[scope].name
        expected = f"{name}: Command /usr/local/bin/eventrouter is not executable: No such file"
        assert said == f"exit 1\n{expected} or directory", said
