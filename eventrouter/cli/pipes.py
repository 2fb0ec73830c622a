"""A command whose reader went away (`eventrouter failures | head -1`) ends quietly.

Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError, and what is still
buffered fails again at the interpreter's exit: two tracebacks for a reader that simply had
enough. SIGPIPE stays ignored (the daemon writes to step pipes and sockets that may close);
the error is caught once here instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

#: The status a shell shows for a command stopped by SIGPIPE: 128 + 13.
EXIT_CLOSED_PIPE = 141


def quietly(command: Callable[[], int]) -> int:
    """Run ``command``; on a closed stdout or stderr, exit 141 without a word."""
    try:
        try:
            return command()
        finally:
            # Flushed inside the try: a reader gone is then caught below, not at exit.
            sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere
        os.dup2(devnull, sys.stderr.fileno())
        os.close(devnull)
        return EXIT_CLOSED_PIPE
