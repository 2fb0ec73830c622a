"""Redis pub/sub in one process, with the interfaces the daemon uses (``service.wiring``).

``MemoryBus.publish`` is PUBLISH: each subscriber one of whose globs matches the channel gets
the message once (however many of its globs match, as ``intake.Subscriber`` deduplicates),
later, from its own task; the number of receivers is returned at once. Derived events a
router publishes come back to its own subscription the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable

from eventrouter.config.patterns import ChannelPattern
from eventrouter.redis.intake import YIELD_EVERY
from eventrouter.runtime.ports import Receipt
from eventrouter.testing.fakes import Beacon

log = logging.getLogger(__name__)

Message = tuple[str, bytes]


def _matchable(channel: str | bytes) -> tuple[str, str]:
    """Return (text a glob is matched on, text a handler is given) for a channel.

    Redis matches bytes; ``ChannelPattern`` matches the bytes a string encodes, so a channel
    that is not UTF-8 keeps its bytes through ``surrogateescape``.
    """
    raw = channel.encode("utf-8", "surrogateescape") if isinstance(channel, str) else channel
    return raw.decode("utf-8", "surrogateescape"), raw.decode("utf-8", "replace")


class Listener:
    """A plain subscriber (a test, `redis-cli SUBSCRIBE`): keeps what arrives on its glob."""

    def __init__(self, glob: str) -> None:
        self.glob = glob
        self.pattern = ChannelPattern.parse(glob)
        #: Every message received, in order.
        self.messages: list[Message] = []

    def payloads(self) -> list[bytes]:
        """Return the data of every message received."""
        return [data for _, data in self.messages]


class MemoryBus:
    """Publish and pattern subscriptions in memory; counts what is not yet handled."""

    def __init__(self, beacon: Beacon | None = None) -> None:
        self.beacon = beacon if beacon is not None else Beacon()
        #: Every PUBLISH, in order: (channel as given to handlers, data).
        self.published: list[Message] = []
        #: Whether the server is a master (the leader's) or a replica.
        self.master = True
        #: Messages handed to subscribers and receipts, not yet handled.
        self.in_flight = 0
        self._subscribers: list[MemorySubscriber] = []
        self._listeners: list[Listener] = []
        self._refusals: list[tuple[ChannelPattern, str]] = []
        self._roles: list[MemoryRole] = []

    def publish(self, channel: str | bytes, data: bytes | str) -> int:
        """PUBLISH ``data`` on ``channel``; return how many subscribers receive it."""
        if isinstance(data, str):
            data = data.encode()
        matched, shown = _matchable(channel)
        self.published.append((shown, data))
        receivers = 0
        for subscriber in self._subscribers:
            if subscriber.wants(matched):
                subscriber.inbox.append((shown, data))
                subscriber.arrived.set()
                self.in_flight += 1
                receivers += 1
        for listener in self._listeners:
            if listener.pattern.match(matched) is not None:
                listener.messages.append((shown, data))
                receivers += 1
        return receivers

    def listen(self, glob: str) -> Listener:
        """Subscribe a listener to ``glob`` (PSUBSCRIBE) and return it."""
        listener = Listener(glob)
        self._listeners.append(listener)
        return listener

    def refuse(self, glob: str, reason: str) -> None:
        """Make the routers' publications on channels matching ``glob`` fail (as NOPERM)."""
        self._refusals.append((ChannelPattern.parse(glob), reason))

    def refusal(self, channel: str) -> str | None:
        """Return why a publication on ``channel`` is refused, or None."""
        matched, _ = _matchable(channel)
        return next((why for glob, why in self._refusals if glob.match(matched) is not None), None)

    def set_master(self, master: bool) -> None:
        """Make the server a master or a replica; the routers' role watches read it again."""
        self.master = master
        for role in self._roles:
            role.ask()

    def later(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` soon, as an answer from the server arrives: after this turn."""
        self.in_flight += 1

        def answer() -> None:
            try:
                callback()
            finally:
                self.handled()

        asyncio.get_running_loop().call_soon(answer)

    def handled(self, count: int = 1) -> None:
        """Count ``count`` messages handled; wake the waiters when none is left."""
        self.in_flight -= count
        if not self.in_flight:
            self.beacon.fire()

    def attach(self, subscriber: MemorySubscriber) -> None:
        """Connect a subscriber: it receives from now on."""
        self._subscribers.append(subscriber)

    def detach(self, subscriber: MemorySubscriber) -> None:
        """Disconnect a subscriber: what it did not handle yet is lost, as on Redis."""
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
        lost = len(subscriber.inbox)
        subscriber.inbox.clear()
        if lost:
            self.handled(lost)


class MemorySubscriber:
    """A router's subscription on a ``MemoryBus`` (the interface of ``intake.Subscriber``)."""

    def __init__(
        self,
        bus: MemoryBus,
        url: str,
        handler: Callable[[str, bytes], bool | None],
        connected: asyncio.Event | None = None,
    ) -> None:
        self.bus, self.url, self.handler = bus, url, handler
        self.connected = connected if connected is not None else asyncio.Event()
        self.patterns: set[str] = set()
        self.reconnects = 0
        self.last_outage: tuple[float, float | None] | None = None
        self.inbox: deque[Message] = deque()
        self.arrived = asyncio.Event()
        self._globs: list[ChannelPattern] = []

    async def set_patterns(self, patterns: Iterable[str]) -> None:
        """Subscribe to ``patterns`` from now on (the new set replaces the old at once)."""
        self.patterns = set(patterns)
        self._globs = [ChannelPattern.parse(glob) for glob in sorted(self.patterns)]

    def wants(self, channel: str) -> bool:
        """Return True when one of the globs matches ``channel`` (as Redis bytes)."""
        return any(glob.match(channel) is not None for glob in self._globs)

    async def run(self) -> None:
        """Deliver each message to the handler until cancelled."""
        self.bus.attach(self)
        self.connected.set()
        count = 0
        try:
            while True:
                while not self.inbox:
                    self.arrived.clear()
                    await self.arrived.wait()
                channel, data = self.inbox.popleft()
                try:
                    urgent = self.handler(channel, data)
                except Exception:  # as intake.Subscriber: one bad event must not stop the intake
                    log.exception("internal error while handling an event on %r", channel)
                    urgent = False
                finally:
                    self.bus.handled()
                count += 1
                if urgent or count % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let the run it started go first, as the intake does
        finally:
            self.connected.clear()
            self.bus.detach(self)


class MemoryPublisher:
    """A router's publisher on a ``MemoryBus`` (the interface of ``outbox.RedisPublisher``)."""

    def __init__(self, bus: MemoryBus, url: str) -> None:
        self.bus, self.url = bus, url
        self.sent = 0
        self.refused = 0

    @property
    def pending(self) -> int:
        """Return 0: every event is handed to the bus at once."""
        return 0

    def queued(self) -> Counter[tuple[str, bytes]]:
        """Return nothing: no event waits to be sent."""
        return Counter()

    def start(self) -> None:
        """Nothing to start."""

    async def publish(self, channel: str, data: bytes, receipt: Receipt | None = None) -> None:
        """Publish at once; tell ``receipt`` what the server answered after this turn."""
        reason = self.bus.refusal(channel)
        if reason is not None:
            self.refused += 1
            if receipt is None:
                log.error("Redis refused to publish on %r: %s", channel, reason)
            else:
                self.bus.later(lambda: receipt.refused(reason))
            return
        receivers = self.bus.publish(channel, data)
        self.sent += 1
        if receipt is not None:
            self.bus.later(lambda: receipt.sent(receivers))

    async def settle(self) -> None:
        """Nothing is ever left unanswered."""

    async def close(self, grace: float = 5.0) -> int:
        """Nothing is left to send; return 0."""
        return 0


class MemoryRole:
    """A router's role watch on a ``MemoryBus``: the leader's while the bus is a master."""

    def __init__(self, bus: MemoryBus, on_change: Callable[[bool], None] | None = None) -> None:
        self.bus, self.on_change = bus, on_change
        self.leader: bool | None = None
        self._asked = asyncio.Event()
        bus._roles.append(self)

    def ask(self) -> None:
        """Read the role again now."""
        self._asked.set()

    async def refresh(self) -> bool | None:
        """Read the role; tell ``on_change`` when it changed."""
        leader = self.bus.master
        if leader != self.leader and self.on_change is not None:
            self.on_change(leader)
        self.leader = leader
        return leader

    async def run(self) -> None:
        """Read the role each time it is asked for, until cancelled."""
        while True:
            await self.refresh()
            await self._asked.wait()
            self._asked.clear()

    async def close(self) -> None:
        """Stop following the bus."""
        if self in self.bus._roles:
            self.bus._roles.remove(self)
