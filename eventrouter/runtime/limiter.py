"""A fair concurrency cap: free slots go to waiting groups in turn, not in arrival order.

With a plain semaphore, a route that queues a thousand runs in ``parallel`` mode takes every
slot that frees up until its backlog is gone; here each group (route) waiting gets the next
slot in round-robin order, so one noisy route cannot starve the others.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from types import TracebackType


class FairLimiter:
    """At most ``capacity`` holders at once; waiting groups are served round-robin."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._free = capacity
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        """Return how many acquirers are waiting."""
        return sum(len(queue) for queue in self._waiting.values())

    async def acquire(self, group: str) -> None:
        """Wait for a slot; groups waiting are served in turn."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(group, deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as we gave up: pass it on
            else:
                self._forget(group, future)
            raise

    def release(self) -> None:
        """Give the slot to the next group waiting, or free it."""
        while self._waiting:
            group, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(group)  # its next waiter comes after the others
            else:
                del self._waiting[group]
            if not future.done():
                future.set_result(None)
                return
        self._free += 1

    def _forget(self, group: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(group)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[group]

    def slot(self, group: str) -> Slot:
        """Return a context that holds a slot for the duration of the ``async with`` block."""
        return Slot(self, group)


class Slot:
    """``async with limiter.slot(group)``: a class, not a generator, as it runs for every step."""

    __slots__ = ("_group", "_limiter")

    def __init__(self, limiter: FairLimiter, group: str) -> None:
        self._limiter = limiter
        self._group = group

    async def __aenter__(self) -> None:
        """Wait for a slot (a cancelled wait holds none)."""
        await self._limiter.acquire(self._group)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Give the slot back."""
        self._limiter.release()
