"""The reload path: read and check the route files again, and say what changed.

The daemon swaps the table (``Daemon.reload``); this module reads it, as `check` does, and
writes the lines that report a reload, in the log and for `eventrouter reload`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from eventrouter.config.loader import FileCache, LoadResult, load_routes
from eventrouter.model import Route, Settings
from eventrouter.service import apart, sdnotify

#: The daemon's logger, as before these lines moved out of it: the log names their source, and
#: an operator's filter on it must keep finding them.
log = logging.getLogger("eventrouter.service.daemon")

#: On reload, a route file modified less than this many seconds ago is read once quiet (for
#: writers that close and reopen it; one that keeps it open is known for certain).
RELOAD_SETTLE = 0.25


@dataclass(frozen=True)
class Changes:
    """What a reload changes, by route name."""

    added: Sequence[str] = ()
    removed: Sequence[str] = ()
    changed: Sequence[str] = ()


def compare(old: Sequence[Route], new: Sequence[Route]) -> Changes:
    """Return the routes added, removed and changed between two tables.

    A file that did not change gives the very same route objects (``FileCache``): only the
    routes of the files that changed are hashed.
    """
    before = {route.name: route for route in old}
    after = {route.name: route for route in new}
    return Changes(
        added=sorted(after.keys() - before.keys()),
        removed=sorted(before.keys() - after.keys()),
        changed=sorted(
            name
            for name in after.keys() & before.keys()
            if after[name] is not before[name] and after[name].digest != before[name].digest
        ),
    )


def log_diagnostics(result: LoadResult) -> None:
    """Log every finding of a load as ``FILE:LINE: message``."""
    for item in result.diagnostics:
        level = logging.ERROR if item.severity == "error" else logging.WARNING
        log.log(level, "%s", item)


async def read(settings: Settings, cache: FileCache, by: str | None) -> LoadResult:
    """Read and check the route files again for a reload asked ``by`` (a signal, a watch)."""
    sdnotify.reloading()
    log.info(
        "%s: reloading routes from %s",
        by or "SIGHUP",
        ", ".join(str(d) for d in settings.routes_dirs) or "(no folder)",
    )
    # Never a file being written (it may parse with fewer routes): see config/stable.py.
    loaded = await asyncio.to_thread(load_routes, settings.routes_dirs, cache, settle=RELOAD_SETTLE)
    # Forked here, in the event loop's thread (service/apart.py), awaited in another.
    checking = apart.start(loaded, settings.events_dirs)
    result = await asyncio.to_thread(apart.outcome, checking, loaded, settings.events_dirs)
    log_diagnostics(result)
    return result


def refused(result: LoadResult, kept: int) -> str:
    """Log and return the summary of a reload refused for errors, ``kept`` routes kept."""
    errors = sum(1 for d in result.diagnostics if d.severity == "error")
    summary = f"reload failed with {errors} error(s); keeping the {kept} routes loaded before"
    log.error("%s", summary)
    return summary


def applied(changes: Changes, count: int) -> tuple[str, list[str]]:
    """Log and return the summary of a reload to ``count`` routes, and a line per change."""
    summary = (
        f"reloaded: {count} routes (+{len(changes.added)} "
        f"-{len(changes.removed)} ~{len(changes.changed)})"
    )
    log.info("%s", summary)
    lines = []
    for kind, names in (
        ("added", changes.added),
        ("removed", changes.removed),
        ("changed", changes.changed),
    ):
        if names:
            log.info("reload %s: %s", kind, ", ".join(names))
            lines.append(f"{kind}: {', '.join(names)}")
    return summary, lines
