"""What each guarantee's bookkeeping costs alone: the router in process, each part taken out.

    .venv/bin/python bench/guarantees.py [EVENTS]

The real daemon and dispatcher run on in-memory parts (``eventrouter.testing.Harness``: a
memory bus, a fake step runner), so what is measured is the router's own CPU per event, with
no Redis and no process. Two routes are driven, one burst of EVENTS (default 3,000) at a
time: an emit-only route (``bench/event/in`` -> ``bench/event/out``, payload
``{"n": "{{ payload.n }}"}``, as ``bench/emit.py``) and a ``run:`` route (the fake runner
stands in for the steps). Each row takes one part out, in a harness of its own, and is
printed beside the router as shipped, measured in the same run (the variants take turns,
three rounds; each keeps its best):

* ``history``: the ring of the last events and what each route did with them (`eventrouter
  history`): the trace of each event, of each route, of each derived event;
* ``run metrics``: the runs by route and outcome and their duration histograms (`status`,
  ``--metrics``);
* ``derived-event record``: the chains of derived events kept until they come back (the
  loop guard's depth, and the recovery of what a broken subscription lost);
* ``INFO line``: the one log line per run (and per emit) at the default log level: the
  shipped figure is at WARNING, this row at INFO, so it is the line's cost, not a saving.

Taking a part out breaks what it serves: these variants exist only here. Not a test: the
figures move by 10 % from run to run; read each against the shipped row of the same run.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emit import EMIT_ROUTE

from eventrouter.runtime.stats import RunMetrics
from eventrouter.testing import Harness

# The emit route of bench/emit.py, and a run: route beside it.
ROUTES = (
    EMIT_ROUTE
    + """\
  - name: run
    on: bench/event/job
    do:
      - run: %s
"""
)
WARM_UP = 200


class _NoTrace:
    """An event's trace that keeps nothing."""

    __slots__ = ()
    routes: tuple[Any, ...] = ()
    derived: list[Any] = []  # noqa: RUF012 (never kept: see emitting below)

    def add(self, *args: Any, **kwargs: Any) -> None:
        """Keep nothing; the job then has no trace to update."""


class _NoHistory:
    """A history that keeps nothing."""

    events: tuple[Any, ...] = ()

    def start(self, *args: Any, **kwargs: Any) -> _NoTrace:
        """Return a trace that keeps nothing."""
        return _NoTrace()

    def emitting(self, *args: Any, **kwargs: Any) -> None:
        """Keep nothing."""


class _NoChains:
    """A record of derived events that remembers none."""

    def __len__(self) -> int:
        return 0

    def remember(self, *args: Any) -> None:
        """Remember nothing."""

    def adopt(self, *args: Any) -> tuple[()]:
        """Every event is someone else's."""
        return ()

    def unreturned(self, *args: Any) -> list[Any]:
        """Nothing was remembered."""
        return []


def _no_history(router: Harness) -> None:
    dispatcher = router.dispatcher
    dispatcher.history = dispatcher.actions.history = _NoHistory()  # type: ignore[assignment]
    dispatcher.listeners = tuple(
        item for item in dispatcher.listeners if type(item).__name__ != "RunTraces"
    )


def _no_metrics(router: Harness) -> None:
    dispatcher = router.dispatcher
    dispatcher.listeners = tuple(
        item for item in dispatcher.listeners if not isinstance(item, RunMetrics)
    )


def _no_chains(router: Harness) -> None:
    dispatcher = router.dispatcher
    dispatcher.chains = dispatcher.actions.chains = _NoChains()  # type: ignore[assignment]


#: (row, what is taken out, log level).
VARIANTS: list[tuple[str, Callable[[Harness], None] | None, int]] = [
    ("as shipped (log level WARNING)", None, logging.WARNING),
    ("without history", _no_history, logging.WARNING),
    ("without run metrics", _no_metrics, logging.WARNING),
    ("without the derived-event record", _no_chains, logging.WARNING),
    ("with the INFO line per run", None, logging.INFO),
]


async def _burst(routes: Path, change: Callable[[Harness], None] | None, level: int,
                 channel: str, events: int) -> float:  # fmt: skip
    """Return the CPU seconds per event of one burst through a fresh, warmed-up harness."""
    router = Harness(routes, log_level=level)
    await router.start()
    try:
        if change is not None:
            change(router)
        for seq in range(WARM_UP):
            router.publish(channel, b'{"n": %d}' % seq)
        await router.settle()
        cpu = time.process_time()
        for seq in range(events):
            router.publish(channel, b'{"n": %d}' % seq)
        await router.settle()
        return (time.process_time() - cpu) / events
    finally:
        await router.stop()
        router.close()


async def measure(events: int, rounds: int = 3) -> list[tuple[str, float, float]]:
    """Return (row, µs per emit event, µs per run event) for every variant.

    The variants take turns, round after round, so that a busy moment of the machine weighs
    on all of them; each keeps its best round.
    """
    with tempfile.TemporaryDirectory(prefix="erb-guarantees-") as temp:
        folder = Path(temp) / "handler"
        folder.mkdir()
        step = folder / "10step"
        step.write_text("#!/bin/sh\nexit 0\n")
        step.chmod(0o755)
        routes = Path(temp) / "routes.d"
        routes.mkdir()
        (routes / "bench.yml").write_text(ROUTES % folder)
        best = {name: [float("inf"), float("inf")] for name, _, _ in VARIANTS}
        for _ in range(rounds):
            for name, change, level in VARIANTS:
                for at, channel in enumerate(("bench/event/in", "bench/event/job")):
                    spent = await _burst(routes, change, level, channel, events)
                    best[name][at] = min(best[name][at], spent)
        return [(name, emit * 1e6, run * 1e6) for name, (emit, run) in best.items()]


def main() -> None:
    """Print one row per variant, beside the router as shipped."""
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rows = asyncio.run(measure(events))
    _, base_emit, base_run = rows[0]
    print(f"CPU per event in process, best of 3 rounds of {events} (memory bus, fake steps)")
    print(f"{'variant':38} {'emit route':>14} {'':>9} {'run: route':>14} {'':>9}")
    for name, emit, run in rows:
        print(
            f"{name:38} {emit:11.1f} µs {emit - base_emit:+8.1f} "
            f"{run:11.1f} µs {run - base_run:+8.1f}"
        )


if __name__ == "__main__":
    main()
