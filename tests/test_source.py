"""Tests of the source tree itself: what a newcomer reads must lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from tests.routerproc import REPO

SOURCES = sorted(
    path
    for folder in ("eventrouter", "tests", "bench")
    for path in (REPO / folder).rglob("*")
    if path.suffix in (".py", ".md") and path.is_file()
)
#: A pointer into a specification document that is not in the repository.
SPEC_POINTER = re.compile(r"\bSPEC\s*(§|\d)")
HEADER = re.compile(r"\s*# ---")


def test_no_comment_points_to_a_document_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(REPO)}:{number}"
        for path in SOURCES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SPEC_POINTER.search(line)
    ]
    assert found == []


def _empty_headers(path: Path) -> list[str]:
    """Return the section headers of ``path`` that no code follows before the next one."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [
        f"{path.relative_to(REPO)}: {line.strip()}"
        for line, after in zip(lines, [*lines[1:], None], strict=False)
        if HEADER.match(line) and (after is None or HEADER.match(after))
    ]


def test_no_empty_section_header() -> None:
    assert [found for path in SOURCES for found in _empty_headers(path)] == []
