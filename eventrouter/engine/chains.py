"""Derived-event ancestry: which routes led to an event, for the loop guard and the logs.

Derived events go out through Redis and come back like any other, with the payload the
route rendered and nothing else. So the router remembers, for a while, what it published
and the chain behind it, and recognises the message when it returns; the event's payload
is never altered to carry bookkeeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence

from eventrouter.model import ChainLink

#: How long a derived event is remembered while waiting for it to come back from Redis.
CHAIN_TTL = 60.0
#: Most derived events remembered at once.
CHAIN_MAX = 100_000

Chain = tuple[ChainLink, ...]


def chain_text(chain: Sequence[ChainLink]) -> str:
    """Return ``route emitted channel -> route emitted channel`` for a log line."""
    return " -> ".join(f"{link.route} emitted {link.channel}" for link in chain)


class ChainTracker:
    """Remember the chains of published derived events until they come back."""

    def __init__(self, ttl: float = CHAIN_TTL, limit: int = CHAIN_MAX) -> None:
        self.ttl = ttl
        self.limit = limit
        self._pending: OrderedDict[tuple[str, bytes], tuple[float, deque[Chain]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def remember(self, channel: str, data: bytes, chain: Chain) -> None:
        """Record that ``data`` was published on ``channel`` by ``chain``."""
        now = time.monotonic()
        while self._pending:  # oldest first: forget what never came back
            stamp = next(iter(self._pending.values()))[0]
            if now - stamp < self.ttl and len(self._pending) < self.limit:
                break
            self._pending.popitem(last=False)
        entry = self._pending.get((channel, data))
        if entry is None:
            self._pending[(channel, data)] = (now, deque([chain]))
        else:
            entry[1].append(chain)

    def adopt(self, channel: str, data: bytes) -> Chain:
        """Return the chain behind a message we published, or () for anyone else's."""
        entry = self._pending.get((channel, data))
        if entry is None:
            return ()
        chain = entry[1].popleft()
        if not entry[1]:
            del self._pending[(channel, data)]
        return chain

    def unreturned(self, queued: Mapping[tuple[str, bytes], int]) -> list[tuple[str, bytes, Chain]]:
        """Forget and return what was published and has not come back, oldest first.

        ``queued`` counts what is remembered but still waits in the outbox: not published,
        so not missing. Of several identical events, the newest are the queued ones.
        """
        lost: list[tuple[str, bytes, Chain]] = []
        for key, (_, chains) in list(self._pending.items()):
            keep = min(queued.get(key, 0), len(chains))
            while len(chains) > keep:
                lost.append((*key, chains.popleft()))
            if not chains:
                del self._pending[key]
        return lost
