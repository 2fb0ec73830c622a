"""The daemon's lifecycle: start, signals, reload swap, bounded shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from eventrouter.config.loader import FileCache, LoadResult, load_routes
from eventrouter.config.patterns import RouteIndex, glob_escape
from eventrouter.engine.decide import decide_message, retry_decision
from eventrouter.model import Route, Settings
from eventrouter.redis import bus, embedded
from eventrouter.redis.connections import publish_url, subscribe_url
from eventrouter.redis.journal import open_journal
from eventrouter.runtime import statedir
from eventrouter.runtime.dispatch import Dispatcher
from eventrouter.runtime.journal import Journal, JournalError, parse_retry_message
from eventrouter.runtime.spawn import WARDEN
from eventrouter.runtime.steps import StepRunner
from eventrouter.service import sdnotify

log = logging.getLogger(__name__)

#: The subscription convention folders need (as the NS8 agent's).
CONVENTION_GLOB = "*/event/*"
#: On reload, a route file modified less than this many seconds ago is read once quiet.
RELOAD_SETTLE = 0.25


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


def _watch_children_with_pidfd() -> None:
    """Learn of step exits through a pidfd in the loop rather than a thread per child.

    Python 3.12 does this by default; on 3.11 the default starts a thread for each step,
    which costs a good share of the time of a short step.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # a kernel without pidfd (before Linux 5.3): keep the default
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


@dataclass
class Intents:
    """What the signal handlers asked for; the main loop acts on it."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reload: bool = False
    stop: str | None = None
    #: A second SIGTERM/SIGINT while stopping: skip what is left of the grace period.
    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    hurried_by: str = ""

    def ask_reload(self) -> None:
        """Record a SIGHUP (several coalesce into one reload)."""
        self.reload = True
        self.wake.set()

    def ask_stop(self, name: str) -> None:
        """Record SIGTERM/SIGINT; a second one asks to kill at once."""
        if self.stop is not None:
            self.hurried_by = name
            self.hurry.set()
        self.stop = self.stop or name
        self.wake.set()


class Daemon:
    """Load routes, subscribe, dispatch, reload on SIGHUP, stop on SIGTERM/SIGINT."""

    def __init__(
        self, settings: Settings, routes: LoadResult, cache: FileCache | None = None
    ) -> None:
        self.settings = settings
        self.routes = routes.routes
        #: The route files as last built: a reload re-parses only the files that changed.
        self.cache: FileCache = cache if cache is not None else {}
        self.intents = Intents()
        self.server: embedded.EmbeddedServer | None = None
        self._tasks: set[asyncio.Task[bool]] = set()
        self._embedded = False  # no Redis configured: the private server is used
        self.journal: Journal | None = None
        self._lock: statedir.RouterLock | None = None

    def _globs(self, index: RouteIndex) -> set[str]:
        globs = index.globs() | {glob_escape(self.settings.control_channel)}
        if self.settings.events_dirs:
            globs.add(CONVENTION_GLOB)
        return globs

    def _on_message(self, dispatcher: Dispatcher) -> Callable[[str, bytes], None]:
        """Return the intake handler: control messages apart, events to the dispatcher."""

        def handle(channel: str, data: bytes) -> None:
            if channel == self.settings.control_channel:
                task = asyncio.create_task(self.retry(dispatcher, data))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                dispatcher.receive(channel, data)

        return handle

    async def retry(self, dispatcher: Dispatcher, data: bytes) -> bool:
        """Run a failed route again on the recorded event, if the current table still would.

        The request and the journal entry are untrusted: whoever can publish on the control
        channel or write the stream could name any route or folder, so the event is decided
        again against the current table and only what that decision fires may run.
        """
        request = parse_retry_message(data)
        if request is None:
            log.warning(
                "ignored a malformed retry request on %s (%d bytes): %r",
                self.settings.control_channel,
                len(data),
                data[:100],
            )
            return False
        failure_id, instance = request
        if instance != dispatcher.instance:
            log.debug("retry %s is for router %r, not this one", failure_id, instance[:100])
            return False
        try:
            failure = await self.journal.get(failure_id) if self.journal is not None else None
        except JournalError as exc:
            log.error("retry %s: cannot read the failure journal: %s", failure_id, exc)
            return False
        if failure is None:
            log.error("retry %s: no such failure in the journal", failure_id)
            return False
        if failure.payload_cut:
            log.error(
                "retry %s: the journal kept %d of the payload's %d bytes; not retried",
                failure_id,
                len(failure.raw()),
                failure.payload_cut,
            )
            return False
        decision = decide_message(
            dispatcher.index, failure.channel, failure.raw(), dispatcher.context
        )
        found = retry_decision(decision, failure.route, dispatcher.index.routes)
        if isinstance(found, str):
            log.error(
                "retry %s: refused: %r for event %r: %s",
                failure_id,
                failure.route[:200],
                failure.channel[:200],
                found,
            )
            return False
        route = found.route
        log.info(
            "retry %s: running route %s (current version, %s:%d) again on %r",
            failure_id,
            route.name,
            route.file,
            route.line,
            decision.event.channel,
        )
        return bool(dispatcher.submit(found, decision.event))

    def _urls(self) -> tuple[str, str]:
        env = os.environ
        sub = subscribe_url(self.settings.redis_url, env)
        pub = publish_url(self.settings.publish_url, env, sub)
        if sub is None:
            self._embedded = True
            state = self.settings.state_dir or embedded.default_state_dir()
            # One router per embedded server: two would each run every event.
            self._lock = statedir.RouterLock(state)
            self._lock.acquire()
            embedded.stop_leftover(state)
            sub, self.server = embedded.ensure_server(state)
            where = "started" if self.server else "found running"
            log.info("no Redis configured: embedded server %s at %s", where, sub)
            pub = pub or sub
        return sub, pub or sub

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit status."""
        statedir.prepare(self.settings.state_dir or embedded.default_state_dir())
        # Before any child: the warden stops them all should this process be killed.
        WARDEN.start(self.settings.kill_grace)
        try:
            return await self._run()
        finally:
            if self.server is not None:
                self.server.stop()
            WARDEN.stop()
            if self._lock is not None:
                self._lock.release()

    async def _run(self) -> int:
        _watch_children_with_pidfd()
        sub_url, pub_url = self._urls()
        index = RouteIndex(self.routes)
        runner = StepRunner(
            max_concurrency=self.settings.max_concurrency,
            kill_grace=self.settings.kill_grace,
        )
        subscribed = asyncio.Event()  # the outbox is held while the subscription is down
        publisher = bus.RedisPublisher(pub_url, gate=subscribed)
        publisher.start()
        state = self.settings.state_dir or embedded.default_state_dir()
        # The embedded server keeps nothing across restarts: journal to the state folder.
        embedded_only = self._embedded and pub_url == sub_url
        journal = await open_journal(
            None if embedded_only else pub_url,
            self.settings.journal_key,
            self.settings.journal_size,
            state,
        )
        self.journal = journal
        dispatcher = Dispatcher(self.settings, runner, publisher, index, journal=journal)
        log.info("failure journal: %s (this router is %r)", journal.where, dispatcher.instance)
        subscriber = bus.Subscriber(
            sub_url,
            self._on_message(dispatcher),
            connected=subscribed,
            ping_interval=self.settings.ping_interval,
            ping_timeout=self.settings.ping_timeout,
            settle=publisher.settle,
            resync=lambda: self._recover(dispatcher, publisher),
        )
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
        for folder in self.settings.events_dirs:
            if not folder.is_dir():  # it may appear later (a module installed): warn only
                log.warning(
                    "events folder %s does not exist; events will run nothing there until it does",
                    folder,
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
            await journal.close()
        return 0

    @staticmethod
    def _recover(dispatcher: Dispatcher, publisher: bus.RedisPublisher) -> None:
        """After a subscription break, handle here what the router published and never saw."""
        recovered = dispatcher.recover(publisher.queued())
        log.warning(
            "subscription back: %d derived event(s) published while it was down recovered "
            "and handled here once; %d held in the outbox go out now",
            recovered,
            publisher.pending,
        )

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.intents.ask_reload)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.intents.ask_stop, signum.name)

    def _load(self, settle: float = 0.0) -> LoadResult:
        """Read and check the route files as `check` does (blocking: run it in a thread)."""
        # Imported at the first reload, not with the daemon: `run` loaded it once at start.
        from eventrouter.analysis.validate import validate

        result = load_routes(self.settings.routes_dirs, self.cache, settle=settle)
        return validate(result, self.settings.events_dirs)

    async def reload(self, dispatcher: Dispatcher, subscriber: bus.Subscriber) -> bool:
        """Re-read every route file; swap the table atomically, or keep the old one on error."""
        sdnotify.reloading()
        log.info(
            "SIGHUP: reloading routes from %s",
            ", ".join(str(d) for d in self.settings.routes_dirs) or "(no folder)",
        )
        # A file being written in place may parse with fewer routes: read each once quiet.
        result = await asyncio.to_thread(self._load, RELOAD_SETTLE)
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
        hurried = asyncio.create_task(self._log_hurry())
        await dispatcher.close(self.settings.stop_timeout, self.intents.hurry)
        hurried.cancel()
        await publisher.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        counts = dispatcher.counters
        log.info(
            "stopped: %d events, %d runs ok, %d failed, %d derived emitted, %d dropped, "
            "%d not started, %d killed at shutdown",
            counts["events"],
            counts["runs_ok"],
            counts["runs_failed"],
            counts["emitted"],
            counts["dropped_oversize"] + counts["dropped_queue_full"],
            counts["not_started"],
            counts["killed"],
        )

    async def _log_hurry(self) -> None:
        await self.intents.hurry.wait()
        log.warning(
            "second %s: not waiting any longer; killing the running steps",
            self.intents.hurried_by,
        )
