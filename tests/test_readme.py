"""The documentation's shell examples run as shown: every ```sh and ```console command of the
README and of the pages in docs/ that needs no cluster and no running router is run against the
shipped examples, its exit status checked, and its output compared where the page shows it.
Each command it cannot run says why.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.routerproc import REPO, clean_env, run_cli, run_here, write_routes

README = REPO / "README.md"
#: The pages whose commands run: the README and every page of the user guide in docs/.
PAGES = (README, *sorted((REPO / "docs").glob("*.md")))
#: `make` puts the command in .venv/bin; the README says to activate the venv once.
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Example:
    """One command of a page, with the output and exit status it shows, if any."""

    page: str  # relative to the repository
    line: int
    command: str
    output: tuple[str, ...] | None  # console blocks: the lines shown after it
    status: int  # 0 unless a following `echo $?` shows another


def _blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """Return (line of the first line, language, lines) of each ```sh and ```console block."""
    found, lines = [], text.splitlines()
    index = 0
    while index < len(lines):
        opening = re.fullmatch(r"```(sh|console)\s*", lines[index])
        index += 1
        if opening:
            start = index
            while not lines[index].startswith("```"):
                index += 1
            found.append((start + 1, opening.group(1), lines[start:index]))
    return found


def _joined(lines: list[str], start: int) -> tuple[str, int]:
    """Return the command beginning at lines[start], continuation lines joined, and the next."""
    command, index = lines[start], start + 1
    while command.endswith("\\"):
        command = command[:-1] + " " + lines[index].strip()
        index += 1
    return command, index


def _console(page: str, line: int, lines: list[str]) -> list[Example]:
    examples: list[Example] = []
    index = 0
    while index < len(lines):
        if not lines[index].startswith("$ "):
            index += 1
            continue
        command, index = _joined(lines, index)
        output = []
        while index < len(lines) and not lines[index].startswith("$ "):
            output.append(lines[index])
            index += 1
        if command == "$ echo $?" and examples:
            last = examples.pop()
            examples.append(Example(page, last.line, last.command, last.output, int(output[0])))
        else:
            examples.append(Example(page, line + index, command[2:], tuple(output), 0))
    return examples


def _sh(page: str, line: int, lines: list[str]) -> list[Example]:
    examples, index = [], 0
    while index < len(lines):
        start = index
        command, index = _joined(lines, index)
        words = shlex.split(command, comments=True)
        if words:
            examples.append(Example(page, line + start, shlex.join(words), None, 0))
    return examples


def examples(pages: tuple[Path, ...] = PAGES) -> list[Example]:
    """Return every command the pages show in sh and console blocks."""
    found: list[Example] = []
    for path in pages:
        page = path.relative_to(REPO).as_posix()
        for line, language, lines in _blocks(path.read_text()):
            parse = _console if language == "console" else _sh
            found += parse(page, line, lines)
    return found


#: Why a command cannot run here, by what it starts with or holds; checked in order.
NOT_HERE = [
    (r"^make (run|test|cluster)\b", "starts routers, or runs the whole suite (this test too)"),
    (r"^make lint\b|\bpytest\b", "runs the linters or the tests of the checkout"),
    (r"^make lock\b|\buv lock\b", "rewrites uv.lock from the package index"),
    (r"\b(install|systemctl)\b", "installs system units: changes the machine"),
    (r"\s>\s", "writes a file in the current folder"),
    (r"^systemd-analyze\b", "needs systemd's tools (tests/test_systemd.py checks the units)"),
    (
        r"^\S*eventrouter (publish|retry|reload|status|history|failures)\b",
        "needs a running router (embedded or cluster Redis)",
    ),
    (r"\[|\b[A-Z]{2,}\b", "a synopsis with placeholders, not a command"),
    (r"--routes routes\.d\b", "its route files illustrate a message and are not shipped"),
]


def why_not(example: Example) -> str | None:
    """Return why the example cannot run without a cluster or a running router, else None."""
    for pattern, reason in NOT_HERE:
        if re.search(pattern, example.command):
            return reason
    return None


def _params() -> list[object]:
    return [
        pytest.param(item, id=f"{item.page}:{item.line}", marks=_skip(item)) for item in examples()
    ]


def _skip(example: Example) -> list[pytest.MarkDecorator]:
    reason = why_not(example)
    return [pytest.mark.skip(reason=f"{reason}: {example.command}")] if reason else []


def test_the_readme_shows_commands_that_run_here() -> None:
    shown = examples((README,))
    runnable = [item for item in shown if why_not(item) is None]
    assert any(item.output for item in runnable), [item.command for item in shown]


def test_the_pages_of_docs_are_read_too() -> None:
    pages = {item.page for item in examples() if why_not(item) is None}
    assert any(page.startswith("docs/") for page in pages), pages


@pytest.mark.parametrize("example", _params())
def test_readme_command(example: Example) -> None:
    words = shlex.split(example.command)
    assert words[0] in ("eventrouter", ".venv/bin/eventrouter"), example.command
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    done = run_cli(*words[1:], env=env)
    assert done.returncode == example.status, done.stdout + done.stderr
    if example.output:  # as a terminal shows it: the output, then what went to stderr
        shown = (done.stdout + done.stderr).splitlines()
        assert shown == list(example.output), done.stdout + done.stderr


def test_the_check_example_lists_the_allowed_keys_check_prints(tmp_path: Path) -> None:
    """The example's files are not shipped; its typo's message must still be the real one."""
    shown = next(line for item in examples() for line in item.output or () if "'enabld'" in line)
    routes = tmp_path / "routes.d"
    write_routes(routes, "10-mail.yml", """
        routes:
          - name: mail-reload
            on: module/mail1/event/certificate-changed
            enabld: true
            do: [{emit: {channel: module/mail1/event/reload-requested}}]
    """)  # fmt: skip
    done = run_here("check", "--routes", "routes.d", cwd=tmp_path)
    real = next(line for line in done.stdout.splitlines() if "'enabld'" in line)
    assert real.split("; allowed keys: ")[1] == shown.split("; allowed keys: ")[1]
