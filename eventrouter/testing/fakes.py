"""Stand-ins for what a router waits on: step processes, NS8 agents, the journal, time.

Each keeps what it was asked, so a test can look, and answers as the test scripted it, at
once. What waits for the test (a held step, a backoff on the fake clock) is *parked*: the
harness counts the router settled when every run left is parked.
"""

from __future__ import annotations

import asyncio
import builtins
import heapq
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventrouter.config.handlers import list_steps, reason_of
from eventrouter.errors import TaskError
from eventrouter.model import TaskResult
from eventrouter.runtime.journal import MAX_PAYLOAD, Failure, bounded, matches
from eventrouter.runtime.steps import HandlerResult, StepResult, describe_status

#: How the fake runner ends a held run that the router stops (SIGTERM) or kills (SIGKILL).
TERMINATED, KILLED = -15, -9


log = logging.getLogger(__name__)


class Beacon:
    """Wakes whoever waits for the router to settle, each time something may have changed."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def fire(self) -> None:
        """Wake every waiter: they look again."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Return at the next ``fire``."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter


@dataclass
class FakeTimer:
    """A call the fake clock makes when it falls due, unless cancelled."""

    callback: Callable[..., None]
    args: tuple[Any, ...]
    cancelled: bool = False

    def cancel(self) -> None:
        """Do not make the call."""
        self.cancelled = True


class FakeClock:
    """Time that moves only when the test says (``Harness.advance``).

    Lane timers (debounce, throttle) and retry backoff wait on it; a run in backoff is parked.
    """

    def __init__(self, beacon: Beacon | None = None) -> None:
        self.now = 0.0
        self.beacon = beacon if beacon is not None else Beacon()
        self._due: list[tuple[float, int, FakeTimer | asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._sleeping: set[asyncio.Future[None]] = set()

    @property
    def sleepers(self) -> int:
        """Return how many runs wait on ``sleep`` (woken ones no longer count)."""
        return sum(not woken.done() for woken in self._sleeping)

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> FakeTimer:
        """Call ``callback(*args)`` ``delay`` seconds from now."""
        timer = FakeTimer(callback, args)
        heapq.heappush(self._due, (self.now + delay, next(self._order), timer))
        return timer

    async def sleep(self, delay: float) -> None:
        """Return once the clock was moved ``delay`` seconds on."""
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._due, (self.now + delay, next(self._order), woken))
        self._sleeping.add(woken)
        self.beacon.fire()
        try:
            await woken
        finally:
            self._sleeping.discard(woken)

    def advance(self, seconds: float) -> None:
        """Move time on, making every call that falls due meanwhile, in order.

        Nothing runs between two calls: ``Harness.advance`` settles the router after each.
        """
        end = self.now + seconds
        while self.fire_next(end):
            pass
        self.now = end

    def fire_next(self, until: float) -> bool:
        """Make the earliest call due at or before ``until``; return False when there is none."""
        while self._due and self._due[0][0] <= until:
            when, _, item = heapq.heappop(self._due)
            self.now = max(self.now, when)
            if isinstance(item, FakeTimer):
                if not item.cancelled:
                    item.callback(*item.args)
                    return True
            elif not item.done():  # a sleeper cancelled meanwhile is skipped
                item.set_result(None)
                return True
        return False


@dataclass(frozen=True)
class StepCall:
    """One handler run the router asked for."""

    folder: Path
    payload: bytes
    env: Mapping[str, str]
    event_name: str
    event_source: str
    timeout: float | None
    tag: str
    group: str

    @property
    def name(self) -> str:
        """Return the handler folder's name."""
        return self.folder.name


class Gate:
    """Holds the runs of one handler folder until the test opens it."""

    def __init__(self) -> None:
        self.status: int | None = None  # None while closed
        self._waiting: list[asyncio.Future[int]] = []

    @property
    def waiting(self) -> int:
        """Return how many runs wait at the gate."""
        return sum(not waiter.done() for waiter in self._waiting)

    def open(self, status: int = 0) -> None:
        """Let the runs waiting, and every later one, end with ``status``."""
        self.status = status
        self.end_all(status)

    def end_all(self, status: int) -> int:
        """End the runs waiting now with ``status`` (the gate stays as it is); return how many."""
        waiting, self._waiting = self._waiting, []
        ended = 0
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(status)
                ended += 1
        return ended

    def enter(self) -> asyncio.Future[int]:
        """Return what a run arriving now waits on: the exit status it ends with."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.status is not None:
            waiter.set_result(self.status)
        else:
            self._waiting.append(waiter)
        return waiter


class FakeRunner:
    """Runs handler folders without processes: each run ends at once as scripted.

    By default every step of the folder succeeds. ``exits`` scripts the exit status of the
    next runs of a folder; ``hold`` keeps its runs going until the test opens the gate.
    Folders are named by their last path component.
    """

    def __init__(
        self, beacon: Beacon | None = None, base_env: Mapping[str, str] | None = None
    ) -> None:
        self.beacon = beacon if beacon is not None else Beacon()
        #: The router's environment as steps would start from it: empty unless given.
        self._base_env = dict(base_env or {})
        #: Every run asked for, in order.
        self.calls: list[StepCall] = []
        #: Every exec: command asked for, program first.
        self.commands: list[tuple[str, ...]] = []
        #: Runs stopped while going (cancelled: a restart, or the router stopping).
        self.stopped: list[StepCall] = []
        self.terminated = 0
        self.stopping = False
        self._active = 0
        self._statuses: dict[str, deque[int]] = {}
        self._tails: dict[str, tuple[str, ...]] = {}
        self._gates: dict[str, Gate] = {}

    @property
    def running(self) -> int:
        """Return how many runs are going (as ``StepRunner`` counts its processes)."""
        return self._active

    @property
    def base_env(self) -> Mapping[str, str]:
        """Return the environment steps start from (hermetic: only what the test gave)."""
        return self._base_env

    @property
    def held(self) -> int:
        """Return how many runs wait at a gate now (opened ones no longer count)."""
        return sum(gate.waiting for gate in self._gates.values())

    def exits(self, folder: str, *statuses: int, tail: Sequence[str] = ()) -> None:
        """Make the next runs of ``folder`` exit with ``statuses`` in turn, then succeed."""
        self._statuses.setdefault(folder, deque()).extend(statuses)
        self._tails[folder] = tuple(tail)

    def hold(self, folder: str) -> Gate:
        """Keep the runs of ``folder`` going until the returned gate is opened."""
        return self._gates.setdefault(folder, Gate())

    def runs(self, folder: str) -> list[StepCall]:
        """Return the runs of ``folder`` so far."""
        return [call for call in self.calls if call.name == folder]

    async def run_handler(
        self,
        directory: Path,
        *,
        payload: bytes,
        env: Mapping[str, str],
        event_name: str,
        event_source: str,
        timeout: float | None,  # noqa: ASYNC109 (the interface's: per step)
        tag: str,
        group: str = "",
    ) -> HandlerResult:
        """Record the run; end it as scripted."""
        call = StepCall(
            directory, payload, dict(env), event_name, event_source, timeout, tag, group or tag
        )
        self.calls.append(call)
        try:
            steps, _ = list_steps(directory)
        except OSError as exc:
            return HandlerResult(
                directory, (), False, f"handler directory {directory}: {reason_of(exc)}"
            )
        if self.stopping:
            error = f"handler {directory} not started: the router is stopping"
            return HandlerResult(directory, (), False, error)
        self._active += 1
        try:
            status = await self._status(call.name)
        except asyncio.CancelledError:  # the run was stopped: restart mode, or shutdown
            self.stopped.append(call)
            raise
        finally:
            self._active -= 1
        result = self._result(directory, [step.name for step in steps] or ["10step"], status)
        if not result.ok:  # as StepRunner says it: the dispatcher's lines rely on it
            log.error("%s %s", tag, result.error)
        return result

    async def _status(self, folder: str) -> int:
        gate = self._gates.get(folder)
        if gate is not None and gate.status is None:
            waiter = gate.enter()
            self.beacon.fire()
            return await waiter
        scripted = self._statuses.get(folder)
        if scripted:
            return scripted.popleft()
        return gate.status if gate is not None and gate.status is not None else 0

    async def run_command(
        self,
        program: str,
        args: Sequence[str],
        *,
        payload: bytes,
        env: Mapping[str, str],
        event_name: str,
        event_source: str,
        timeout: float | None,  # noqa: ASYNC109 (the interface's)
        tag: str,
        group: str = "",
    ) -> HandlerResult:
        """Record the command (as a run of a folder named after the program); end it as scripted."""
        path = Path(program)
        call = StepCall(
            path, payload, dict(env), event_name, event_source, timeout, tag, group or tag
        )
        self.calls.append(call)
        self.commands.append((program, *args))
        self._active += 1
        try:
            status = await self._status(call.name)
        finally:
            self._active -= 1
        return self._result(path, [path.name], status)

    def _result(self, directory: Path, names: list[str], status: int) -> HandlerResult:
        if status == 0:
            return HandlerResult(directory, tuple(StepResult(name, 0) for name in names), True)
        failing = StepResult(names[0], status)
        how = describe_status(status, timed_out=False, timeout=None)
        error = f"step {names[0]} of handler {directory} failed: {how}"
        return HandlerResult(
            directory, (failing,), False, error, self._tails.get(directory.name, ())
        )

    async def terminate_all(self) -> int:
        """End every held run as SIGTERM would; return how many."""
        self.stopping = True
        ended = sum(gate.end_all(TERMINATED) for gate in self._gates.values())
        self.terminated += ended
        return ended

    def kill_now(self) -> int:
        """End every held run as SIGKILL would, and start no more; return how many."""
        self.stopping = True
        return sum(gate.end_all(KILLED) for gate in self._gates.values())


@dataclass(frozen=True)
class TaskCall:
    """One task the router submitted."""

    agent: str
    action: str
    data: Any
    limit: float
    wait: bool
    extra: dict[str, Any] | None
    parent: str


@dataclass
class _Agent:
    actions: dict[str, deque[int | TaskResult | TaskError]] = field(default_factory=dict)


class FakeTasks:
    """NS8 agents that answer as the test scripted them.

    An agent the test never scripted is not listening (a ``TaskError``, as from Redis); an
    action it was not given answers exit code 8, NS8's "no such action".
    """

    def __init__(self) -> None:
        self.calls: list[TaskCall] = []
        self.closed = False
        self._agents: dict[str, _Agent] = {}

    def answer(self, agent: str, action: str, *results: int | TaskResult | TaskError) -> None:
        """Make ``agent`` answer ``action`` with ``results`` in turn; the last one repeats."""
        self._agents.setdefault(agent, _Agent()).actions.setdefault(action, deque()).extend(
            results or (0,)
        )

    async def run(
        self,
        agent: str,
        action: str,
        data: Any,
        *,
        limit: float,
        wait: bool = True,
        extra: dict[str, Any] | None = None,
        parent: str = "",
    ) -> TaskResult:
        """Answer the task as scripted; raise TaskError for an agent not listening."""
        self.calls.append(TaskCall(agent, action, data, limit, wait, extra, parent))
        task_id = str(uuid.uuid4())
        found = self._agents.get(agent)
        if found is None:
            raise TaskError(f"agent {agent} is not listening (no client named {agent!r})")
        if not wait:
            return TaskResult(task_id, None)
        answers = found.actions.get(action)
        if not answers:
            return TaskResult(task_id, 8, error=f"action {action} not found")
        result = answers.popleft() if len(answers) > 1 else answers[0]
        if isinstance(result, TaskError):
            raise result
        if isinstance(result, TaskResult):
            return result
        return TaskResult(task_id, result)

    async def close(self) -> None:
        """Nothing to release."""
        self.closed = True


class MemoryJournal:
    """The failure journal in a list, bounded as the real ones are."""

    def __init__(self, payload_limit: int = MAX_PAYLOAD) -> None:
        self.where = "memory"
        self.payload_limit = payload_limit
        #: Every failure recorded, oldest first.
        self.failures: builtins.list[Failure] = []

    def add(self, failure: Failure) -> str:
        """Record ``failure`` at once (a test seeding the journal); return its id."""
        failure_id = f"{len(self.failures) + 1}-0"
        self.failures.append(bounded(failure, failure_id, self.payload_limit))
        return failure_id

    async def record(self, failure: Failure) -> str:
        """Record ``failure`` under a new id; return the id."""
        return self.add(failure)

    async def list(
        self, *, limit: int = 50, route: str | None = None, event: str | None = None
    ) -> builtins.list[Failure]:
        """Return up to ``limit`` failures, newest first, filtered by route and event globs."""
        found = [item for item in reversed(self.failures) if matches(item, route, event)]
        return found[:limit]

    async def get(self, failure_id: str) -> Failure | None:
        """Return the failure ``failure_id``, or None."""
        return next((item for item in self.failures if item.id == failure_id), None)

    async def close(self) -> None:
        """Nothing to release."""
