"""The verdict on a loaded route table: may it run, and where are its errors.

The one validation path of `check`, of `run` at start and of the daemon on SIGHUP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from eventrouter.analysis import loops, refs
from eventrouter.analysis.lint import deep_check
from eventrouter.config.loader import LoadResult


def validate(result: LoadResult, events_dirs: Sequence[Path]) -> LoadResult:
    """Return ``result`` with the deep check's findings added when the table loads.

    ``result.ok`` then says whether the routes may run: `check` exits 1, `run` does not
    start and a reload keeps the old table on exactly the same errors.
    """
    if not result.ok:  # the deep check needs a table that loads
        return result
    try:
        findings = deep_check(result, list(events_dirs))
    finally:
        forget()
    return dataclasses.replace(result, diagnostics=(*result.diagnostics, *findings))


def forget() -> None:
    """Drop what the deep check kept between routes: globs, syntax trees, scans.

    They spare it work within one table; kept after it, they held about 8 MiB of a running
    router with 10,000 routes, which needs none of them until the next reload.
    """
    loops.forget()
    refs.forget()


def where_errors_are(result: LoadResult, events_dirs: Sequence[Path]) -> str:
    """Return what holds the errors of ``result``: the route files, events folders, or both.

    An error is an events folder's when its file is the folder or lies in it (a handler
    folder of it, a step); any other error is in, or found from, a route file.
    """
    folders: list[str] = []
    routes = False
    for item in result.diagnostics:
        if item.severity != "error":
            continue
        base = next((d for d in events_dirs if _within(item.file, d)), None)
        if base is None:
            routes = True
        elif f"events folder {base}" not in folders:
            folders.append(f"events folder {base}")
    parts = ["the route files"] if routes or not folders else []
    parts += folders
    verb = "has" if parts == folders and len(folders) == 1 else "have"
    return f"{' and '.join(parts)} {verb} errors"


def _within(file: str, folder: Path) -> bool:
    """Return whether ``file`` is ``folder`` or a path inside it, as the findings spell it."""
    base = str(folder).rstrip("/")
    return file == (base or "/") or file.startswith(base + "/")
