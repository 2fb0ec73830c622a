"""Children that die with the router, and descriptors no child inherits.

Children die with the router through a *warden*: a small ``/bin/sh`` process (about 1 MiB
resident; a Python interpreter took 9) started once, which learns
each child's process group over a pipe and, when that pipe reaches end of file (the router
exited, even by SIGKILL), sends SIGTERM then SIGKILL to every group still registered. This
kills what a step started too, where PR_SET_PDEATHSIG would stop only the step's own process;
and PDEATHSIG needs a ``preexec_fn``, which makes every start fork the whole interpreter
instead of using vfork (measured: 5-6x fewer starts per second). The steps
(``runtime/spawn.py``) and the embedded server (``redis/embedded.py``) register with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading

logger = logging.getLogger(__name__)

# The warden's program, for /bin/sh (about 1 MiB resident where a Python interpreter takes 9):
# read "+PGID"/"-PGID" lines on stdin; at end of file, SIGTERM every group still registered,
# wait up to $1 milliseconds for them to go, then SIGKILL what is left. Groups are kept as
# " 12 34 " in one variable, so that adding and removing one needs no other process.
_WARDEN = """
trap '' TERM INT HUP
groups=' '
while IFS= read -r line; do
    id=${line#?}
    case $line in
        +*) groups="$groups$id " ;;
        -*) case $groups in *" $id "*) groups="${groups%%" $id "*} ${groups#*" $id "}" ;; esac ;;
    esac
done
signal_all() {
    alive=' '
    for id in $groups; do
        kill -s "$1" -- "-$id" 2>/dev/null && alive="$alive$id "
    done
    groups=$alive
}
signal_all TERM
waited=0
while [ "$groups" != ' ' ] && [ "$waited" -lt "$1" ]; do
    sleep 0.05
    waited=$((waited + 50))
    signal_all 0
done
signal_all KILL
"""


class Warden:
    """The process that stops every registered process group once the router is gone."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # steps start in several threads

    @property
    def pid(self) -> int | None:
        """Return the warden's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self, grace: float = 5.0) -> None:
        """Start the warden (once); it lives until this process exits."""
        if self._proc is not None:
            return
        read_end, write_end = os.pipe()
        try:
            # Its own session: a terminal's Ctrl-C to our group must not end it first.
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", _WARDEN, "warden", str(round(grace * 1000))],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._fd = write_end

    def watch(self, pgid: int) -> None:
        """Register a process group to stop if the router dies."""
        self._send(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        """Unregister a process group that has been reaped (its id may be reused)."""
        self._send(b"-%d\n" % pgid)

    def _send(self, line: bytes) -> None:
        if self._fd is None:
            return
        with self._lock:
            try:
                os.write(self._fd, line)  # under PIPE_BUF: atomic
            except OSError as exc:
                logger.error("the step warden is gone (%s); steps may outlive the router", exc)
                os.close(self._fd)
                self._fd = None

    def stop(self) -> None:
        """Close the pipe so the warden exits (after stopping groups still registered)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if self._proc is not None:
            self._proc.wait()
            self._proc = None


#: The router's one warden; started by the daemon, a no-op until then.
WARDEN = Warden()


#: Signals Python ignores at start that a child must get at their defaults (as Popen resets).
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def seal_inherited() -> None:
    """Make the descriptors this process inherited close-on-exec, so no child gets them.

    Popen closes every descriptor in the child; posix_spawn cannot, so they are sealed here
    once: what the router opens itself is close-on-exec already (PEP 446).
    """
    global _sealed  # noqa: PLW0603 (once per process)
    if _sealed:
        return
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:  # stdin, stdout and stderr stay as they are
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
    _sealed = True


_sealed = False
