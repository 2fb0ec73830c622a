"""What runs handler folders, as the dispatcher sees it: ``steps.StepRunner``, or a test's
stand-in (``eventrouter.testing.FakeRunner``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from eventrouter.runtime.steps import HandlerResult


class Runner(Protocol):
    """What runs handler folders: ``steps.StepRunner``, or a test's stand-in."""

    @property
    def running(self) -> int:
        """Return how many step processes are running now."""
        ...

    async def run_handler(
        self,
        directory: Path,
        *,
        payload: bytes,
        env: Mapping[str, str],
        event_name: str,
        event_source: str,
        timeout: float | None,  # noqa: ASYNC109 (per step, not for the whole call)
        tag: str,
        group: str = "",
    ) -> HandlerResult:
        """Run the steps of ``directory`` in order, stopping at the first that fails."""
        ...

    async def terminate_all(self) -> int:
        """Stop every running step (TERM, then KILL); return how many."""
        ...

    def kill_now(self) -> int:
        """Kill every running step at once and start no more; return how many."""
        ...
