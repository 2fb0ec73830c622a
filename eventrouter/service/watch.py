"""`run --watch`: reload when a route file is created, changed, replaced or removed.

watchfiles (inotify on Linux; the library behind uvicorn's ``--reload``) is an optional extra
and lives only here. It groups the changes it sees until 50 ms pass without one (at most
1.6 s), so a rename over a file, or a save that writes in several pieces, is one change. A
file that a process still has open for writing is waited for until it is closed: inotify
says that a file changed, not that its writer is done, and a reload now could only fail. The
reload itself is the one SIGHUP asks for (all or nothing, the old table kept on errors, the
summary logged), so it also never reads a file being written.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from eventrouter.config.stable import being_written
from eventrouter.support.stopping import cancel_until_done

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "--watch needs the watchfiles package: pip install 'eventrouter[watch]' "
    "(or pip install watchfiles in the router's environment)"
)
#: Changes are grouped until this many milliseconds pass without one...
STEP_MS = 50
#: ...or for at most this many.
DEBOUNCE_MS = 1600
#: How often a changed file still open for writing is looked at again, in seconds.
POLL = 0.05
#: A writer that keeps a changed file open longer than this is named in the log, once.
PATIENT = 5.0
#: Files named in a reload's log line; more are counted.
NAMED = 5


def missing() -> str | None:
    """Return how to install watchfiles when it is not installed, else None."""
    return None if importlib.util.find_spec("watchfiles") is not None else INSTALL_HINT


def is_route_file(change: object, path: str) -> bool:
    """Return True for a file a reload reads: ``*.yml``/``*.yaml``, not hidden.

    ``change`` is the kind of change (watchfiles' filter signature); every kind counts.
    """
    name = os.path.basename(path)
    return name.endswith((".yml", ".yaml")) and not name.startswith(".")


def describe(paths: Sequence[Path]) -> str:
    """Return what asked for a reload: the names of the files that changed, bounded."""
    names = [path.name for path in paths[:NAMED]]
    more = f" and {len(paths) - NAMED} more" if len(paths) > NAMED else ""
    return f"route files changed ({', '.join(names)}{more})"


class RouteWatch:
    """Watch the routes folders and ask for a reload each time route files change."""

    def __init__(self, folders: Sequence[Path], ask_reload: Callable[[str], None]) -> None:
        self.folders = tuple(folders)
        self.ask_reload = ask_reload
        #: Set to stop: the watching thread sees it within STEP_MS.
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Watch until stopped; log why and give up when a folder cannot be watched."""
        from watchfiles import awatch

        log.info("watching %s for route file changes", ", ".join(map(str, self.folders)))
        try:
            async for changes in awatch(
                *self.folders,
                watch_filter=is_route_file,
                recursive=False,
                step=STEP_MS,
                debounce=DEBOUNCE_MS,
                stop_event=self.stopping,
            ):
                paths = sorted({Path(path) for _, path in changes})
                await self.until_closed(paths)
                if self.stopping.is_set():
                    return
                self.ask_reload(describe(paths))
        except (OSError, RuntimeError) as exc:  # a folder gone, unreadable, no inotify left
            log.error("cannot watch the routes folders: %s; reload with SIGHUP instead", exc)

    async def until_closed(self, paths: Sequence[Path]) -> None:
        """Return once no process has any of ``paths`` open for writing (or on stop)."""
        started = time.monotonic()
        said = False
        while not self.stopping.is_set():
            held = await asyncio.to_thread(lambda: [p for p in paths if being_written(p)])
            if not held:
                return
            if not said and time.monotonic() - started > PATIENT:
                log.info(
                    "waiting for %s to be closed by the process writing it before reloading",
                    ", ".join(map(str, held)),
                )
                said = True
            await asyncio.sleep(POLL)

    def stop(self) -> None:
        """Ask the watch to end."""
        self.stopping.set()


def start(
    folders: Sequence[Path], ask_reload: Callable[[str], None]
) -> Callable[[], Awaitable[None]]:
    """Start watching ``folders`` in a task; return the coroutine function that stops it."""
    routes = RouteWatch(folders, ask_reload)
    task = asyncio.create_task(routes.run(), name="watch")

    async def stop() -> None:
        routes.stop()
        await cancel_until_done(task, "the route watch")

    return stop
