"""The embedded server's process: started with ``posix_spawn`` in a session of its own.

Only the part of ``subprocess.Popen`` the server needs. Signals are held back while the
process is created, so that none is handled between its creation and the caller recording it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

from eventrouter.support.processes import RESET_SIGNALS

#: Signals whose Python handlers may raise (Ctrl-C's KeyboardInterrupt, a SystemExit): held
#: back while the server process is created, so that none is handled between its creation
#: and start() recording it.
_HELD_BACK = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


class ServerProcess:
    """The server's process, started with ``posix_spawn``: the part of Popen used here."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Reap the process if it has exited; return its exit code, or None while it runs."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone all the same
                self.returncode = -1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; raise subprocess.TimeoutExpired after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process if it has not been reaped."""
        if self.poll() is None:
            os.kill(self.pid, sig)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Run the block with no Python signal handler running; deliver what arrived after it.

    Blocking the signals in this thread is not enough: the kernel gives a signal sent to the
    process to any thread that does not block it, and Python then runs the handler in the
    main thread at its next bytecode boundary, inside the block. So the Python handlers are
    swapped for a recorder too (possible in the main thread only, where they would run).
    """
    arrived: list[int] = []
    swapped: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _HELD_BACK:
            handler = signal.getsignal(sig)
            if callable(handler):
                swapped[sig] = handler
                signal.signal(sig, lambda signum, _frame: arrived.append(signum))
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_BACK)
    try:
        yield
    finally:
        try:
            for signum, handler in swapped.items():
                signal.signal(signum, handler)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    for signum in arrived:
        signal.raise_signal(signum)


def spawn_server(argv: list[str], log_fd: int) -> ServerProcess:
    """Start the server in a new session, stdin and stdout on /dev/null, stderr to ``log_fd``.

    It starts with no signal blocked, whatever the caller holds back.
    """
    pid = os.posix_spawnp(
        argv[0],
        argv,
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
        ],
        setsid=True,
        setsigdef=RESET_SIGNALS,
        setsigmask=(),
    )
    return ServerProcess(pid)


def signal_group(proc: ServerProcess, sig: signal.Signals) -> None:
    """Send sig to the process group proc leads, or to proc alone if there is no such group."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        # Not a group leader (or already exiting): never leave the process itself unsignalled,
        # or the wait that follows would never return.
        proc.send_signal(sig)
