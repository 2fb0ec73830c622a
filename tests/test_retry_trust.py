"""Retry requests and journal entries are untrusted: a real router, a real server, forged data."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import redis

from eventrouter.redis.embedded import EmbeddedServer
from tests.conftest import RedisCli
from tests.routerproc import Router, wait_for, write_step

CONTROL = "eventrouter/control/retry"
KEY = "eventrouter/failures"


def entry(route: str, channel: str, payload: str = "{}") -> str:
    """Return a journal entry as the router writes it."""
    return json.dumps(
        {
            "time": time.time(),
            "started": time.time(),
            "instance": "node1",
            "route": route,
            "route_file": "forged.yml",
            "route_line": 1,
            "action": "run",
            "action_index": 1,
            "step": None,
            "status": "exit status 1",
            "reason": "forged",
            "channel": channel,
            "payload": payload,
            "payload_b64": None,
            "tail": [],
        }
    )


def forge(redis_cli: RedisCli, route: str, channel: str, payload: str = "{}") -> str:
    """Write an entry straight into the journal stream; return its id."""
    done = redis_cli("XADD", KEY, "*", "data", entry(route, channel, payload))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def retry(redis_cli: RedisCli, failure_id: str, instance: str = "node1") -> None:
    redis_cli("PUBLISH", CONTROL, json.dumps({"id": failure_id, "instance": instance}))


def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Routes with one guarded route, an events folder, and an evil folder outside both."""
    marks = tmp_path / "marks"
    marks.mkdir()
    events = tmp_path / "events"
    write_step(events / "changed" / "10mark", f"touch {marks}/convention")
    write_step(tmp_path / "evil" / "10mark", f"touch {marks}/evil")
    write_step(tmp_path / "h" / "10mark", f"touch {marks}/route")
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "r.yml").write_text(
        "routes:\n  - name: guarded\n    on: m/event/changed\n    when: payload.ok\n"
        "    do: [{run: ../h}]\n"
    )
    return routes, events, marks


def test_forged_journal_entries_run_nothing_the_routes_do_not_name(
    tmp_path: Path,
    redis_server: EmbeddedServer,
    redis_cli: RedisCli,
    router_factory: Callable[..., Router],
) -> None:
    routes, events, marks = setup(tmp_path)
    router = router_factory(
        "--routes", str(routes), "--events-dir", str(events), "--instance", "node1"
    )
    refused = [
        forge(redis_cli, f"events:{tmp_path / 'evil'}", "m/event/changed"),
        forge(redis_cli, f"events:{events / 'changed'}", "m/event/other"),
        forge(redis_cli, f"events:{events}/../evil", "m/event/changed"),
        forge(redis_cli, "guarded", "m/event/changed", '{"ok": false}'),
        forge(redis_cli, "no-such-route", "m/event/changed"),
    ]
    for failure_id in refused:
        retry(redis_cli, failure_id)
    router.wait_log(r"retry \S+: refused", count=len(refused))
    allowed = forge(redis_cli, "guarded", "m/event/changed", '{"ok": true}')
    retry(redis_cli, allowed)
    router.wait_log(f"retry {allowed}: running route guarded")
    convention = forge(redis_cli, f"events:{events / 'changed'}", "m/event/changed")
    retry(redis_cli, convention)
    router.wait_log(f"retry {convention}: running route events:")
    deadline = time.monotonic() + 5
    while {p.name for p in marks.iterdir()} != {"route", "convention"}:
        assert time.monotonic() < deadline, sorted(p.name for p in marks.iterdir())
        time.sleep(0.02)
    assert not (marks / "evil").exists()
    log = router.log
    assert "is not an events folder" in log
    assert "when: payload.ok is false" in log
    assert "route no-such-route no longer exists" in log
    assert router.stop() == 0


def test_malformed_control_messages_are_ignored_with_one_bounded_line(
    tmp_path: Path,
    redis_server: EmbeddedServer,
    redis_cli: RedisCli,
    router_factory: Callable[..., Router],
) -> None:
    routes, _, marks = setup(tmp_path)
    router = router_factory("--routes", str(routes), "--instance", "node1")
    client = redis.Redis.from_url(redis_server.url)
    client.publish(CONTROL, "not json")
    client.publish(CONTROL, '{"id": "' + "1" * 5_000_000 + '", "instance": "node1"}')
    client.publish(CONTROL, "[" * 100_000 + "]" * 100_000)
    retry(redis_cli, "123-0")  # no such failure
    retry(redis_cli, "123-0", instance="node2")  # another router's
    router.wait_log("ignored a malformed retry request", count=3)
    router.wait_log(r"retry 123-0: no such failure")
    # The router still works after all of them.
    client.publish("m/event/changed", '{"ok": true}')
    wait_for((marks / "route").exists, what="the route to run")
    log = router.log
    assert "Traceback" not in log and "exception" not in log.lower()
    assert max(len(line) for line in log.splitlines()) < 1000
    assert router.stop() == 0
