"""What the signal handlers and the route watcher ask of the daemon; its main loop acts on it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Intents:
    """What was asked (reload, stop); the main loop acts on it."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reload: bool = False
    #: What asked for the pending reload: "SIGHUP", or the route files the watcher saw change.
    reload_by: str = ""
    stop: str | None = None
    #: A second SIGTERM/SIGINT while stopping: skip what is left of the grace period.
    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    hurried_by: str = ""

    def ask_reload(self, by: str = "SIGHUP") -> None:
        """Record a reload request (several coalesce into one reload, named by the first)."""
        if not self.reload:
            self.reload_by = by
        self.reload = True
        self.wake.set()

    def ask_stop(self, name: str) -> None:
        """Record SIGTERM/SIGINT; a second one asks to kill at once."""
        if self.stop is not None:
            self.hurried_by = name
            self.hurry.set()
        self.stop = self.stop or name
        self.wake.set()
