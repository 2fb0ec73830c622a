"""An event as the engine sees it: parsed payload, event name, convention folders."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from eventrouter.model import SAFE_NAME, Event, Route, RunAction

#: How a convention route's name starts: ``events:<folder>``.
CONVENTION_PREFIX = "events:"
#: Longest file name most filesystems take (NAME_MAX), in bytes.
NAME_MAX = 255

#: Whether a folder exists: the I/O convention routes need, passed in by the caller.
FolderExists = Callable[[Path], bool]


def parse_event(channel: str, data: bytes) -> Event:
    """Return the event for a message, its payload parsed when it is JSON."""
    try:
        return Event(channel, data, json.loads(data), True)
    # Anything the parser raises makes the payload not-JSON: a decode error, and also a
    # RecursionError (JSON nested 100,000 deep) or MemoryError, which must not drop the event.
    except (ValueError, RecursionError, MemoryError):
        return Event(channel, data, None, False)


def name_problem(name: str) -> str | None:
    """Return why ``name`` may not name an events folder, or None when it may."""
    if not SAFE_NAME.fullmatch(name):
        return "an event name must match [A-Za-z0-9][A-Za-z0-9._-]* to run an events folder"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"an event name longer than {NAME_MAX} bytes cannot name an events folder"
    return None


def convention_name(folder: Path) -> str:
    """Return the route name of the events folder ``folder``."""
    return f"{CONVENTION_PREFIX}{folder}"


def convention_label(folder: Path) -> str:
    """Return how route tests name an events folder: ``events:<folder name>``."""
    return f"{CONVENTION_PREFIX}{folder.name}"


@lru_cache(maxsize=1024)
def convention_route(folder: Path) -> Route:
    """Return the implicit route that runs an events folder (one object a folder: frozen)."""
    return Route(
        name=convention_name(folder),
        patterns=(),
        actions=(RunAction(folder, 0),),
        file=str(folder),
        line=0,
        convention=True,
    )


def convention_folders(
    events_dirs: Sequence[Path], name: str | None, exists: FolderExists
) -> list[Path] | None:
    """Return the events folders ``name`` runs by convention; None when the name is refused."""
    if name is None or not events_dirs:
        return []
    if name_problem(name) is not None:
        return None
    folders = [_folder(base, name) for base in events_dirs]
    return [folder for folder in folders if exists(folder)]


@lru_cache(maxsize=1024)
def _folder(base: Path, name: str) -> Path:
    """Return ``base / name``, built once for the names events keep arriving with."""
    return base / name
