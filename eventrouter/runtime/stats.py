"""Duration histograms and run totals kept by the dispatcher, read by `status` and metrics.

Kept here, without prometheus-client, so that the runtime needs no optional package: the
metrics endpoint turns them into Prometheus histograms when it is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: runevents imports the lanes, which import the history
    from eventrouter.runtime.runevents import EmitRefused, NotFired, RunDropped, RunEnded

#: Upper bounds of the buckets, in seconds (Prometheus' defaults, plus longer steps).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Histogram:
    """Counts of observations per bucket, and their sum."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        """Return how many observations were counted."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """Return (upper bound, observations at or below it), as Prometheus lists buckets."""
        found, running = [], 0
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            found.append((bound, running))
        return found


class Histograms(defaultdict[str, Histogram]):
    """One histogram per label value (a route name)."""

    def __init__(self) -> None:
        super().__init__(Histogram)


class RunMetrics:
    """Runs by (route, outcome) and their durations by route: a run listener."""

    __slots__ = ("run_seconds", "runs")

    def __init__(self) -> None:
        self.runs: Counter[tuple[str, str]] = Counter()
        self.run_seconds = Histograms()

    def run_ended(self, ended: RunEnded) -> None:
        """Count and time a run that ended."""
        name = ended.job.route.name
        self.runs[(name, ended.outcome)] += 1
        self.run_seconds[name].observe(ended.seconds)

    def not_fired(self, not_fired: NotFired) -> None:
        """Nothing: only runs are counted here."""

    def run_dropped(self, dropped: RunDropped) -> None:
        """Count a run not admitted."""
        self.runs[(dropped.job.route.name, "dropped")] += 1

    def emit_refused(self, refused: EmitRefused) -> None:
        """Nothing: a refused emit is not a run of its own."""
