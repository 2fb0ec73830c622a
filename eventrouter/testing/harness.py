"""A whole router in the test's own process: the real daemon on in-memory parts.

``Harness`` loads and checks the route files as `eventrouter run` does and starts the real
``Daemon`` with a ``MemoryWiring``: an in-memory bus instead of Redis, a fake step runner
(or the real one), fake NS8 agents, a journal in memory and a fake clock. The test publishes
events, waits until the router has settled (``settle``: every message handled, every run
ended or parked, no signal polled for), moves the clock, reloads, retries, asks `status`
and `history`, and stops the router, all without a server or a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from eventrouter.analysis.verdict import validate
from eventrouter.config.budget import WATCHDOG
from eventrouter.config.loader import FileCache, load_routes
from eventrouter.model import Settings
from eventrouter.runtime import control
from eventrouter.runtime.dispatch import Dispatcher
from eventrouter.runtime.journal import Journal
from eventrouter.runtime.lanes import Clock
from eventrouter.runtime.runner import Runner
from eventrouter.service.daemon import Daemon
from eventrouter.service.observe import Parts
from eventrouter.service.wiring import Intake, IntakeHooks, Outbox, Role, Tasks
from eventrouter.testing.fakes import Beacon, FakeClock, FakeRunner, FakeTasks, MemoryJournal
from eventrouter.testing.memorybus import MemoryBus, MemoryPublisher, MemoryRole, MemorySubscriber

#: The URL the in-memory router is said to use, in its log and `status`.
URL = "memory://bus"
#: Longest wait for a router to settle before the test fails with what is still going.
SETTLE_WITHIN = 10.0
#: The harness's default ``stop_timeout``: runs a test left held should not keep it 30 s.
STOP_TIMEOUT = 1.0
#: The package's logger: at INFO while a harness runs (``log_level``), as `run` logs.
LOGGER = logging.getLogger("eventrouter")


class MemoryWiring:
    """The daemon's parts on a ``MemoryBus`` (the interface of ``service.wiring.Wiring``)."""

    def __init__(
        self,
        bus: MemoryBus,
        runner: Runner,
        journal: Journal,
        tasks: Tasks,
        clock: FakeClock | None,
    ) -> None:
        self.bus, self._runner, self._journal, self._tasks = bus, runner, journal, tasks
        self.clock: Clock | None = clock

    def runner(self, settings: Settings) -> Runner:
        """Return the runner given."""
        return self._runner

    def publisher(self, url: str, gate: asyncio.Event) -> Outbox:
        """Return a publisher onto the bus."""
        return MemoryPublisher(self.bus, url)

    def subscriber(
        self,
        url: str,
        handler: Callable[[str, bytes], bool],
        settings: Settings,
        hooks: IntakeHooks,
    ) -> Intake:
        """Return a subscription on the bus."""
        return MemorySubscriber(self.bus, url, handler, hooks.connected)

    async def journal(self, url: str | None, settings: Settings, state: Path) -> Journal:
        """Return the journal given."""
        return self._journal

    def tasks(self, url: str) -> Tasks:
        """Return the task submitter given."""
        return self._tasks

    def role(self, url: str, every: float, on_change: Callable[[bool], None]) -> Role:
        """Return a role watch on the bus."""
        return MemoryRole(self.bus, on_change)

    async def role_name(self, url: str) -> str:
        """Return the bus's ROLE."""
        return "master" if self.bus.master else "slave"


class Harness:
    """One router on in-memory parts; ``async with Harness(routes) as router: ...``.

    ``routes`` and ``events`` are folders, as ``--routes`` and ``--events-dir``; ``settings``
    are ``model.Settings`` fields (``max_depth=3``, ``stop_timeout=0.1``, ...; the stop
    timeout is ``STOP_TIMEOUT`` unless given). Steps run through ``FakeRunner`` unless a
    runner (``steps.StepRunner()``) is given. The package logs at ``log_level`` meanwhile.
    """

    def __init__(
        self,
        routes: Path | Sequence[Path],
        *,
        events: Sequence[Path] = (),
        runner: Runner | None = None,
        bus: MemoryBus | None = None,
        log_level: int = logging.INFO,
        **settings: Any,
    ) -> None:
        self.beacon = bus.beacon if bus is not None else Beacon()
        self.bus = bus if bus is not None else MemoryBus(self.beacon)
        self.clock = FakeClock(self.beacon)
        self.runner: Runner = runner if runner is not None else FakeRunner(self.beacon)
        self.tasks = FakeTasks()
        self.journal = MemoryJournal(settings.get("journal_payload", Settings.journal_payload))
        self.wiring = MemoryWiring(self.bus, self.runner, self.journal, self.tasks, self.clock)
        self._routes = (routes,) if isinstance(routes, Path) else tuple(routes)
        self._events = tuple(events)
        self._settings = {"instance": "router", "stop_timeout": STOP_TIMEOUT, **settings}
        self._state: Path | None = None
        self._serving: asyncio.Task[int] | None = None
        self._timeout = WATCHDOG.timeout
        self._level, self._log_level = LOGGER.level, log_level
        self.daemon: Daemon | None = None

    @property
    def fake(self) -> FakeRunner:
        """Return the fake runner (a test that gave a real one has none)."""
        assert isinstance(self.runner, FakeRunner), "this harness runs real steps"
        return self.runner

    @property
    def parts(self) -> Parts:
        """Return the running daemon's parts."""
        assert self.daemon is not None and self.daemon.parts is not None, "not started"
        return self.daemon.parts

    @property
    def serving(self) -> bool:
        """Return True while the daemon routes (it did not stop or fail)."""
        return self._serving is not None and not self._serving.done()

    @property
    def dispatcher(self) -> Dispatcher:
        """Return the running daemon's dispatcher."""
        return self.parts.dispatcher

    async def __aenter__(self) -> Harness:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            if self.serving:
                await self.stop(hurry=error is not None)  # a failed test: no grace period
        finally:
            self.close()

    async def start(self) -> None:
        """Load and check the routes as `run` does; start the daemon; wait until subscribed."""
        cache: FileCache = {}
        result = validate(load_routes(list(self._routes), cache), list(self._events))
        if not result.ok:
            raise ValueError("\n".join(str(item) for item in result.diagnostics))
        self._state = Path(tempfile.mkdtemp(prefix="er-harness-"))
        settings = Settings(
            routes_dirs=self._routes,
            events_dirs=self._events,
            redis_url=URL,
            state_dir=self._state,
            **self._settings,
        )
        WATCHDOG.timeout = settings.template_timeout  # `run --template-timeout` sets it so
        LOGGER.setLevel(self._log_level)
        try:
            self.daemon = Daemon(settings, result, cache, wiring=self.wiring)
            self._serving = asyncio.create_task(self.daemon.serve(URL, URL), name="harness")
            ready = asyncio.create_task(self.daemon.ready.wait())
            await asyncio.wait([ready, self._serving], return_when=asyncio.FIRST_COMPLETED)
            if self._serving.done():
                ready.cancel()
                self._serving.result()  # raises what stopped it
                raise RuntimeError("the router stopped while starting")
        except BaseException:
            self.close()
            raise
        self.dispatcher.scheduler.on_worker_end = self.beacon.fire

    def close(self) -> None:
        """Remove the state folder; put the template budget and the log level back."""
        WATCHDOG.timeout = self._timeout
        LOGGER.setLevel(self._level)
        if self._state is not None:
            shutil.rmtree(self._state, ignore_errors=True)
            self._state = None

    def publish(self, channel: str | bytes, data: bytes | str = b"{}") -> int:
        """PUBLISH from outside (as redis-cli would); return the receivers. See ``settle``."""
        return self.bus.publish(channel, data)

    async def send(self, channel: str | bytes, data: bytes | str = b"{}") -> int:
        """Publish, then wait until the router settled; return the receivers."""
        receivers = self.publish(channel, data)
        await self.settle()
        return receivers

    def _requests(self) -> list[asyncio.Task[bool]]:
        return list(self.daemon.requests) if self.daemon is not None else []

    def _parked(self) -> int:
        held = self.runner.held if isinstance(self.runner, FakeRunner) else 0
        return held + self.clock.sleepers

    def _going(self) -> str:
        """Return what keeps the router from being settled, or "" when nothing does."""
        dispatcher = self.dispatcher
        going = []
        if self.bus.in_flight:
            going.append(f"{self.bus.in_flight} message(s) not handled")
        if dispatcher.scheduler.workers > self._parked():
            going.append(f"{dispatcher.scheduler.workers} run(s) going, {self._parked()} parked")
        if dispatcher.recording:
            going.append("failures being recorded")
        if self.daemon is not None and self.daemon.requests:
            going.append("control requests being handled")
        return "; ".join(going)

    async def settle(self, within: float = SETTLE_WITHIN) -> None:
        """Wait until every message is handled and every run ended or is parked.

        Parked: held at a ``FakeRunner`` gate, or waiting on the fake clock. Debounced and
        throttled events wait for the clock too. Fails after ``within`` seconds, saying what
        is still going.
        """
        try:
            async with asyncio.timeout(within):
                while True:
                    waiting = [
                        *self.dispatcher.recording,
                        *(self.daemon.requests if self.daemon else ()),
                    ]
                    if waiting:
                        await asyncio.gather(*waiting, return_exceptions=True)
                        continue
                    if not self._going():
                        return
                    await self.beacon.wait()
        except TimeoutError:
            raise AssertionError(f"not settled after {within:g}s: {self._going()}") from None

    async def advance(self, seconds: float) -> None:
        """Move the fake clock on, settling after each timer or backoff that falls due."""
        end = self.clock.now + seconds
        await self.settle()
        while self.clock.fire_next(end):
            await self.settle()
        self.clock.now = end

    async def reload(self) -> bool:
        """Re-read the route files as SIGHUP does; return True when the new table is in use."""
        assert self.daemon is not None
        done = await self.daemon.reload(self.dispatcher, self.parts.subscriber)
        await self.settle()
        return done

    async def retry(self, failure_id: str, instance: str | None = None) -> None:
        """Ask for a retry on the control channel, as `eventrouter retry` does; settle."""
        assert self.daemon is not None
        name = instance if instance is not None else self.dispatcher.instance
        message = json.dumps({"id": failure_id, "instance": name}).encode()
        self.publish(self.daemon.settings.control_channel, message)
        await self.settle()

    async def ask(
        self, op: str, instance: str = control.ALL, **fields: Any
    ) -> list[dict[str, Any]]:
        """Ask `status` or `history` on the control channel; return the answers."""
        reply = control.reply_channel()
        listener = self.bus.listen(reply)
        query = control.Query(op=op, instance=instance, reply=reply, **fields)
        self.publish(control.QUERY_CHANNEL, query.to_bytes())
        await self.settle()
        answers = [control.parse_answer(data) for data in listener.payloads()]
        return [answer for answer in answers if answer is not None]

    async def stop(self, *, hurry: bool = False) -> int:
        """Stop as on SIGTERM (twice with ``hurry``); return the exit status."""
        assert self.daemon is not None and self._serving is not None
        self.daemon.intents.ask_stop("SIGTERM")
        if hurry:
            self.daemon.intents.ask_stop("SIGTERM")
        return await self._serving
