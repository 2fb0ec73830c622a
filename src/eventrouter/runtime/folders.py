"""Handler folders on disk: which entries are steps, and whether a folder exists.

Apart from the step runner, so that `check`, `explain` and `test` read handler folders as the
daemon does without importing what runs steps (asyncio, the spawner): tests/test_imports.py.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from eventrouter.config.trust import is_ignored


@dataclass(frozen=True)
class StepEntry:
    """One runnable step."""

    name: str
    path: Path


@dataclass(frozen=True)
class SkippedEntry:
    """An entry of a handler directory that will not run, and why."""

    name: str
    reason: str


def unrunnable_reason(path: Path) -> str | None:
    """Return why ``path`` cannot run as a step now, or None when it can."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "dangling symlink" if os.path.islink(path) else "vanished"
    except OSError as exc:
        return reason_of(exc)
    if stat.S_ISDIR(info.st_mode):
        return "is a directory"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if not os.access(path, os.X_OK):
        return "not executable"
    return None


def list_steps(directory: Path) -> tuple[list[StepEntry], list[SkippedEntry]]:
    """List runnable steps in byte-wise name order, and the entries skipped with a warning."""
    with os.scandir(directory) as entries:
        names = sorted((e.name for e in entries if not is_ignored(e.name)), key=os.fsencode)
    steps: list[StepEntry] = []
    skipped: list[SkippedEntry] = []
    for name in names:
        path = directory / name
        reason = unrunnable_reason(path)
        if reason is None:
            steps.append(StepEntry(name, path))
        else:
            skipped.append(SkippedEntry(name, reason))
    return steps, skipped


def reason_of(exc: OSError) -> str:
    """Return the operator's text of an OS error: its strerror, else the whole message."""
    return exc.strerror or str(exc)


def folder_exists(folder: Path) -> bool:
    """Return True when ``folder`` is a directory; a name the OS refuses is not one."""
    try:
        return folder.is_dir()
    except OSError:  # e.g. a name too long for the filesystem: refused, not a traceback
        return False
