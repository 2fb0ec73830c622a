"""What the daemon is built from: its Redis connections, its step runner, its journal.

``Daemon`` asks a ``Wiring`` for each part. ``RedisWiring`` is the one `eventrouter run` uses;
``eventrouter.testing`` gives in-memory parts with the same interfaces, so that the daemon's
own logic (reload, retry, control requests, shutdown) runs in one process in the tests.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from eventrouter.model import Settings
from eventrouter.redis import ask, intake, outbox
from eventrouter.redis.role import RoleWatch
from eventrouter.redis.stream_journal import open_journal
from eventrouter.redis.tasks import TaskClient
from eventrouter.runtime.journal import Journal
from eventrouter.runtime.lanes import Clock
from eventrouter.runtime.ports import Receipt, TaskSubmitter
from eventrouter.runtime.runner import Runner
from eventrouter.runtime.steps import StepRunner


class Intake(Protocol):
    """The subscription events arrive on (``intake.Subscriber``)."""

    url: str
    patterns: set[str]
    connected: asyncio.Event
    reconnects: int
    last_outage: tuple[float, float | None] | None

    async def set_patterns(self, patterns: Iterable[str]) -> None:
        """Subscribe to ``patterns`` (and only those) from now on."""
        ...

    async def run(self) -> None:
        """Deliver messages to the handler until cancelled."""
        ...


@dataclass(frozen=True)
class IntakeHooks:
    """How the subscription and the rest of the daemon hold hands (see ``intake.Subscriber``)."""

    #: Set while every subscription is confirmed: the publisher is held while it is clear.
    connected: asyncio.Event
    #: Awaited after a break, before subscribing again.
    settle: Callable[[], Awaitable[None]]
    #: Called once the subscription is back, before ``connected`` is set.
    resync: Callable[[], None]


class Outbox(Protocol):
    """Where derived events and answers are published (``outbox.RedisPublisher``)."""

    url: str
    sent: int
    refused: int

    @property
    def pending(self) -> int:
        """Return how many events wait to be sent."""
        ...

    def queued(self) -> Counter[tuple[str, bytes]]:
        """Return the (channel, data) of the events not yet sent."""
        ...

    def start(self) -> None:
        """Start sending."""
        ...

    async def publish(self, channel: str, data: bytes, receipt: Receipt | None = None) -> None:
        """Hand ``data`` over for publication on ``channel``, in order."""
        ...

    async def settle(self) -> None:
        """Wait until what is being sent was answered."""
        ...

    async def close(self, grace: float = 5.0) -> int:
        """Send what is queued (within ``grace``) and stop; return what was not sent."""
        ...


class Role(Protocol):
    """Whether the server subscribed to is the master (``role.RoleWatch``)."""

    leader: bool | None

    def ask(self) -> None:
        """Read the role again now."""
        ...

    async def refresh(self) -> bool | None:
        """Read the role once."""
        ...

    async def run(self) -> None:
        """Keep the role up to date until cancelled."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class Tasks(TaskSubmitter, Protocol):
    """Where ``task:`` actions go, with a connection to release at the end."""

    async def close(self) -> None:
        """Release the connection."""
        ...


class Wiring(Protocol):
    """Makes the daemon's parts."""

    #: What lane timers and retry backoff wait on; None: the event loop.
    clock: Clock | None

    def runner(self, settings: Settings) -> Runner:
        """Return the step runner."""
        ...

    def publisher(self, url: str, gate: asyncio.Event) -> Outbox:
        """Return the publisher, held while ``gate`` is clear (the subscription is down)."""
        ...

    def subscriber(
        self,
        url: str,
        handler: Callable[[str, bytes], bool],
        settings: Settings,
        hooks: IntakeHooks,
    ) -> Intake:
        """Return the subscription, delivering each message to ``handler``."""
        ...

    async def journal(self, url: str | None, settings: Settings, state: Path) -> Journal:
        """Open the failure journal: at ``url``, or in the ``state`` folder when None."""
        ...

    def tasks(self, url: str) -> Tasks:
        """Return the task submitter for the Redis at ``url``."""
        ...

    def role(self, url: str, every: float, on_change: Callable[[bool], None]) -> Role:
        """Return the role watch of the server at ``url``."""
        ...

    def role_name(self, url: str) -> Awaitable[str]:
        """Return the ROLE of the server at ``url`` (for `status`)."""
        ...


class RedisWiring:
    """The parts of a router on Redis, with real step processes."""

    clock: Clock | None = None

    def runner(self, settings: Settings) -> Runner:
        """Return a step runner bounded as ``settings`` say."""
        return StepRunner(max_concurrency=settings.max_concurrency, kill_grace=settings.kill_grace)

    def publisher(self, url: str, gate: asyncio.Event) -> Outbox:
        """Return the pipelined publisher of derived events."""
        return outbox.RedisPublisher(url, gate=gate)

    def subscriber(
        self,
        url: str,
        handler: Callable[[str, bytes], bool],
        settings: Settings,
        hooks: IntakeHooks,
    ) -> Intake:
        """Return the pattern subscription, kept alive across outages."""
        return intake.Subscriber(
            url,
            handler,
            connected=hooks.connected,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            settle=hooks.settle,
            resync=hooks.resync,
        )

    async def journal(self, url: str | None, settings: Settings, state: Path) -> Journal:
        """Open the stream at ``url`` when this user may write it, else the local file."""
        return await open_journal(
            url, settings.journal_key, settings.journal_size, state, settings.journal_payload
        )

    def tasks(self, url: str) -> Tasks:
        """Return the NS8 task client."""
        return TaskClient(url)

    def role(self, url: str, every: float, on_change: Callable[[bool], None]) -> Role:
        """Return the watch of ``ROLE`` on the subscribe connection's server."""
        return RoleWatch(url, every=every, on_change=on_change)

    def role_name(self, url: str) -> Awaitable[str]:
        """Ask the server at ``url`` for its ROLE."""
        return ask.role(url)
