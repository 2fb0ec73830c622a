"""The daemon's lifecycle: start, signals, reload swap, bounded shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

from eventrouter import bus, embedded, sdnotify
from eventrouter.config import LoadResult, load_routes
from eventrouter.connections import publish_url, subscribe_url
from eventrouter.dispatch import Dispatcher
from eventrouter.model import Route, Settings
from eventrouter.patterns import RouteIndex
from eventrouter.steps import StepRunner

log = logging.getLogger(__name__)

#: The subscription convention folders need (as the NS8 agent's).
CONVENTION_GLOB = "*/event/*"


@dataclass(frozen=True)
class Changes:
    """What a reload changes, by route name."""

    added: Sequence[str] = ()
    removed: Sequence[str] = ()
    changed: Sequence[str] = ()


def compare(old: Sequence[Route], new: Sequence[Route]) -> Changes:
    """Return the routes added, removed and changed between two tables."""
    before = {route.name: route.digest for route in old}
    after = {route.name: route.digest for route in new}
    return Changes(
        added=sorted(after.keys() - before.keys()),
        removed=sorted(before.keys() - after.keys()),
        changed=sorted(
            name for name in after.keys() & before.keys() if after[name] != before[name]
        ),
    )


def log_diagnostics(result: LoadResult) -> None:
    """Log every finding of a load as ``FILE:LINE: message``."""
    for item in result.diagnostics:
        level = logging.ERROR if item.severity == "error" else logging.WARNING
        log.log(level, "%s", item)


@dataclass
class Intents:
    """What the signal handlers asked for; the main loop acts on it."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reload: bool = False
    stop: str | None = None

    def ask_reload(self) -> None:
        """Record a SIGHUP (several coalesce into one reload)."""
        self.reload = True
        self.wake.set()

    def ask_stop(self, name: str) -> None:
        """Record SIGTERM/SIGINT."""
        self.stop = self.stop or name
        self.wake.set()


class Daemon:
    """Load routes, subscribe, dispatch, reload on SIGHUP, stop on SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, routes: LoadResult) -> None:
        self.settings = settings
        self.routes = routes.routes
        self.intents = Intents()
        self.server: embedded.EmbeddedServer | None = None

    def _globs(self, index: RouteIndex) -> set[str]:
        globs = index.globs()
        if self.settings.events_dirs:
            globs.add(CONVENTION_GLOB)
        return globs

    def _urls(self) -> tuple[str, str]:
        env = os.environ
        sub = subscribe_url(self.settings.redis_url, env)
        pub = publish_url(self.settings.publish_url, env, sub)
        if sub is None:
            state = self.settings.state_dir or embedded.default_state_dir()
            sub, self.server = embedded.ensure_server(state)
            where = "started" if self.server else "found running"
            log.info("no Redis configured: embedded server %s at %s", where, sub)
            pub = pub or sub
        return sub, pub or sub

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit status."""
        sub_url, pub_url = self._urls()
        index = RouteIndex(self.routes)
        runner = StepRunner(
            max_concurrency=self.settings.max_concurrency,
            kill_grace=self.settings.kill_grace,
        )
        publisher = bus.RedisPublisher(pub_url)
        dispatcher = Dispatcher(self.settings, runner, publisher, index)
        subscriber = bus.Subscriber(sub_url, dispatcher.receive)
        await subscriber.set_patterns(self._globs(index))
        intake = asyncio.create_task(subscriber.run(), name="intake")
        self._install_signals()
        log.info(
            "started: %d routes, %d events folder(s), subscribing at %s, publishing at %s",
            len(self.routes),
            len(self.settings.events_dirs),
            bus.redact(sub_url),
            bus.redact(pub_url),
        )
        sdnotify.notify("READY=1", f"STATUS=routing with {len(self.routes)} routes")
        try:
            while self.intents.stop is None:
                await self.intents.wake.wait()
                self.intents.wake.clear()
                if self.intents.reload and self.intents.stop is None:
                    self.intents.reload = False
                    await self.reload(dispatcher, subscriber)
        finally:
            await self._shutdown(intake, dispatcher, publisher)
        return 0

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.intents.ask_reload)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.intents.ask_stop, signum.name)

    async def reload(self, dispatcher: Dispatcher, subscriber: bus.Subscriber) -> bool:
        """Re-read every route file; swap the table atomically, or keep the old one on error."""
        sdnotify.reloading()
        log.info(
            "SIGHUP: reloading routes from %s",
            ", ".join(str(d) for d in self.settings.routes_dirs) or "(no folder)",
        )
        result = await asyncio.to_thread(load_routes, self.settings.routes_dirs)
        log_diagnostics(result)
        if not result.ok:
            errors = sum(1 for d in result.diagnostics if d.severity == "error")
            log.error(
                "reload failed with %d error(s); keeping the %d routes loaded before",
                errors,
                len(self.routes),
            )
            sdnotify.notify("READY=1", "STATUS=reload failed; old routes kept")
            return False
        changes = compare(self.routes, result.routes)
        index = RouteIndex(result.routes)
        dispatcher.swap(index)  # one assignment: every event sees the old or the new table
        self.routes = result.routes
        await subscriber.set_patterns(self._globs(index))
        log.info(
            "reloaded: %d routes (+%d -%d ~%d)",
            len(result.routes),
            len(changes.added),
            len(changes.removed),
            len(changes.changed),
        )
        for kind, names in (
            ("added", changes.added),
            ("removed", changes.removed),
            ("changed", changes.changed),
        ):
            if names:
                log.info("reload %s: %s", kind, ", ".join(names))
        sdnotify.notify("READY=1", f"STATUS=routing with {len(result.routes)} routes")
        return True

    async def _shutdown(
        self, intake: asyncio.Task[None], dispatcher: Dispatcher, publisher: bus.RedisPublisher
    ) -> None:
        sdnotify.notify("STOPPING=1")
        log.info("%s: stopping; no new events are taken", self.intents.stop or "stop")
        intake.cancel()
        await asyncio.gather(intake, return_exceptions=True)
        await dispatcher.close(self.settings.stop_timeout)
        await publisher.close()
        if self.server is not None:
            self.server.stop()
        counts = dispatcher.counters
        log.info(
            "stopped: %d events, %d runs ok, %d failed, %d derived emitted, %d dropped, "
            "%d not started",
            counts["events"],
            counts["runs_ok"],
            counts["runs_failed"],
            counts["emitted"],
            counts["dropped_oversize"] + counts["dropped_queue_full"],
            counts["not_started"],
        )
