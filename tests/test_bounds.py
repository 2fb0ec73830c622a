"""Memory bounded in bytes: queued runs (--max-queued-bytes) and journal entries (payload cut).

The scheduler alone with a fake run (no subprocess, no sleep), then the whole router in
process (eventrouter.testing)."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from eventrouter.cli.commands import _failure_lines
from eventrouter.engine.events import convention_route
from eventrouter.model import Event
from eventrouter.runtime.journal import MAX_PAYLOAD, FileJournal
from eventrouter.runtime.lanes import Job, Scheduler
from eventrouter.testing import Harness
from tests.routerproc import handler, write_routes
from tests.test_journal import failure


def _job(size: int) -> Job:
    route = convention_route(Path("/srv/events/x"))
    return Job(route, Event("a/event/x", b"x" * size, None, False), {})


def test_scheduler_drops_past_the_byte_bound_and_reports_the_drop() -> None:
    async def scenario() -> tuple[list[bool], list[tuple[Job, str]], Scheduler]:
        gate = asyncio.Event()

        async def execute(job: Job) -> None:
            await gate.wait()

        dropped: list[tuple[Job, str]] = []
        counters: Counter[str] = Counter()
        scheduler = Scheduler(
            execute,
            queue_limit=100,
            max_pending=100,
            counters=counters,
            max_bytes=250,
            on_drop=lambda job, why: dropped.append((job, why)),
        )
        jobs = [_job(100) for _ in range(5)]
        admitted = [scheduler.submit(jobs[0])]
        await asyncio.sleep(0)  # the first one runs: its payload no longer waits
        admitted += [scheduler.submit(job) for job in jobs[1:]]
        assert scheduler.pending_bytes == 200
        gate.set()
        await asyncio.gather(*scheduler.running)
        await asyncio.sleep(0)  # the workers' done callbacks
        assert scheduler.pending_bytes == 0  # every byte accounted for on the way out
        assert counters["dropped_queue_full"] == 2
        return admitted, dropped, scheduler

    admitted, dropped, _ = asyncio.run(scenario())
    assert admitted == [True, True, True, False, False]
    assert [why for _, why in dropped] == [
        "queue full of payload bytes in all queues (--max-queued-bytes)"
    ] * 2


def test_journal_entries_cut_large_payloads_and_say_so(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path / "failures.jsonl", 10)
    big = json.dumps({"pad": "y" * (MAX_PAYLOAD * 2)}).encode()
    recorded = asyncio.run(journal.record(failure(raw=big)))
    entry = asyncio.run(journal.get(recorded))
    assert entry is not None
    assert entry.payload_cut == len(big)
    assert entry.raw() == big[:MAX_PAYLOAD]
    assert len((tmp_path / "failures.jsonl").read_bytes()) < MAX_PAYLOAD + 4096


async def test_runs_past_max_queued_bytes_are_dropped_counted_and_journaled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler(tmp_path / "h")
    routes = write_routes(
        tmp_path / "routes",
        "r.yml",
        "routes:\n  - name: big\n    on: a/event/b\n    do: [{run: ../h}]\n",
    ).parent
    async with Harness(routes, max_queued_bytes=3000) as router:
        gate = router.fake.hold("h")
        payloads = [json.dumps({"n": n, "pad": "x" * 990}) for n in range(4)]
        await router.send("a/event/b", payloads[0])  # running: its bytes left the queue
        for payload in payloads[1:]:  # ~1,010 bytes each: two fit in 3,000, not three
            router.publish("a/event/b", payload)
        await router.settle()
        assert (
            caplog.text.count("dropped event 'a/event/b' for route big: queue full of payload") == 1
        )
        gate.open()
        await router.settle()
        assert len(router.fake.calls) == 3
        assert await router.stop() == 0
    summary = r"stopped: 4 events, 3 runs ok, 0 failed, 0 derived emitted, 1 dropped"
    assert re.search(summary, caplog.text)
    entries = router.journal.failures
    assert [(e.route, e.status) for e in entries] == [("big", "dropped")]
    assert json.loads(entries[0].payload)["n"] == 3


async def test_a_failure_whose_payload_was_cut_is_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler(tmp_path / "h")
    routes = write_routes(
        tmp_path / "routes",
        "r.yml",
        "routes:\n  - name: big\n    on: a/event/b\n    do: [{run: ../h}]\n",
    ).parent
    big = json.dumps({"pad": "z" * (MAX_PAYLOAD + 10)})
    async with Harness(routes, instance="n1") as router:
        router.fake.exits("h", 3)
        await router.send("a/event/b", big)
        assert router.fake.calls[0].payload == big.encode()  # the run had the whole payload
        [entry] = router.journal.failures
        assert entry.payload_cut == len(big)
        assert len(entry.payload) == MAX_PAYLOAD
        shown = "\n".join(_failure_lines(entry))  # as `eventrouter failures` prints it
        assert f"[the journal kept {MAX_PAYLOAD} of {len(big)} bytes]" in shown
        await router.retry(entry.id)
        assert f"retry {entry.id}: the journal kept {MAX_PAYLOAD} of the payload" in caplog.text
        assert len(router.fake.calls) == 1  # a truncated event is never run


async def test_the_journal_keeps_the_configured_payload_bytes(tmp_path: Path) -> None:
    handler(tmp_path / "h")
    routes = write_routes(
        tmp_path / "routes",
        "r.yml",
        "routes:\n  - name: fails\n    on: a/event/b\n    do: [{run: ../h}]\n",
    ).parent
    async with Harness(routes, journal_payload=100) as router:
        router.fake.exits("h", 3)
        big = json.dumps({"pad": "z" * 1000})
        assert await router.send("a/event/b", big) == 1
    [entry] = router.journal.failures
    assert (entry.payload_cut, entry.payload) == (len(big), big[:100])
