"""What the dispatcher talks to instead of Redis: small protocols, so it runs without a server.

The daemon plugs Redis behind them (``service/wiring.py``); the in-process harness
(``eventrouter.testing``) plugs an in-memory bus, fake agents and a fake journal.
"""

from __future__ import annotations

from typing import Any, Protocol

from eventrouter.config.handlers import folder_exists
from eventrouter.engine.decide import RouterContext
from eventrouter.model import ONE_NODE, RouterInfo, Settings, TaskResult
from eventrouter.runtime.journal import Failure


class FailureJournal(Protocol):
    """Where failed runs go."""

    async def record(self, failure: Failure) -> str:
        """Record a failure; return its id, or "" when it could not be recorded."""
        ...


class Receipt(Protocol):
    """Told what became of one derived event handed to the publisher."""

    def sent(self, receivers: int) -> None:
        """The event went out."""

    def refused(self, reason: str) -> None:
        """Redis refused to publish this event alone."""


class Publisher(Protocol):
    """Where derived events go."""

    async def publish(self, channel: str, data: bytes, receipt: Receipt | None = None) -> None:
        """Hand ``data`` over for publication on ``channel``, in order."""
        ...


class TaskSubmitter(Protocol):
    """Where ``task:`` actions go: NS8 agents' queues on the leader's Redis."""

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
        """Submit a task; unless ``wait`` is false, wait for its exit code; raise TaskError."""
        ...


def router_context(settings: Settings, router: RouterInfo = ONE_NODE) -> RouterContext:
    """Return what the engine needs of the settings to decide."""
    return RouterContext(
        events_dirs=tuple(settings.events_dirs),
        max_depth=settings.max_depth,
        max_payload=settings.max_payload,
        folder_exists=folder_exists,
        router=router,
    )
