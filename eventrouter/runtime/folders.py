"""Handler folders on disk: which entries are steps, and whether a folder exists.

Apart from the step runner, so that `check`, `explain` and `test` read handler folders as the
daemon does without importing what runs steps (asyncio, the spawner): tests/test_imports.py.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from eventrouter.config.trust import is_ignored


@dataclass(frozen=True)
class StepEntry:
    """One runnable step, with what ``stat`` said of it when it was listed."""

    name: str
    #: The step's absolute path, as the runner hands it to the OS.
    file: str
    info: os.stat_result | None = field(default=None, compare=False, repr=False)

    @property
    def path(self) -> Path:
        """Return the step's absolute path as a Path."""
        return Path(self.file)


@dataclass(frozen=True)
class SkippedEntry:
    """An entry of a handler directory that will not run, and why."""

    name: str
    reason: str


def unrunnable_reason(path: Path | str) -> str | None:
    """Return why ``path`` cannot run as a step now, or None when it can."""
    return step_state(path)[0]


def step_state(path: Path | str) -> tuple[str | None, os.stat_result | None]:
    """Return why ``path`` cannot run as a step now (None when it can), and its ``stat``."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return ("dangling symlink" if os.path.islink(path) else "vanished"), None
    except OSError as exc:
        return reason_of(exc), None
    if stat.S_ISDIR(info.st_mode):
        return "is a directory", info
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file", info
    if not os.access(path, os.X_OK):
        return "not executable", info
    return None, info


def list_steps(directory: Path) -> tuple[list[StepEntry], list[SkippedEntry]]:
    """List runnable steps in byte-wise name order, and the entries skipped with a warning."""
    base = os.path.abspath(directory)
    names = sorted([name for name in os.listdir(base) if not is_ignored(name)], key=os.fsencode)
    steps: list[StepEntry] = []
    skipped: list[SkippedEntry] = []
    for name in names:
        file = os.path.join(base, name)
        reason, info = step_state(file)
        if reason is None:
            steps.append(StepEntry(name, file, info))
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
