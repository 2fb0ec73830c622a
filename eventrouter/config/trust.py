"""Whether the router may trust a file or folder that decides what it runs.

As sudo does with sudoers and systemd with unit files: when the router runs as root, a route
file, routes folder, handler folder or step that group or others can write, or that another
user owns, is refused, since whoever can change it chooses what runs as root. Not as root, the
same findings are warnings, and files of the router's own user are fine. A symlink is judged
by its target (``os.stat`` follows it), which is what gets read or run. Which entries of a
handler folder are judged as steps is ``handlers``'s.
"""

from __future__ import annotations

import os
import pwd
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Distrust:
    """Why a path is not to be trusted, and the commands that fix it."""

    path: Path
    why: str
    fix: str
    #: True when running as root: the path is refused, not only warned about.
    refused: bool

    @property
    def severity(self) -> Literal["error", "warning"]:
        """Return ``error`` when refused, else ``warning``."""
        return "error" if self.refused else "warning"

    def describe(self, what: str) -> str:
        """Return an operator's message naming ``what`` the path is, the risk and the fix."""
        verdict = "refused" if self.refused else "it would be refused when running as root"
        return (
            f"{what} {self.path} {self.why}: whoever can change it chooses what the router "
            f"runs; {verdict} (fix: {self.fix})"
        )


def effective_uid(euid: int | None = None) -> int:
    """Return ``euid``, or the process's effective user id when None."""
    return os.geteuid() if euid is None else euid


def _owner(uid: int) -> str:
    try:
        return f"{uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return str(uid)


def distrust(path: Path | str, euid: int | None = None) -> Distrust | None:
    """Return why ``path`` (its target, for a symlink) is not to be trusted, or None.

    A path that cannot be read is left to the callers, which report it in their own words.
    """
    try:
        info = os.stat(path)
    except OSError:
        return None
    return judge(path, info, effective_uid(euid))


def judge(path: Path | str, info: os.stat_result, euid: int) -> Distrust | None:
    """Return why a file with this ``stat`` result is not to be trusted, or None."""
    problems, fixes = [], []
    writers = [
        who
        for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
        if info.st_mode & bit
    ]
    # Root owns what it trusts; another user may also trust their own files.
    foreign = info.st_uid not in (0, euid)
    if not writers and not foreign:
        return None  # the usual case, checked for every step run: nothing more to build
    quoted = shlex.quote(str(path))
    if writers:
        mode = stat.S_IMODE(info.st_mode)
        problems.append(f"is writable by {' and '.join(writers)} (mode {mode:04o})")
        fixes.append(f"chmod go-w {quoted}")
    if foreign:
        problems.append(f"is owned by user {_owner(info.st_uid)}")
        fixes.append(f"chown root {quoted}")
    return Distrust(Path(path), " and ".join(problems), "; ".join(fixes), refused=euid == 0)
