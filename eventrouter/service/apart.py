"""The deep check of `run` and of a reload, in a child process of its own.

The deep check (``analysis``) builds globs, syntax trees and scans of every route, about
13 MiB for 10,000 routes, and lets them go when it ends. In the router's own process that
memory stayed: the few objects kept alongside (findings, fingerprints) pinned Python's
arenas, so a router with 10,000 routes grew by about 10 MiB at start and 13 MiB at each of
its first reloads. Here a forked child runs it on the table the router loaded (copy on
write, nothing read twice) and sends back its findings, and the names of passed-over
entries it reported (``runtime.skips.MENTIONS``, so that a run does not name them again).
The router never imports the analysis package.

The child is forked from the thread that owns the event loop, when no other thread of ours
holds a lock it needs; it closes every descriptor but its pipe at once (a step's stdin must
see its end of file, a Redis peer a closed connection), and takes signals at their
defaults, never through the event loop's wake-up descriptor, which it shares with the
router. A child that cannot be forked, fails, or outlasts ``PATIENCE`` is not an error:
the check then runs in the router's process, as before, and the log says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from eventrouter.config.loader import LoadResult
from eventrouter.runtime.skips import MENTIONS

log = logging.getLogger(__name__)

#: Longest a child's check may take before it is killed and the check is run here.
PATIENCE = 120.0
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Checking:
    """A child running the deep check: its pid and the read end of its pipe."""

    pid: int
    pipe: int


def start(result: LoadResult, events_dirs: Sequence[Path]) -> Checking | None:
    """Fork a child that checks ``result``; None when there is nothing to check or no fork.

    Call it from the thread that runs the event loop (or before there is one).
    """
    if not result.ok or not hasattr(os, "fork"):
        return None
    read_end, write_end = os.pipe()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(read_end)
        os.close(write_end)
        log.warning("cannot fork for the deep check (%s); checking in this process", exc)
        return None
    if pid == 0:  # pragma: no cover (the child ends with os._exit: coverage never hears)
        _child(result, events_dirs, write_end, blocked)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    os.close(write_end)
    return Checking(pid, read_end)


def _child(
    result: LoadResult, events_dirs: Sequence[Path], pipe: int, blocked: set[int | signal.Signals]
) -> None:  # pragma: no cover (runs in the child)
    status = 70
    try:
        with contextlib.suppress(ValueError):  # not the main thread: no wake-up fd to drop
            signal.set_wakeup_fd(-1)
        for number in signal.valid_signals():
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                if callable(signal.getsignal(number)):
                    signal.signal(number, signal.SIG_DFL)
        os.closerange(3, pipe)
        os.closerange(pipe + 1, os.sysconf("SC_OPEN_MAX"))
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        from eventrouter.analysis.lint import deep_check

        before = MENTIONS.named()
        findings = deep_check(result, list(events_dirs))
        data = memoryview(pickle.dumps((findings, MENTIONS.named() - before)))
        while data:
            data = data[os.write(pipe, data) :]
        status = 0
    finally:
        os._exit(status)


def finish(checking: Checking, result: LoadResult, patience: float = PATIENCE) -> LoadResult | None:
    """Wait for the child (blocking); return ``result`` with its findings, or None if it failed."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + patience
    problem = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([checking.pipe], [], [], left)[0]:
                problem = f"took more than {patience:g}s"
                os.kill(checking.pid, signal.SIGKILL)
                break
            chunk = os.read(checking.pipe, _CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(checking.pipe)
    try:
        _, status = os.waitpid(checking.pid, 0)
        code = os.waitstatus_to_exitcode(status)
    except ChildProcessError:  # reaped by someone else: its status is unknown
        code = -1
    if problem is None and code != 0:
        problem = f"ended with status {code}"
    if problem is None:
        try:
            findings, named = pickle.loads(b"".join(chunks))
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            problem = f"sent what cannot be read ({exc})"
    if problem is not None:
        log.warning("the deep check's child process %s; checking in this process", problem)
        return None
    for path in named:
        MENTIONS.first(path)
    return replace(result, diagnostics=(*result.diagnostics, *findings))


def outcome(
    checking: Checking | None, result: LoadResult, events_dirs: Sequence[Path]
) -> LoadResult:
    """Return the verdict on ``result``: the child's findings, or a check made here."""
    if checking is not None:
        done = finish(checking, result)
        if done is not None:
            return done
    return validate_here(result, events_dirs)


def validate_here(result: LoadResult, events_dirs: Sequence[Path]) -> LoadResult:
    """Return ``validate(result, events_dirs)`` computed in this process."""
    from eventrouter.analysis.verdict import validate

    return validate(result, events_dirs)
