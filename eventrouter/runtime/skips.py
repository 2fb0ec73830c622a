"""What the step runner says of the entries of a handler folder it does not run.

Which entries may run is ``config.handlers``'s answer; here is what only a running router
needs besides: the names passed over that this process has already named in its log, and
whether an error of an exec is the step's own (the step is skipped) or not (the handler is
aborted).
"""

from __future__ import annotations

import errno
import os

from eventrouter.config.handlers import (
    Listing,
    ignored_kind,
    reason_of,
    start_problem,
    unrunnable_reason,
)

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

    def named(self) -> frozenset[str]:
        """Return the paths recorded so far."""
        return frozenset(self._named)

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
