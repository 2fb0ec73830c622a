"""Memory bounded in bytes: queued runs (--max-queued-bytes) and journal entries (payload cut).

The scheduler alone with a fake run (no subprocess, no sleep), then the real CLI."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path

import redis

from eventrouter.engine.events import convention_route
from eventrouter.model import Event
from eventrouter.runtime.journal import MAX_PAYLOAD, FileJournal
from eventrouter.runtime.lanes import Job, Scheduler
from tests.conftest import RedisCli
from tests.routerproc import Router, clean_env, lines, run_cli, wait_for, write_step
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


def test_runs_past_max_queued_bytes_are_dropped_counted_and_journaled(
    tmp_path: Path, redis_url: str, redis_cli: RedisCli
) -> None:
    gate, out, started = tmp_path / "gate", tmp_path / "out", tmp_path / "started"
    write_step(
        tmp_path / "h" / "10",
        f"echo go >> {started}\nwhile [ ! -e {gate} ]; do sleep 0.02; done\necho run >> {out}",
    )
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "r.yml").write_text(
        "routes:\n  - name: big\n    on: a/event/b\n    do: [{run: ../h}]\n"
    )
    args = ["run", "--redis", redis_url, "--routes", str(tmp_path / "routes")]
    router = Router([*args, "--max-queued-bytes", "3000"], tmp_path / "log")
    client = redis.Redis.from_url(redis_url)
    try:
        router.ready()
        payloads = [json.dumps({"n": n, "pad": "x" * 990}) for n in range(4)]
        client.publish("a/event/b", payloads[0])
        wait_for(lambda: len(lines(started)) == 1, what="the first run")  # its bytes left
        for payload in payloads[1:]:  # ~1,010 bytes each: two fit in 3,000, not three
            client.publish("a/event/b", payload)
        log = router.wait_log(r"dropped event 'a/event/b' for route big: queue full of payload")
        assert log.count("queue full of payload") == 1
        gate.touch()
        wait_for(lambda: len(lines(out)) == 3, what="the three runs kept")
        assert router.stop() == 0
        summary = r"stopped: 4 events, 3 runs ok, 0 failed, 0 derived emitted, 1 dropped"
        assert re.search(summary, router.log)
    finally:
        gate.touch()
        router.kill()
        client.close()
    listed = run_cli("failures", "--redis", redis_url, "--json")
    entries = json.loads(listed.stdout)
    assert [(e["route"], e["status"]) for e in entries] == [("big", "dropped")]
    assert json.loads(entries[0]["payload"])["n"] == 3


def test_a_failure_whose_payload_was_cut_is_not_retried(
    tmp_path: Path, redis_url: str, short_tmp: Path
) -> None:
    out = tmp_path / "out"
    write_step(tmp_path / "h" / "10", f"cat > {out}; exit 3")
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "r.yml").write_text(
        "routes:\n  - name: big\n    on: a/event/b\n    do: [{run: ../h}]\n"
    )
    env = clean_env(EVENTROUTER_STATE_DIR=str(short_tmp))
    args = ["run", "--redis", redis_url, "--routes", str(tmp_path / "routes")]
    router = Router([*args, "--instance", "n1"], tmp_path / "log", env)
    big = json.dumps({"pad": "z" * (MAX_PAYLOAD + 10)})
    try:
        router.ready()
        redis.Redis.from_url(redis_url).publish("a/event/b", big)
        log = router.wait_log("failure recorded as")
        failure_id = log.split("failure recorded as ")[1].split()[0]
        assert out.read_text() == big  # the run itself had the whole payload
        [entry] = json.loads(run_cli("failures", "--redis", redis_url, "--json", env=env).stdout)
        assert entry["payload_cut"] == len(big)
        assert len(entry["payload"]) == MAX_PAYLOAD
        shown = run_cli("failures", "--redis", redis_url, env=env).stdout
        assert f"[the journal kept {MAX_PAYLOAD} of {len(big)} bytes]" in shown
        out.unlink()
        retried = run_cli("retry", "--redis", redis_url, failure_id, env=env)
        assert retried.returncode == 0, retried.stderr
        router.wait_log(f"retry {failure_id}: the journal kept {MAX_PAYLOAD} of the payload")
        assert not out.exists()  # a truncated event is never run
        assert router.stop() == 0
    finally:
        router.kill()


def test_the_journal_keeps_the_configured_payload_bytes(
    tmp_path: Path, redis_url: str, redis_cli: RedisCli
) -> None:
    write_step(tmp_path / "h" / "10", "exit 3")
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "r.yml").write_text(
        "routes:\n  - name: fails\n    on: a/event/b\n    do: [{run: ../h}]\n"
    )
    args = ["run", "--redis", redis_url, "--routes", str(tmp_path / "routes")]
    router = Router([*args, "--journal-payload", "100"], tmp_path / "log")
    try:
        router.ready()
        big = json.dumps({"pad": "z" * 1000})
        assert redis_cli("PUBLISH", "a/event/b", big).stdout.strip() != "0"
        router.wait_log(r"failure recorded as")
    finally:
        router.close()
    listed = run_cli("failures", "--redis", redis_url, "--json")
    assert listed.returncode == 0, listed.stderr
    entry = json.loads(listed.stdout)[0]
    assert (entry["payload_cut"], entry["payload"]) == (len(big), big[:100])
