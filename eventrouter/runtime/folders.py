"""Handler folders on disk: which entries are steps, and whether a folder exists.

Apart from the step runner, so that `check`, `explain` and `test` read handler folders as the
daemon does without importing what runs steps (asyncio, the spawner): tests/test_imports.py.

A run lists its folder once, when it starts (``scan``: names only, no ``stat``), and decides
each step when its turn comes (``step_state``), as NS8's agent does: an earlier step may
remove a later one, or make it executable.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from eventrouter.config.trust import ignored_kind, is_ignored

#: Control characters, shown escaped when a message quotes a file's bytes.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
#: How much of a file the kernel reads to choose how to run it (BINPRM_BUF_SIZE).
HEAD_BYTES = 256
#: Errors of an exec that are about the step's file or its ``#!`` interpreter: the step is
#: skipped. Others (too many processes, no memory, an environment too large, a file being
#: written) say nothing about the step: the handler is aborted.
_REFUSED = frozenset(
    {
        errno.ENOEXEC,
        errno.ENOENT,
        errno.EACCES,
        errno.ENOTDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.EISDIR,
        errno.ELIBBAD,
    }
)


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
    #: Hidden names and editor or package backups (``config.trust.is_ignored``).
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


class Mentions:
    """The names passed over that this process has named in its log: each is named once.

    Whoever names one first (the findings of the check at start or reload, or the first run
    that meets it) records it here; the runner names only the ones not yet recorded.
    """

    #: More paths than this (a folder filled with backups) start the record afresh.
    LIMIT = 4096

    def __init__(self) -> None:
        self._named: set[str] = set()

    def unnamed(self, listing: Listing) -> list[tuple[str, str]]:
        """Record the names ``listing`` passes over; return those not named yet, and why."""
        return [
            (name, f"{ignored_kind(name)}, never run (rename it to make it a step)")
            for name in listing.passed_over
            if self.first(os.path.join(listing.base, name))
        ]

    def first(self, path: str) -> bool:
        """Record ``path``; return True when it had not been named before."""
        if path in self._named:
            return False
        if len(self._named) >= self.LIMIT:
            self._named.clear()
        self._named.add(path)
        return True


#: The process's one record of names passed over and already named.
MENTIONS = Mentions()


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


def start_refusal(path: str, exc: OSError) -> str | None:
    """Return why the kernel refused to start the step ``path``, when ``exc`` says it did.

    None when the error is about something else (the working directory, a lack of
    resources): then the step did not run for a reason that is not its own.
    """
    if exc.errno not in _REFUSED or exc.filename != path:
        return None
    gone = unrunnable_reason(path)  # removed, or made not executable, since its turn
    if gone is not None:
        return gone
    return f"cannot be started: {start_problem(path) or reason_of(exc)}"


def reason_of(exc: OSError) -> str:
    """Return the operator's text of an OS error: its strerror, else the whole message."""
    return exc.strerror or str(exc)


def folder_exists(folder: Path) -> bool:
    """Return True when ``folder`` is a directory; a name the OS refuses is not one."""
    try:
        return folder.is_dir()
    except OSError:  # e.g. a name too long for the filesystem: refused, not a traceback
        return False
