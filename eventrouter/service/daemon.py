"""The daemon's lifecycle: start, signals, reload swap, bounded shutdown.

What it hands off: reading and reporting a reload (``reloading``), the control requests
(``retry``; ``observe`` answers `status` and `history`), and the parts it runs (``wiring``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace

from eventrouter.config.loader import FileCache, LoadResult
from eventrouter.config.patterns import RouteIndex, glob_escape
from eventrouter.model import Settings
from eventrouter.redis import bus, embedded
from eventrouter.redis.connections import publish_url, subscribe_url
from eventrouter.redis.stream_journal import in_use
from eventrouter.runtime import control, statedir
from eventrouter.runtime.dispatch import Dispatcher
from eventrouter.runtime.identity import router_identity
from eventrouter.runtime.journal import Journal
from eventrouter.service import metrics, observe, reloading, sdnotify, watch
from eventrouter.service.intents import Intents
from eventrouter.service.retry import retry
from eventrouter.service.statefiles import StateFiles
from eventrouter.service.wiring import Intake, IntakeHooks, Outbox, RedisWiring, Role, Wiring
from eventrouter.support.processes import WARDEN
from eventrouter.support.stopping import cancel_until_done

log = logging.getLogger(__name__)

#: The subscription convention folders need (as the NS8 agent's).
CONVENTION_GLOB = "*/event/*"
#: Published when a node becomes the leader: the role is read again at once.
LEADER_CHANGED = "cluster/event/leader-changed"


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


class Daemon:
    """Load routes, subscribe, dispatch, reload on SIGHUP, stop on SIGTERM/SIGINT."""

    def __init__(
        self,
        settings: Settings,
        routes: LoadResult,
        cache: FileCache | None = None,
        *,
        metrics: tuple[str, int] | None = None,
        wiring: Wiring | None = None,
    ) -> None:
        self.settings = settings
        #: What the parts are made of: Redis and step processes, or a test's stand-ins.
        self.wiring: Wiring = wiring if wiring is not None else RedisWiring()
        #: Where to serve Prometheus metrics (host, port); None: not served.
        self.metrics = metrics
        self.routes = routes.routes
        #: The route files as last built: a reload re-parses only the files that changed.
        self.cache: FileCache = cache if cache is not None else {}
        self.intents = Intents()
        self.server: embedded.EmbeddedServer | None = None
        #: Control requests being handled (retries, `status`, `history`).
        self.requests: set[asyncio.Task[bool]] = set()
        self._embedded = False  # no Redis configured: the private server is used
        self.journal: Journal | None = None
        self._lock: statedir.RouterLock | None = None
        #: The pid file and reload results, for `eventrouter reload`.
        self.files = StateFiles(settings.state_dir or embedded.default_state_dir())
        #: What `status`, `history` and the metrics read; set once running.
        self.parts: observe.Parts | None = None
        #: Set once Redis confirmed every subscription (when systemd is told READY=1).
        self.ready = asyncio.Event()

    def _globs(self, index: RouteIndex) -> set[str]:
        globs = index.globs() | {
            glob_escape(self.settings.control_channel),
            glob_escape(control.QUERY_CHANNEL),
            glob_escape(LEADER_CHANGED),
        }
        if self.settings.events_dirs:
            globs.add(CONVENTION_GLOB)
        return globs

    def _on_message(
        self, dispatcher: Dispatcher, role: Role | None = None
    ) -> Callable[[str, bytes], bool]:
        """Return the intake handler: control messages apart, events to the dispatcher.

        It returns True when a run starts at once for the message (see ``Subscriber``).
        """

        def handle(channel: str, data: bytes) -> bool:
            if channel == LEADER_CHANGED and role is not None:
                role.ask()  # the leader moved: read this router's role now, not at the timer
            if channel in (self.settings.control_channel, control.QUERY_CHANNEL):
                asking = channel == control.QUERY_CHANNEL
                task = asyncio.create_task(
                    observe.answer(self.parts, data)
                    if asking
                    else retry(dispatcher, self.journal, data, self.settings.control_channel)
                )
                self.requests.add(task)
                task.add_done_callback(self.requests.discard)
                return False
            return dispatcher.receive(channel, data)

        return handle

    def _urls(self) -> tuple[str, str]:
        env = os.environ
        sub = subscribe_url(self.settings.redis_url, env)
        pub = publish_url(self.settings.publish_url, env, sub)
        if sub is None:
            self._embedded = True
            state = self.settings.state_dir or embedded.default_state_dir()
            embedded.stop_leftover(state)
            sub, self.server = embedded.ensure_server(state)
            if self.server is None:  # a server it starts says so itself, URL included
                log.info("no Redis configured: using the embedded server running at %s", sub)
            pub = pub or sub
        return sub, pub or sub

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit status."""
        state = statedir.prepare(self.settings.state_dir or embedded.default_state_dir())
        # One router per state folder: two would share the journal file, and on an embedded
        # server each would run every event.
        self._lock = statedir.RouterLock(state)
        self._lock.acquire()
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
        server = await self._serve_metrics()  # first: a port taken stops it before anything
        try:
            sub_url, pub_url = self._urls()
            self._install_signals()
            self.files.hold_pid()  # after the handlers: an early SIGHUP must not end the router
            try:
                return await self.serve(sub_url, pub_url)
            finally:
                self.files.release()
        finally:
            if server is not None:
                await server.close()

    async def serve(self, sub_url: str, pub_url: str) -> int:
        """Route events from ``sub_url`` until asked to stop (``intents``); return the status.

        The parts come from ``wiring``: what `run` uses on Redis, or in-memory ones in tests.
        """
        wiring = self.wiring
        index = RouteIndex(self.routes)
        runner = wiring.runner(self.settings)
        subscribed = asyncio.Event()  # the outbox is held while the subscription is down
        publisher = wiring.publisher(pub_url, subscribed)
        publisher.start()
        state = self.settings.state_dir or embedded.default_state_dir()
        # The embedded server keeps nothing across restarts: journal to the state folder.
        embedded_only = self._embedded and pub_url == sub_url
        journal = await wiring.journal(None if embedded_only else pub_url, self.settings, state)
        self.journal = journal
        tasks = wiring.tasks(pub_url)  # tasks go to the leader's Redis, like derived events
        dispatcher = Dispatcher(
            self.settings,
            runner,
            publisher,
            index,
            journal=journal,
            tasks=tasks,
            clock=wiring.clock,
        )
        role = await self._watch_role(dispatcher, sub_url)
        log.info("failure journal: %s (this router is %r)", in_use(journal), dispatcher.instance)
        hooks = IntakeHooks(
            subscribed, publisher.settle, lambda: self._resync(dispatcher, publisher, role)
        )
        handler = self._on_message(dispatcher, role)
        subscriber = wiring.subscriber(sub_url, handler, self.settings, hooks)
        self.parts = observe.Parts(
            dispatcher, subscriber, publisher, self.routes, lambda: wiring.role_name(sub_url)
        )
        await subscriber.set_patterns(self._globs(index))
        intake = asyncio.create_task(subscriber.run(), name="intake")
        role_task = asyncio.create_task(role.run(), name="role")
        log.info(
            "started: %d routes, %d events folder(s), %s",
            len(self.routes),
            len(self.settings.events_dirs),
            self._where(sub_url, pub_url),
        )
        for folder in self.settings.events_dirs:
            if not folder.is_dir():  # it may appear later (a module installed): warn only
                log.warning(
                    "events folder %s does not exist; events will run nothing there until it does",
                    folder,
                )
        sdnotify.notify(f"STATUS=waiting for Redis at {bus.redact(sub_url)}")
        ready = asyncio.create_task(self._ready_when(subscribed, subscriber), name="ready")
        watching = None
        if self.settings.watch:  # reload on save, by the rules of SIGHUP
            watching = watch.start(self.settings.routes_dirs, self.intents.ask_reload)
        try:
            while self.intents.stop is None:
                await self.intents.wake.wait()
                self.intents.wake.clear()
                if self.intents.reload and self.intents.stop is None:
                    self.intents.reload = False
                    await self.reload(dispatcher, subscriber)
        finally:
            ready.cancel()
            if watching is not None:
                await watching()
            await cancel_until_done(role_task, "the role watch")
            await self._shutdown(intake, dispatcher, publisher)
            await asyncio.gather(role.close(), tasks.close(), journal.close())
        return 0

    async def _serve_metrics(self) -> metrics.MetricsServer | None:
        """Serve Prometheus metrics when asked to; raise OSError when the port is taken."""
        if self.metrics is None:
            return None
        server = metrics.MetricsServer(*self.metrics, lambda: self.parts)
        await server.start()
        return server

    def _where(self, sub_url: str, pub_url: str) -> str:
        """Return where the router subscribes and publishes, each URL said once."""
        if self._embedded and sub_url == pub_url:
            return "on the embedded server"
        if sub_url == pub_url:
            return f"subscribing and publishing at {bus.redact(sub_url)}"
        return f"subscribing at {bus.redact(sub_url)}, publishing at {bus.redact(pub_url)}"

    async def _ready_when(self, subscribed: asyncio.Event, subscriber: Intake) -> None:
        """Tell systemd READY=1 once Redis confirmed every subscription, not before."""
        await subscribed.wait()
        self.ready.set()
        sdnotify.notify(
            "READY=1",
            f"STATUS=subscribed to {len(subscriber.patterns)} patterns; "
            f"routing with {len(self.routes)} routes",
        )

    async def _watch_role(self, dispatcher: Dispatcher, sub_url: str) -> Role:
        """Name the router's node and agent, and read whether it is the leader's before events.

        Until the role can be read (Redis down at start), the router counts as the leader
        only when it runs on the embedded server, which is always a master.
        """
        found = router_identity(
            self.settings.node, self.settings.agent, os.environ, instance=dispatcher.instance
        )
        dispatcher.context = replace(
            dispatcher.context, router=replace(found, leader=self._embedded)
        )
        role = self.wiring.role(sub_url, self.settings.role_interval, dispatcher.set_leader)
        await role.refresh()
        log.info(
            "this router: node %s, agent %s, instance %r, %s",
            found.node if found.node is not None else "(unknown)",
            found.agent or "(none)",
            dispatcher.instance,
            "leader" if dispatcher.router.leader else "not the leader",
        )
        return role

    def _resync(self, dispatcher: Dispatcher, publisher: Outbox, role: Role) -> None:
        """After a subscription break: read the role again, recover what never came back."""
        role.ask()
        self._recover(dispatcher, publisher)

    @staticmethod
    def _recover(dispatcher: Dispatcher, publisher: Outbox) -> None:
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
        loop.add_signal_handler(signal.SIGHUP, self.intents.ask_reload, "SIGHUP")
        # The kernel signals a read lease broken by a writer (config/stable.py); the reload
        # gives the lease back as soon as it has read the file, so there is nothing to do.
        loop.add_signal_handler(signal.SIGIO, lambda: None)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.intents.ask_stop, signum.name)

    async def reload(self, dispatcher: Dispatcher, subscriber: Intake) -> bool:
        """Re-read every route file; swap the table atomically, or keep the old one on error."""
        result = await reloading.read(self.settings, self.cache, self.intents.reload_by)
        findings = [str(item) for item in result.diagnostics]
        if not result.ok:
            summary = reloading.refused(result, len(self.routes))
            self.files.record(False, summary, findings)
            sdnotify.notify("READY=1", "STATUS=reload failed; old routes kept")
            if self.parts is not None:
                self.parts.reloads["failed"] += 1
            return False
        changes = reloading.compare(self.routes, result.routes)
        index = RouteIndex(result.routes)
        dispatcher.swap(index)  # one assignment: every event sees the old or the new table
        dispatcher.generation += 1
        self.routes = result.routes
        if self.parts is not None:
            self.parts.routes = result.routes
            self.parts.reloads["ok"] += 1
        await subscriber.set_patterns(self._globs(index))
        summary, changed = reloading.applied(changes, len(result.routes))
        self.files.record(True, summary, findings + changed)
        sdnotify.notify("READY=1", f"STATUS=routing with {len(result.routes)} routes")
        return True

    async def _shutdown(
        self, intake: asyncio.Task[None], dispatcher: Dispatcher, publisher: Outbox
    ) -> None:
        sdnotify.notify("STOPPING=1")
        log.info("%s: stopping; no new events are taken", self.intents.stop or "stop")
        await cancel_until_done(intake, "the Redis intake")
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
