"""`run --metrics ADDR:PORT`: a real scrape over HTTP on loopback after real events and steps
(the router in process, eventrouter.testing); the option's errors with the real CLI."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventrouter.runtime.steps import StepRunner
from eventrouter.service.metrics import MetricsServer
from eventrouter.testing import Harness
from tests.conftest import free_port
from tests.routerproc import REPO, Router, clean_env, write_routes, write_step

ROUTES = """\
routes:
  - name: announces
    on: a/event/added
    do:
      - run: h-ok
      - emit: {channel: a/event/announced, payload: {}}
  - name: hears
    on: a/event/announced
    do: [{run: h-fail}]
"""


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_scrape_after_real_events(tmp_path: Path) -> None:
    write_step(tmp_path / "h-ok" / "10ok", "exit 0")
    write_step(tmp_path / "h-fail" / "10fail", "exit 3")
    write_routes(tmp_path, "r.yml", ROUTES)
    port = free_port()
    async with Harness(tmp_path, runner=StepRunner()) as router:
        server = MetricsServer("127.0.0.1", port, lambda: router.parts)
        await server.start()
        try:
            await router.send("a/event/added", b"x" * 10)
            metrics = await asyncio.to_thread(_scrape, port)
            with pytest.raises(urllib.error.HTTPError) as missing:
                await asyncio.to_thread(
                    urllib.request.urlopen, f"http://127.0.0.1:{port}/nothing", timeout=5
                )
        finally:
            await server.close()
    missing.value.close()
    assert missing.value.code == 404
    assert metrics[("eventrouter_events_received_total", ())] == 2
    assert metrics[("eventrouter_runs_total", (("outcome", "ran"), ("route", "announces")))] == 1
    assert metrics[("eventrouter_runs_total", (("outcome", "failed"), ("route", "hears")))] == 1
    assert metrics[("eventrouter_derived_events_total", (("route", "announces"),))] == 1
    run_count = ("eventrouter_run_duration_seconds_count", (("route", "announces"),))
    assert metrics[run_count] == 1
    assert metrics[("eventrouter_step_duration_seconds_count", (("route", "hears"),))] == 1
    inf = ("eventrouter_step_duration_seconds_bucket", (("le", "+Inf"), ("route", "hears")))
    assert metrics[inf] == 1
    assert metrics[("eventrouter_redis_connected", ())] == 1
    assert metrics[("eventrouter_running_steps", ())] == 0
    assert metrics[("eventrouter_journal_recorded_total", ())] == 1
    assert metrics[("eventrouter_reloads_total", (("result", "ok"),))] == 0
    assert metrics[("eventrouter_events_dropped_total", (("reason", "queue full"),))] == 0


def test_metrics_off_by_default_and_a_clear_hint_without_the_package(tmp_path: Path) -> None:
    hide = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "from eventrouter.cli.main import main; sys.exit(main())"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide, "run", "--routes", str(tmp_path), "--metrics", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "pip install 'eventrouter[metrics]'" in result.stderr


def test_metrics_port_taken_is_a_clear_error(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        router = Router(
            [
                "run",
                "--redis",
                redis_url,
                "--routes",
                str(tmp_path),
                "--metrics",
                f"127.0.0.1:{port}",
            ],
            tmp_path / "log",
        )
        try:
            assert router.proc.wait(30) == 1
            assert "eventrouter run: " in router.log and "address already in use" in router.log
        finally:
            router.kill()
