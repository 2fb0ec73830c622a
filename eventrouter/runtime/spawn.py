"""Start a step process without blocking the event loop, and watch it with file descriptors.

Steps start with ``os.posix_spawn`` (a vfork and exec in glibc, the environment encoded in C)
when they run in the router's own working directory, as the bare spawn loop of the benchmark
does: ``subprocess.Popen`` costs about 0.15 ms more CPU per start, most of it preparing the
environment in Python. A step that runs in another folder (``AGENT_STATE_DIR``) starts with
``Popen``, since ``posix_spawn`` cannot change directory. Either way the child gets stdin,
stdout and stderr and nothing else (every descriptor the router opens is close-on-exec, PEP
446, and those it inherited are made so before the first step starts), a new session, and
SIGPIPE and SIGXFSZ back at their defaults (Python ignores them).

asyncio's ``subprocess_exec`` forks and waits for the exec in the event-loop thread, and on
Python 3.11 learns of the exit through a thread per child. For short steps that is most of
the cost, and while one step is being started no other event is handled. Here the fork and
exec happen in the loop's thread when nothing else runs and in a small thread pool when
steps run side by side; the payload is written to the step's stdin pipe before the start
when it fits (4 KiB, what a pipe always takes at once), else as the step reads it; stdout
and stderr share one pipe (lines in the order written, as systemd gives a service one
stream), and the exit is seen through a pidfd (Linux 5.3+; elsewhere a waiting thread).
The output pipe and the pidfd go into one epoll set per loop (``_Watcher``), which asyncio
watches as one descriptor.

Children die with the router through the *warden* (``support/processes.py``), which learns
each step's process group as the step starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import subprocess
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Protocol

from eventrouter.support.processes import RESET_SIGNALS, WARDEN, seal_inherited

logger = logging.getLogger(__name__)

#: Threads that fork and exec; a start takes about a millisecond, so a few are plenty.
_STARTERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="step-start")
#: Threads that wait for exits where there is no pidfd; one per running step at most.
_WAITERS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="step-wait")
_CHUNK = 256 * 1024


class Sink(Protocol):
    """Where a child's output and exit are reported (``asyncio.SubprocessProtocol`` calls)."""

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        """Take a chunk of stdout (1) or stderr (2)."""

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        """Learn that stdin (0), stdout (1) or stderr (2) is closed."""

    def process_exited(self) -> None:
        """Learn that the process has exited and been reaped."""


def _start_process(
    argv: list[str], fds: tuple[int, int, int], cwd: str | None, env: Mapping[str, str]
) -> subprocess.Popen[bytes] | int:
    """Start ``argv`` in a new session; return its pid, or its Popen in another folder.

    ``cwd`` None is the router's own working directory.
    """
    stdin, stdout, stderr = fds
    started: subprocess.Popen[bytes] | int
    if cwd is None or cwd == os.getcwd():
        seal_inherited()
        started = os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin, 0),
                (os.POSIX_SPAWN_DUP2, stdout, 1),
                (os.POSIX_SPAWN_DUP2, stderr, 2),
            ],
            setsid=True,
            setsigdef=RESET_SIGNALS,
            setsigmask=(),
        )
        pid = started
    else:
        started = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env,
            start_new_session=True,
        )  # fmt: skip
        pid = started.pid
    # Here, in the starting thread: the sooner the warden knows, the smaller the window.
    WARDEN.watch(pid)
    return started


class _Watcher:
    """The step descriptors of one event loop, in an epoll set of their own.

    asyncio's ``add_reader``/``remove_reader`` cost about fifteen Python calls each, and every
    step needs two descriptors watched (its output, its pidfd): most of the loop's work per
    step. Here they go into one inner epoll set (one C call to add, one to remove), whose own
    descriptor is the only one asyncio watches; when it is readable, one ``poll(0)`` says
    which step descriptors are.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[], None]] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)
        # A loop that is closed takes its watcher with it (tests run one loop a test).
        weakref.finalize(loop, self._epoll.close)

    def add(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable, until ``remove(fd)``."""
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed)."""
        if self._callbacks.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def _ready(self) -> None:
        for fd, _ in self._epoll.poll(0):
            callback = self._callbacks.get(fd)  # an earlier callback may have removed it
            if callback is None:
                continue
            try:
                callback()
            except Exception:  # one step's bad luck must not starve the others
                logger.exception("internal error while watching a step")


_WATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watcher] = (
    weakref.WeakKeyDictionary()
)


def _watcher(loop: asyncio.AbstractEventLoop) -> _Watcher:
    watcher = _WATCHERS.get(loop)
    if watcher is None:
        watcher = _WATCHERS[loop] = _Watcher(loop)
    return watcher


class Child:
    """A running step: the subset of ``asyncio.SubprocessTransport`` the runner uses.

    The step's stdout and stderr are one pipe, as systemd gives a service one stream for
    both: the lines reach the sink in the order they were written, all as fd 1.
    """

    def __init__(self, started: subprocess.Popen[bytes] | int, sink: Sink, payload: bytes) -> None:
        # A Popen reaps its own child (and must: its module reaps the ones it forgot); a pid
        # from posix_spawn is reaped here with waitpid.
        self._proc = None if isinstance(started, int) else started
        self._pid = started if isinstance(started, int) else started.pid
        self._returncode: int | None = None
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._watcher = _watcher(self._loop)
        self._output: int | None = None
        self._stdin: int | None = None
        self._payload = memoryview(payload)

    @classmethod
    async def start(
        cls,
        argv: list[str],
        *,
        cwd: str | None,
        env: Mapping[str, str],
        payload: bytes,
        sink: Sink,
        inline: bool = False,
    ) -> Child:
        """Start ``argv`` in a new session; raise OSError when it cannot be started.

        ``inline`` starts it in the loop's thread, which is quicker when nothing else is
        running (no thread hop) but holds the loop for the fork and exec.
        """
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        given: int | None = stdin_w
        if len(payload) <= select.PIPE_BUF:
            # The usual payload fits an empty pipe whole (a write this small never waits,
            # nor is cut): given before the start, with its end of file, nothing to watch.
            if payload:
                os.write(stdin_w, payload)
            os.close(stdin_w)
            given = None
        # ``env`` is the caller's own, unchanged while the step starts (a thread may start it).
        start = partial(_start_process, argv, (stdin_r, out_w, out_w), cwd, env)
        try:
            if inline:
                started = start()
            else:
                started = await asyncio.get_running_loop().run_in_executor(_STARTERS, start)
        except BaseException:
            for fd in (stdin_r, given, out_r, out_w):
                if fd is not None:
                    os.close(fd)
            raise
        os.close(stdin_r)  # the child's ends
        os.close(out_w)
        child = cls(started, sink, b"" if given is None else payload)
        child._watch(given, out_r)
        return child

    def _watch(self, stdin_w: int | None, out_r: int) -> None:
        os.set_blocking(out_r, False)
        self._output = out_r
        self._watcher.add(out_r, self._readable)
        if stdin_w is not None:  # a payload larger than a pipe takes at once
            os.set_blocking(stdin_w, False)
            self._stdin = stdin_w
            self._feed()
        self._watch_exit()

    def _readable(self) -> None:
        fd = self._output
        if fd is None:
            return
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            logger.debug("reading step output: %s", exc)
            data = b""
        if data:
            self._sink.pipe_data_received(1, data)
            return
        self._close_output()

    def _close_output(self) -> None:
        fd, self._output = self._output, None
        if fd is None:
            return
        self._watcher.remove(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        self._sink.pipe_connection_lost(1, None)

    def _feed(self) -> None:
        """Write what the pipe takes of the payload; the rest when it is writable again."""
        if self._stdin is None:
            return
        try:
            while self._payload:
                written = os.write(self._stdin, self._payload)
                self._payload = self._payload[written:]
        except BlockingIOError:
            self._loop.add_writer(self._stdin, self._writable)
            return
        except OSError as exc:  # the step exited or closed stdin without reading it all
            self._sink.pipe_connection_lost(0, exc)
        self._close_stdin()

    def _writable(self) -> None:
        if self._stdin is not None:
            self._loop.remove_writer(self._stdin)
        self._feed()

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            if self._payload:  # only then was it ever given to the loop
                self._loop.remove_writer(self._stdin)
            os.close(self._stdin)
            self._stdin = None

    def _watch_exit(self) -> None:
        try:
            pidfd = os.pidfd_open(self._pid)
        except (AttributeError, OSError):
            waiting = self._loop.run_in_executor(_WAITERS, self._wait)
            waiting.add_done_callback(lambda _: self._reaped())
            return
        self._watcher.add(pidfd, partial(self._exited, pidfd))

    def _wait(self) -> None:
        """Reap the step, blocking until it exits; record its status."""
        if self._proc is not None:
            self._returncode = self._proc.wait()
        else:
            _, status = os.waitpid(self._pid, 0)
            self._returncode = os.waitstatus_to_exitcode(status)

    def _exited(self, pidfd: int) -> None:
        self._watcher.remove(pidfd)
        os.close(pidfd)
        self._wait()  # it has exited, so this returns at once
        self._reaped()

    def _reaped(self) -> None:
        WARDEN.forget(self._pid)
        self._sink.process_exited()

    def get_pid(self) -> int:
        """Return the step's pid (also its process group and session id)."""
        return self._pid

    def get_returncode(self) -> int | None:
        """Return the exit status, negative for a signal, or None while it runs."""
        return self._returncode

    def close(self) -> None:
        """Stop watching the output and close our ends (the output may be left unread)."""
        self._close_stdin()
        self._close_output()
