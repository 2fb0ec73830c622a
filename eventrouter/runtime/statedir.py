"""The router's state folder: private to its user, files opened without following symlinks.

It holds the failure journal file, the embedded server's socket and pid file, and the lock
that keeps a second router off the same folder. Anyone else able to write there could plant a
symlink (and have the router, perhaps root, append to any file) or swap the socket, so the
folder is created 0700 and an existing one writable by group or others, or owned by another
user, is refused with the fix, as sshd and sudo refuse such files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

from eventrouter.support.files import open_nofollow

LOCK_NAME = "router.lock"


class StateDirError(RuntimeError):
    """The state folder cannot be used safely, or another router holds it."""


def prepare(folder: Path) -> Path:
    """Create ``folder`` 0700 if missing; raise StateDirError when it is not private."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode):
        raise StateDirError(
            f"state folder {folder} is a symlink; point --state-dir at the real folder"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"state folder {folder} is not a folder")
    if info.st_uid != os.geteuid():
        raise StateDirError(
            f"state folder {folder} is owned by uid {info.st_uid}, not by this user "
            f"(uid {os.geteuid()}); fix: chown {os.geteuid()} {folder}, or use another --state-dir"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise StateDirError(
            f"state folder {folder} is writable by group or others (mode {mode:04o}); "
            f"fix: chmod go-w {folder}"
        )
    return folder


class RouterLock:
    """An flock on ``STATE/router.lock`` holding the pid of the router that owns the folder."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid; raise StateDirError naming the holder's pid."""
        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateDirError(
                f"another eventrouter (pid {holder}) is running on the state folder "
                f"{self.path.parent}; stop it first, or give this one another --state-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the kernel drops it too when the process dies)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)
