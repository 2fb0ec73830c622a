"""Handler folders on disk: what in one may run, and whether the router may trust it.

The one answer for the daemon's step runner and for `check`, `explain` and `test`, which read
handler folders as the daemon does without importing what runs steps (asyncio, the spawner):
tests/test_imports.py. Which names are steps (not hidden, not an editor or package backup),
which of them can run now, what the kernel would refuse to start, and which a root router
refuses (the rule itself, for any file, is ``trust``'s).

A run lists its folder once, when it starts (``scan``: names only, no ``stat``), and decides
each step when its turn comes (``step_state``), as NS8's agent does: an earlier step may
remove a later one, or make it executable. The daemon reuses a folder's listing while the
folder is unchanged (``Listings``).
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from eventrouter.config.trust import Distrust, distrust, effective_uid

#: Control characters, shown escaped when a message quotes a file's bytes.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
#: How much of a file the kernel reads to choose how to run it (BINPRM_BUF_SIZE).
HEAD_BYTES = 256

#: Editor and package-manager leftovers by suffix, never run, and what each is.
_BACKUP_KINDS = {
    "~": "an editor backup (*~)",
    ".swp": "an editor swap file (*.swp)",
    ".orig": "a backup left by patch or a merge tool (*.orig)",
    ".rej": "the rejected hunks of a patch (*.rej)",
    ".rpmnew": "a package manager's copy (*.rpmnew)",
    ".rpmsave": "a package manager's copy (*.rpmsave)",
}
#: Suffixes of editor and package-manager leftovers, never run.
BACKUP_SUFFIXES = tuple(_BACKUP_KINDS)


def is_ignored(name: str) -> bool:
    """Return whether ``name`` is hidden or an editor/package backup, never a step."""
    return name.startswith(".") or name.endswith(BACKUP_SUFFIXES) or ".dpkg-" in name


def ignored_kind(name: str) -> str | None:
    """Return what an ignored ``name`` is (``an editor backup (*~)``), or None when it is not."""
    for suffix in BACKUP_SUFFIXES:
        if name.endswith(suffix):
            return _BACKUP_KINDS[suffix]
    if ".dpkg-" in name:
        return "a package manager's copy (*.dpkg-*)"
    if name.startswith("."):
        return "a hidden name (leading .)"
    return None


@dataclass(frozen=True)
class StepEntry:
    """One entry of a handler folder that is a step when its turn comes."""

    name: str
    #: The step's absolute path, as the runner hands it to the OS.
    file: str

    @property
    def path(self) -> Path:
        """Return the step's absolute path as a Path."""
        return Path(self.file)


@dataclass(frozen=True)
class SkippedEntry:
    """An entry of a handler directory that will not run, and why."""

    name: str
    reason: str
    #: A hidden name or an editor or package backup: never a step, whatever it holds.
    passed_over: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Listing:
    """A handler folder as a run starts: its steps, in byte-wise order, and the rest."""

    #: The folder's absolute path.
    base: str
    steps: list[StepEntry]
    #: Hidden names and editor or package backups (``is_ignored``).
    passed_over: list[str]
    #: Entries that are directories themselves (not symlinks to one).
    folders: list[str]


def scan(directory: Path | str) -> Listing:
    """List a handler folder by name only; raise OSError when it cannot be listed."""
    base = os.path.abspath(directory)
    steps: list[StepEntry] = []
    passed: list[str] = []
    folders: list[str] = []
    # scandir's file type needs no stat (but for the rare file system that gives none).
    with os.scandir(base) as entries:
        for entry in entries:
            name = entry.name
            if is_ignored(name):
                passed.append(name)
            elif entry.is_dir(follow_symlinks=False):
                folders.append(name)
            else:
                steps.append(StepEntry(name, entry.path))
    steps.sort(key=lambda step: os.fsencode(step.name))
    return Listing(base, steps, sorted(passed, key=os.fsencode), folders)


class Listings:
    """Listings of handler folders, each reused while its folder is unchanged.

    Adding, removing or renaming an entry sets the folder's modification time, so a listing
    taken with the folder at one ``(device, inode, mtime, ctime)`` holds while the folder
    still has it. One exception: a change within the same tick of the file system's clock
    as the one the listing saw gives the same times. So a listing is kept only when the
    folder's last change is older than ``SETTLED`` seconds (a folder being filled is listed
    at every run, as without this). What each entry is (executable, trusted) is looked at
    when its turn comes, as before: only the names are kept. Timed inside the router at 100
    events/s, the stretch from a run's start to its first step's went from 73 to 19-25 µs.
    """

    #: How old a folder's last change must be for its listing to be kept, in seconds.
    SETTLED = 2.0
    #: More folders than this start the record afresh.
    LIMIT = 1024

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        self._known: dict[str, tuple[tuple[int, int, int, int], Listing]] = {}

    def get(self, directory: Path | str, info: os.stat_result) -> Listing:
        """Return the listing of ``directory``, whose ``stat`` is ``info``; raise OSError."""
        where = os.fspath(directory)
        key = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
        known = self._known.get(where)
        if known is not None and known[0] == key:
            return known[1]
        listing = scan(where)
        settled = self._clock() - int(self.SETTLED * 1e9)
        if info.st_mtime_ns < settled and info.st_ctime_ns < settled:
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            self._known[where] = (key, listing)
        else:
            self._known.pop(where, None)
        return listing


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
    """List the steps that would run now, in byte-wise order, and the entries that would not.

    For `check` and `explain`: besides what the runner looks at at each turn, a step whose
    first bytes show the kernel will refuse it (no ``#!`` line, a missing interpreter) and
    the names passed over are among the entries that would not run.
    """
    listing = scan(directory)
    steps: list[StepEntry] = []
    skipped = [SkippedEntry(name, "is a directory") for name in listing.folders]
    skipped += [
        SkippedEntry(name, ignored_kind(name) or "ignored", passed_over=True)
        for name in listing.passed_over
    ]
    for step in listing.steps:
        reason = unrunnable_reason(step.file)
        if reason is None:
            problem = start_problem(step.file)
            reason = None if problem is None else f"cannot be started: {problem}"
        if reason is None:
            steps.append(step)
        else:
            skipped.append(SkippedEntry(step.name, reason))
    skipped.sort(key=lambda entry: os.fsencode(entry.name))
    return steps, skipped


def read_head(path: Path | str) -> bytes | None:
    """Return the first bytes of ``path`` the kernel looks at, or None when unreadable."""
    try:
        with open(path, "rb") as handle:
            return handle.read(HEAD_BYTES)
    except OSError:
        return None


def interpreter_of(head: bytes) -> str | None:
    """Return the interpreter a ``#!`` line names, as the kernel reads it; None without one.

    The kernel splits the line at spaces and tabs only: a carriage return (a file saved
    with Windows line endings) stays part of the name.
    """
    if not head.startswith(b"#!"):
        return None
    word = re.match(rb"[ \t]*([^ \t\n]*)", head[2:])
    return os.fsdecode(word.group(1)) if word and word.group(1) else None


def is_text_without_shebang(head: bytes) -> bool:
    """Return True for text with no ``#!`` line: no program the kernel knows how to start."""
    return not head.startswith((b"#!", b"\x7fELF")) and b"\0" not in head


def start_problem(path: Path | str) -> str | None:
    """Return why the kernel would refuse to start the executable ``path``, from its head.

    None when it looks startable, or when what it is cannot be told (unreadable, a binary
    of a format other than ELF, a relative interpreter, which the kernel finds from the
    working directory).
    """
    head = read_head(path)
    if head is None:
        return None
    if is_text_without_shebang(head):
        return "it has no #! line, so the kernel refuses to start it (Exec format error)"
    interpreter = interpreter_of(head)
    if interpreter is None or not interpreter.startswith("/"):
        return None
    shown = _CONTROL.sub(lambda c: f"\\x{ord(c.group()):02x}", interpreter)
    if not os.path.exists(interpreter):
        if interpreter.endswith("\r"):
            return (
                f"its #! line ends with a carriage return (Windows line endings), so the "
                f"kernel looks for {shown}, which does not exist"
            )
        return f"its #! line names {shown}, which does not exist"
    if os.path.isdir(interpreter) or not os.access(interpreter, os.X_OK):
        return f"its #! line names {shown}, which is not an executable file"
    return None


def reason_of(exc: OSError) -> str:
    """Return the operator's text of an OS error: its strerror, else the whole message."""
    return exc.strerror or str(exc)


def folder_exists(folder: Path) -> bool:
    """Return True when ``folder`` is a directory; a name the OS refuses is not one."""
    try:
        return folder.is_dir()
    except OSError:  # e.g. a name too long for the filesystem: refused, not a traceback
        return False


def handler_distrust(folder: Path, euid: int | None = None) -> list[tuple[str, Distrust]]:
    """Judge a handler folder and every step in it; return (what, why) for each doubt."""
    uid = effective_uid(euid)
    found = []
    doubt = distrust(folder, uid)
    if doubt is not None:
        found.append(("handler folder", doubt))
    # Listed here, not by ``scan``: a symlink to a folder is no step to judge (``is_dir``
    # follows it); ``scan`` lists it, and the runner skips it at its turn as a directory.
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if not is_ignored(e.name) and not e.is_dir())
    except OSError:
        return found  # reported as unreadable by whoever lists the steps
    for name in names:
        doubt = distrust(folder / name, uid)
        if doubt is not None:
            found.append(("step", doubt))
    return found
