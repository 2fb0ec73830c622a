"""Relative links in the README and in docs/ lead somewhere: to a file or folder of the
repository that exists and, with a ``#fragment``, to a heading the target page has (as GitHub
makes its anchors), so moving or renaming a section cannot leave a dead link behind.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.routerproc import REPO

PAGES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
#: An inline link or image: [text](target "title"); the text may hold one level of brackets.
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", re.M)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
#: A line anchor, which GitHub gives every file that is not rendered Markdown.
_LINE_ANCHOR = re.compile(r"L\d+(-L\d+)?")


def _prose(text: str) -> list[str]:
    """Return the lines of ``text`` with code blocks emptied and code spans blanked."""
    lines, fence = [], ""
    for line in text.splitlines():
        opening = _FENCE.match(line)
        if fence:
            if opening and opening.group(1) == fence:
                fence = ""
            lines.append("")
        elif opening:
            fence = opening.group(1)
            lines.append("")
        else:
            lines.append(_CODE_SPAN.sub(lambda span: " " * len(span.group(0)), line))
    return lines


def slug(heading: str) -> str:
    """Return the anchor GitHub gives a heading (before numbering repeated ones)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Return every #fragment that leads somewhere in the Markdown page."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fence = ""
    for line in page.read_text().splitlines():
        opening = _FENCE.match(line)
        if opening and (not fence or opening.group(1) == fence):
            fence = "" if fence else opening.group(1)
            continue
        heading = None if fence else _HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(f"{base}-{count}" if count else base)
        found.update(_HTML_ANCHOR.findall(line))
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """Return (line, target) of every link of the page that stays in the repository."""
    found = []
    for number, line in enumerate(_prose(page.read_text()), 1):
        for target in [*_LINK.findall(line), *_REFERENCE.findall(line)]:
            parts = urlsplit(target)
            if not parts.scheme and not parts.netloc:
                found.append((number, target))
    return found


def broken(page: Path, root: Path = REPO) -> list[str]:
    """Return one message per relative link of ``page`` that leads nowhere."""
    messages = []
    for number, target in links(page):
        where = f"{page.relative_to(root)}:{number}: {target}"
        path, _, fragment = target.partition("#")
        file = (page.parent / unquote(path)).resolve() if path else page.resolve()
        if not file.is_relative_to(root.resolve()):
            messages.append(f"{where}: leads out of the repository")
        elif not file.exists():
            messages.append(f"{where}: {file.relative_to(root.resolve())} does not exist")
        elif not fragment:
            continue
        elif file.suffix == ".md":
            if unquote(fragment) not in anchors(file):
                messages.append(f"{where}: no heading #{fragment} in {file.name}")
        elif not _LINE_ANCHOR.fullmatch(fragment):
            messages.append(f"{where}: #{fragment} is not a line of {file.name}")
    return messages


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    assert links(page) or page.name != "README.md", "the README links to its pages"
    assert broken(page) == []


def test_the_guide_has_pages_in_docs() -> None:
    assert len(PAGES) > 1, "docs/*.md is empty"


def test_a_dead_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text(
        "# Other\n\n## `runs_on`: where a route acts\n\n## Connections (NS8 environment)\n"
        "\n## Notes\n\n## Notes\n\n```sh\n# not a heading\n```\n"
    )
    (tmp_path / "unit.service").write_text("[Unit]\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Guide\n\n"
        "[fine](docs/other.md#runs_on-where-a-route-acts), [fine](docs/other.md#notes-1),\n"
        "[fine](#guide) [fine](unit.service#L1) [fine](<docs/other.md>) ![fine](docs/)\n"
        "[fine](docs/other.md#connections-ns8-environment) [web](https://example.org/x.md)\n"
        "`[code](nosuch.md)`\n\n```\n[code](nosuch.md)\n```\n\n"
        "[gone](docs/nosuch.md)\n"
        "[gone](docs/other.md#connections)\n"
        "[gone](docs/other.md#not-a-heading)\n"
        "[gone](#nosuch) [gone](docs/other.md#notes-2)\n"
        "[out](../outside.md)\n"
        "[ref]: docs/missing.md\n"
    )
    assert broken(page, root=tmp_path) == [
        "README.md:12: docs/nosuch.md: docs/nosuch.md does not exist",
        "README.md:13: docs/other.md#connections: no heading #connections in other.md",
        "README.md:14: docs/other.md#not-a-heading: no heading #not-a-heading in other.md",
        "README.md:15: #nosuch: no heading #nosuch in README.md",
        "README.md:15: docs/other.md#notes-2: no heading #notes-2 in other.md",
        "README.md:16: ../outside.md: leads out of the repository",
        "README.md:17: docs/missing.md: docs/missing.md does not exist",
    ]
