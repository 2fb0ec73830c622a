"""Prometheus metrics of a running router (`run --metrics ADDR:PORT`), with prometheus-client.

prometheus-client is an optional extra and lives only here. The router's own counters and
histograms are read when a scrape arrives, on the event loop, so the routing path pays
nothing for metrics and no thread reads state the loop is changing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the router's parts are imported by the collector, not by `run`'s checks
    from eventrouter.runtime.stats import Histogram, Histograms
    from eventrouter.service.observe import Parts

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "--metrics needs the prometheus-client package: pip install 'eventrouter[metrics]' "
    "(or pip install prometheus-client in the router's environment)"
)
#: Longest request head read from a scraper, and how long it may take to send it.
REQUEST_MAX, REQUEST_TIMEOUT = 8192, 5.0


def missing() -> str | None:
    """Return how to install prometheus-client when it is not installed, else None."""
    return None if importlib.util.find_spec("prometheus_client") is not None else INSTALL_HINT


def parse_address(text: str) -> tuple[str, int]:
    """Return (host, port) of ``ADDR:PORT`` (``[::1]:9100`` for IPv6); raise ValueError."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected ADDR:PORT, for example 127.0.0.1:9464, got {text!r}")
    return host, int(port)


def _histograms(name: str, doc: str, by_route: Histograms) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    family = HistogramMetricFamily(name, doc, labels=["route"])
    for route, histogram in sorted(by_route.items()):
        family.add_metric([route], _buckets(histogram), histogram.total)
    return family


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [(bound, float(count)) for bound, count in histogram.cumulative()]


class RouterCollector:
    """Turn the router's counters into Prometheus metrics at each scrape."""

    def __init__(self, parts: Callable[[], Parts | None]) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Any]:
        """Yield every metric family (the prometheus-client collector protocol)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from eventrouter.service.observe import DROPS, lane_depths

        parts = self.parts()
        if parts is None:
            return
        dispatcher, counters = parts.dispatcher, parts.dispatcher.counters

        def counter(name: str, doc: str, value: float) -> Any:
            return CounterMetricFamily(name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> Any:
            return GaugeMetricFamily(name, doc, value=value)

        yield counter(
            "eventrouter_events_received", "Events received from Redis", counters["events"]
        )
        handled = counters["events"] - counters["dropped_oversize"]
        yield counter("eventrouter_events_handled", "Events decided (not dropped whole)", handled)
        dropped = CounterMetricFamily(
            "eventrouter_events_dropped", "Events or runs dropped, by reason", labels=["reason"]
        )
        for reason, key in DROPS.items():
            dropped.add_metric([reason], counters[key])
        yield dropped
        runs = CounterMetricFamily(
            "eventrouter_runs", "Runs ended, by route and outcome", labels=["route", "outcome"]
        )
        for (route, outcome), count in sorted(dispatcher.runs.items()):
            runs.add_metric([route, outcome], count)
        yield runs
        yield _histograms(
            "eventrouter_run_duration_seconds", "Duration of runs", dispatcher.run_seconds
        )
        yield _histograms(
            "eventrouter_step_duration_seconds", "Duration of steps", dispatcher.step_seconds
        )
        depth = GaugeMetricFamily(
            "eventrouter_queue_depth", "Runs waiting, by route lane", labels=["lane"]
        )
        for lane, count in sorted(lane_depths(dispatcher).items()):
            depth.add_metric([lane], count)
        yield depth
        yield gauge("eventrouter_queued_runs", "Runs waiting in all", dispatcher.scheduler.pending)
        yield gauge(
            "eventrouter_running_steps", "Step processes running", dispatcher.runner.running
        )
        derived = CounterMetricFamily(
            "eventrouter_derived_events", "Derived events published, by route", labels=["route"]
        )
        for route, count in sorted(dispatcher.derived.items()):
            derived.add_metric([route], count)
        yield derived
        yield counter(
            "eventrouter_loop_guard_cuts", "Chains cut by the loop guard", counters["loops_cut"]
        )
        reloads = CounterMetricFamily(
            "eventrouter_reloads", "Reloads, by result", labels=["result"]
        )
        for result, count in sorted(parts.reloads.items()):
            reloads.add_metric([result], count)
        yield reloads
        yield gauge(
            "eventrouter_route_table_generation", "Route table generation", dispatcher.generation
        )
        subscriber = parts.subscriber
        yield counter(
            "eventrouter_redis_reconnects", "Subscription outages ended", subscriber.reconnects
        )
        yield gauge(
            "eventrouter_redis_connected", "1 when subscribed", subscriber.connected.is_set()
        )
        yield gauge(
            "eventrouter_outbox", "Derived events waiting to be sent", parts.publisher.pending
        )
        yield counter(
            "eventrouter_journal_recorded",
            "Failures this router recorded in the failure journal",
            counters["journaled"],
        )


class MetricsServer:
    """Serve ``/metrics`` over HTTP on the event loop."""

    def __init__(self, host: str, port: int, parts: Callable[[], Parts | None]) -> None:
        from prometheus_client import CollectorRegistry

        self.host, self.port = host, port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RouterCollector(parts))
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; raise OSError when the address cannot be bound."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        log.info(
            "metrics: serving Prometheus metrics at http://%s:%d/metrics", self.host, self.port
        )

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        method, _, rest = head[:REQUEST_MAX].partition(b" ")
        path = rest.partition(b" ")[0]
        if method == b"GET" and path in (b"/metrics", b"/"):
            body, status, kind = generate_latest(self.registry), "200 OK", CONTENT_TYPE_LATEST
        else:
            body, status, kind = b"not found; try /metrics\n", "404 Not Found", "text/plain"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        try:
            await writer.drain()
        except OSError as exc:
            log.debug("metrics: a scraper went away: %s", exc)
        finally:
            writer.close()
