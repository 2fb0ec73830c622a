"""What runs handler folders and exec: commands, as the dispatcher sees it:
``steps.StepRunner``, or a test's stand-in (``eventrouter.testing.FakeRunner``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from eventrouter.runtime.steps import HandlerResult


class Runner(Protocol):
    """What runs handler folders: ``steps.StepRunner``, or a test's stand-in."""

    @property
    def running(self) -> int:
        """Return how many step processes are running now."""
        ...

    @property
    def base_env(self) -> Mapping[str, str]:
        """Return the router's environment, as every step's environment starts from it."""
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

    async def run_command(
        self,
        program: str,
        args: Sequence[str],
        *,
        payload: bytes,
        env: Mapping[str, str],
        event_name: str,
        event_source: str,
        timeout: float | None,  # noqa: ASYNC109 (of the command, as of each step)
        tag: str,
        group: str = "",
    ) -> HandlerResult:
        """Run one command as a step of its own (``exec:``)."""
        ...

    async def terminate_all(self) -> int:
        """Stop every running step (TERM, then KILL); return how many."""
        ...

    def kill_now(self) -> int:
        """Kill every running step at once and start no more; return how many."""
        ...
