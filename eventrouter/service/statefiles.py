"""The files a running router keeps in its state folder for `eventrouter reload`.

* ``eventrouter.pid``: the router's pid, held under an exclusive ``flock`` while it runs, so
  a pid file left by a router killed outright is never mistaken for a live one (its pid may
  since belong to any process, which a SIGHUP could end).
* ``reload.json``: the result of the last reload (written atomically), with a sequence
  number so that `reload` can tell the result of the reload it caused from an older one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from eventrouter.runtime.statedir import LOCK_NAME
from eventrouter.support.files import open_nofollow

log = logging.getLogger(__name__)

PID_FILE = "eventrouter.pid"
#: The lock file with the pid, when the router keeps one (read before PID_FILE).
LOCK_FILE = LOCK_NAME
RESULT_FILE = "reload.json"


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did: its summary line, or the errors that made it keep the old table."""

    pid: int
    seq: int
    ok: bool
    summary: str
    details: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, object]:
        """Return the result as a JSON object."""
        return {
            "pid": self.pid,
            "seq": self.seq,
            "ok": self.ok,
            "summary": self.summary,
            "details": list(self.details),
            "time": time.time(),
        }


class StateFiles:
    """The pid file (held while the router runs) and the reload results of one router."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seq = 0
        self._held: IO[str] | None = None

    def hold_pid(self) -> None:
        """Write this process's pid to the pid file and hold it locked until ``release``."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:  # never through a symlink planted in the state folder
            fd = open_nofollow(self.folder / PID_FILE, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            log.warning("cannot keep the pid file for `reload`: %s", exc)
            return
        handle = os.fdopen(fd, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            log.warning("%s is held by another router; `reload` will reach that one", handle.name)
            return
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._held = handle

    def release(self) -> None:
        """Remove the pid file and drop its lock."""
        if self._held is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.folder / PID_FILE)
        self._held.close()
        self._held = None

    def record(self, ok: bool, summary: str, details: list[str]) -> None:
        """Write the result of a reload where `reload` reads it."""
        self.seq += 1
        result = ReloadResult(os.getpid(), self.seq, ok, summary, tuple(details))
        target = self.folder / RESULT_FILE
        temporary = target.with_name(f".{RESULT_FILE}.{os.getpid()}")
        try:
            fd = open_nofollow(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(result.to_json()) + "\n")
            temporary.replace(target)
        except OSError as exc:
            log.warning("cannot write the reload result to %s: %s", target, exc)


def live_pid(folder: Path) -> int | None:
    """Return the pid of the router holding the lock or pid file in folder, else None."""
    for name in (LOCK_FILE, PID_FILE):
        path = folder / name
        try:
            handle = os.fdopen(open_nofollow(path, os.O_RDONLY), "r")
        except OSError:
            continue
        with handle:
            try:  # a lock we can take is a lock no router holds
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = handle.read().split()
                return int(text[0]) if text and text[0].isdigit() else None
            fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def read_result(folder: Path) -> ReloadResult | None:
    """Return the last reload result written in folder, or None."""
    try:
        data = json.loads((folder / RESULT_FILE).read_text())
        return ReloadResult(
            pid=int(data["pid"]),
            seq=int(data["seq"]),
            ok=bool(data["ok"]),
            summary=str(data["summary"]),
            details=tuple(str(item) for item in data["details"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def request_reload(folder: Path, timeout: float) -> ReloadResult | str:
    """SIGHUP the router of folder and wait for the result of that reload; or say why not."""
    pid = live_pid(folder)
    if pid is None:
        return f"no router runs with the state folder {folder} (no live {PID_FILE} there)"
    before = read_result(folder)
    seen = before.seq if before is not None and before.pid == pid else 0
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return f"the router {pid} of {folder} has exited"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read_result(folder)
        if found is not None and found.pid == pid and found.seq > seen:
            return found
        if live_pid(folder) != pid:
            return f"the router {pid} of {folder} exited before reporting the reload"
        time.sleep(0.02)
    return f"sent SIGHUP to router {pid}; no reload result in {folder} after {timeout:g}s"
