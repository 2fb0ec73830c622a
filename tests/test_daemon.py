"""The daemon's behaviour, each in its tier.

End to end (the real CLI in a subprocess, a real Redis server, real step scripts) what needs
them: a PUBLISH from redis-cli running a handler, one run per PUBLISH however many patterns
match, signals, reconnecting, the embedded server. In process (eventrouter.testing) what
lives in the dispatcher and the daemon: actions, derived events, the loop guard, events
folders, reload, bad input.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from eventrouter.redis.embedded import EmbeddedServer
from eventrouter.runtime.steps import StepRunner
from eventrouter.testing import Harness
from tests.conftest import RedisCli
from tests.routerproc import (
    Router,
    clean_env,
    handler,
    lines,
    run_here,
    wait_for,
    write_routes,
    write_step,
)


def test_route_runs_handler_for_redis_cli_publish(
    tmp_path: Path, router_factory, redis_cli: RedisCli
) -> None:
    out = tmp_path / "out"
    handler = tmp_path / "handlers" / "record"
    write_step(handler / "10stdin", f'cat > {out}.payload; echo "<3>payload saved"')
    write_step(
        handler / "20env",
        'echo "$AGENT_EVENT_NAME|$AGENT_EVENT_SOURCE|$AGENT_COMFD|$TARGET|$ROUTE_NAME"'
        f" > {out}.env",
    )
    routes = tmp_path / "routes.d"
    routes.mkdir()
    (routes / "test.yml").write_text(
        """
routes:
  - name: module-test
    on: module/{module}/event/test
    when: payload.field == "value"
    do:
      - run: ../handlers/record
        env:
          TARGET: "{{ match.module }}"
          ROUTE_NAME: "{{ route }}"
"""
    )
    router = router_factory("--routes", str(routes))
    result = redis_cli("PUBLISH", "module/traefik1/event/test", '{"field": "value"}')
    assert result.stdout.strip() == "1"
    wait_for(lambda: Path(f"{out}.env").exists(), what="the handler's second step")
    assert Path(f"{out}.payload").read_text() == '{"field": "value"}'
    assert lines(Path(f"{out}.env")) == ["test|module/traefik1|2|traefik1|module-test"]
    log = router.wait_log("payload saved")
    assert (
        "ERROR   eventrouter.runtime.steps: module-test [module/traefik1/event/test] step 10stdin: "
        "payload saved" in log
    )
    # when: false -> nothing runs
    Path(f"{out}.env").unlink()
    redis_cli("PUBLISH", "module/traefik1/event/test", '{"field": "other"}')
    redis_cli("PUBLISH", "module/traefik1/event/test", '{"field": "value"}')
    wait_for(lambda: Path(f"{out}.env").exists(), what="the third event")
    assert Path(f"{out}.payload").read_text() == '{"field": "value"}'
    assert router.stop() == 0


async def test_failing_step_aborts_handler_and_actions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ran = tmp_path / "ran"
    write_step(tmp_path / "h" / "10fail", f"echo 10fail >> {ran}; exit 3")
    write_step(tmp_path / "h" / "20never", f"echo 20never >> {ran}")
    write_step(tmp_path / "after" / "10", f"echo after >> {ran}")
    write_routes(
        tmp_path / "routes",
        "r.yml",
        "routes:\n  - name: failing\n    on: x/event/go\n    do:\n"
        "      - run: ../h\n      - run: ../after\n",
    )
    async with Harness(tmp_path / "routes", runner=StepRunner()) as router:
        await router.send("x/event/go")
    assert "1 later action" in caplog.text
    assert "step 10fail of handler" in caplog.text and "exit status 3" in caplog.text
    assert lines(ran) == ["10fail"]  # neither the later step nor the later action ran


async def test_emit_derived_event_is_handled_in_turn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler(tmp_path / "h")
    write_routes(
        tmp_path / "routes",
        "r.yml",
        """
routes:
  - name: module-added-announces-domains
    on: cluster/event/module-added
    when: payload.module is defined
    do:
      - emit:
          channel: cluster/event/module-domain-changed
          payload:
            modules: ["{{ payload.module }}"]
            domains: "{{ payload.domains | default([]) }}"
            node: "{{ payload.node }}"
            label: "node {{ payload.node }}"
            untouched: "{{ payload.text }}"
  - name: domain-changed
    on: cluster/event/module-domain-changed
    do:
      - run: ../h
""",
    )
    payload = {"module": "mail1", "node": 2, "domains": ["a.org"], "text": "{{ 7 * 7 }}"}
    async with Harness(tmp_path / "routes") as router:
        await router.send("cluster/event/module-added", json.dumps(payload))
    [run] = router.fake.calls
    assert json.loads(run.payload) == {
        "modules": ["mail1"],
        "domains": ["a.org"],
        "node": 2,
        "label": "node 2",
        "untouched": "{{ 7 * 7 }}",
    }
    assert (
        "route module-added-announces-domains emitted 'cluster/event/module-domain-changed' "
        "(caused by 'cluster/event/module-added'" in caplog.text
    )


async def test_loop_guard_cuts_derived_chain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_routes(
        tmp_path,
        "r.yml",
        """
routes:
  - name: ping
    on: x/event/ping
    # A cycle no condition can stop does not start: a payload check cannot read keeps
    # `check` from seeing that this condition never stops it.
    when: payload.stop is not defined
    do:
      - emit: {channel: x/event/pong, payload: "{{ {} }}"}
  - name: pong
    on: x/event/pong
    when: payload.stop is not defined
    do:
      - emit: {channel: x/event/ping, payload: "{{ {} }}"}
""",
    )
    async with Harness(tmp_path, max_depth=4) as router:
        await router.send("x/event/ping")  # settled: nothing more happens after the cut
    assert "chain deeper than 4" in caplog.text
    assert "ping emitted x/event/pong -> pong emitted x/event/ping" in caplog.text
    assert caplog.text.count(" emitted 'x/event/") == 4
    assert router.dispatcher.counters["loops_cut"] == 1


def test_each_publish_handled_once_despite_overlapping_patterns(
    tmp_path: Path, router_factory, redis_cli: RedisCli
) -> None:
    out = tmp_path / "count"
    write_step(tmp_path / "h" / "10count", f"echo x >> {out}")
    (tmp_path / "r.yml").write_text(
        """
routes:
  - name: overlapping
    on: ["module/*/event/changed", "module/{m}/event/*", "module/*"]
    do: [{run: h}]
  - name: other
    on: "*/event/changed"
    do: [{emit: {channel: "unrelated/thing"}}]
"""
    )
    router = router_factory("--routes", str(tmp_path))
    for _ in range(5):
        redis_cli("PUBLISH", "module/m1/event/changed", "{}")
    wait_for(lambda: len(lines(out)) >= 5, what="five runs")
    time.sleep(0.5)
    assert len(lines(out)) == 5
    assert router.log.count("route other emitted") == 5


async def test_convention_folders_without_yaml(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = tmp_path / "events"
    handler(events / "certificate-changed")
    handler(tmp_path / "actions" / "y")
    (tmp_path / "empty").mkdir()
    async with Harness(tmp_path / "empty", events=[events]) as router:
        router.publish("module/traefik1/event/certificate-changed", "plain text")
        router.publish("module/x/event/../actions/y", "{}")
        router.publish("no-event-here", "{}")
        await router.settle()
    [run] = router.fake.calls
    assert (run.name, run.event_name, run.event_source, run.payload) == (
        "certificate-changed",
        "certificate-changed",
        "module/traefik1",
        b"plain text",
    )
    assert "refused event name" in caplog.text and "'../actions/y'" in caplog.text


async def test_sighup_reload_applies_changes_and_keeps_old_on_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler(tmp_path / "h")
    routes = tmp_path / "routes.d"
    routes.mkdir()
    first = routes / "10.yml"
    first.write_text(
        "routes:\n  - name: one\n    on: x/event/a\n    do: [{run: ../h, env: {WHO: old}}]\n"
        "  - name: gone\n    on: x/event/gone\n    do: [{run: ../h}]\n"
    )

    def who() -> list[str]:
        return [f"{call.env['WHO']} {call.event_name}" for call in router.fake.calls]

    async with Harness(routes) as router:
        first.write_text(
            "routes:\n  - name: one\n    on: x/event/a\n    do: [{run: ../h, env: {WHO: new}}]\n"
        )
        (routes / "20.yml").write_text(
            "routes:\n  - name: two\n    on: x/event/b\n    do: [{run: ../h, env: {WHO: two}}]\n"
        )
        assert await router.reload()
        assert re.search(r"reloaded: 2 routes \(\+1 -1 ~1\)", caplog.text)
        router.publish("x/event/a")
        router.publish("x/event/b")
        await router.settle()
        assert sorted(who()) == ["new a", "two b"]

        (routes / "30.yml").write_text(
            "routes:\n  - name: three\n    on: x/event/c\n    do: [{run: ../missing}]\n"
            "    bogus: 1\n"
        )
        assert not await router.reload()
        assert "reload failed with 2 error" in caplog.text
        assert f"{routes / '30.yml'}:4: error: routes[0].do[0].run: handler folder" in caplog.text
        assert f"{routes / '30.yml'}:5: error: routes[0].bogus: unknown key 'bogus'" in caplog.text
        await router.send("x/event/a")
        assert who()[-1] == "new a"  # the old routes still working

        (routes / "30.yml").unlink()
        (routes / "40.yml").symlink_to(tmp_path / "vanished.yml")  # unreadable: dangling
        assert not await router.reload()
        assert "reload failed with 1 error" in caplog.text
        assert f"{routes / '40.yml'}:1: error: cannot read file" in caplog.text
        await router.send("x/event/b")
        assert who()[-1] == "two b"  # the old routes after an unreadable file


def test_no_event_lost_during_a_sighup_storm(
    tmp_path: Path, router_factory, redis_url: str
) -> None:
    out = tmp_path / "seen"
    write_step(tmp_path / "h" / "10", f"cat >> {out}; echo >> {out}")
    (tmp_path / "r.yml").write_text(
        "routes:\n  - name: count\n    on: x/event/n\n    do: [{run: h}]\n"
    )
    router = router_factory("--routes", str(tmp_path))
    client = redis.Redis.from_url(redis_url)

    def subscriber_ids() -> set[str]:
        listing = client.client_list(_type="pubsub")
        return {str(entry["id"]) for entry in listing}

    before = subscriber_ids()
    total = 150
    for number in range(total):
        client.publish("x/event/n", str(number))
        if number % 10 == 0:
            router.signal(signal.SIGHUP)
    wait_for(lambda: len(lines(out)) >= total, timeout=30, what=f"{total} runs")
    assert [int(line) for line in lines(out)] == list(range(total))  # all, in order
    assert "reloaded: 1 routes (+0 -0 ~0)" in router.log
    assert subscriber_ids() == before  # the same connection all along
    assert router.stop() == 0


def test_sigterm_lets_running_step_finish_within_bound_then_kills(
    tmp_path: Path, router_factory, redis_cli: RedisCli, redis_url: str
) -> None:
    pids = tmp_path / "pids"
    write_step(tmp_path / "h" / "10", f"sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; wait")
    (tmp_path / "r.yml").write_text(
        "routes:\n  - name: slow\n    on: x/event/s\n    do: [{run: h}]\n"
    )
    router = router_factory("--routes", str(tmp_path), "--stop-timeout", "1s")
    for _ in range(3):
        redis_cli("PUBLISH", "x/event/s", "{}")
    wait_for(lambda: len(lines(pids)) == 2, what="the step to start")
    started = time.monotonic()
    assert router.stop() == 0
    assert time.monotonic() - started < 12
    log = router.log
    assert "shutdown: 2 queued run(s) not started; recorded in the failure journal" in log
    entries = redis.Redis.from_url(redis_url).xrange("eventrouter/failures")
    statuses = [json.loads(fields[b"data"])["status"] for _, fields in entries]
    assert statuses.count("not started") == 2
    assert "killed 1 step(s) still running" in log
    for pid in lines(pids):
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), what=f"pid {pid} gone")


def test_reconnects_after_redis_restart(
    tmp_path: Path, router_factory, redis_server: EmbeddedServer, redis_cli: RedisCli
) -> None:
    out = tmp_path / "out"
    write_step(tmp_path / "h" / "10", f"cat >> {out}; echo >> {out}")
    (tmp_path / "r.yml").write_text("routes:\n  - name: r\n    on: x/event/y\n    do: [{run: h}]\n")
    router = router_factory("--routes", str(tmp_path))
    redis_server.stop()
    router.wait_log("lost the connection to Redis")
    time.sleep(1.0)
    redis_server.start()
    router.wait_log("reachable again", timeout=15)
    router.wait_log(r"subscribed to \d+ pattern", count=2)
    redis_cli("PUBLISH", "x/event/y", "after")
    wait_for(lambda: lines(out), what="an event after the restart")
    assert lines(out) == ["after"]
    assert router.log.count("lost the connection to Redis") == 1


async def test_bad_input_is_logged_and_next_event_handled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler(tmp_path / "h")
    write_routes(
        tmp_path / "routes",
        "r.yml",
        """
routes:
  - name: strict
    on: x/event/*
    when: payload.wanted is defined or payload == none
    do:
      - run: ../h
        env: {FIELD: "{{ payload.wanted }}"}
""",
    )
    async with Harness(tmp_path / "routes", max_payload=64) as router:
        router.publish("x/event/big", "x" * 100)
        router.publish("x/event/notjson", "{not json")
        router.publish("x/event/good", '{"wanted": 1}')
        await router.settle()
    assert "payload of 100 bytes exceeds the 64-byte limit" in caplog.text
    assert "env of" in caplog.text  # the non-JSON event failed at its template, with a reason
    assert "undefined" in caplog.text
    assert [call.payload for call in router.fake.calls] == [b'{"wanted": 1}']


def test_embedded_server_default_and_publish_cli(tmp_path: Path, short_tmp: Path) -> None:
    out = tmp_path / "out"
    write_step(tmp_path / "h" / "10", f"cat > {out}")
    (tmp_path / "r.yml").write_text(
        "routes:\n  - name: r\n    on: cluster/event/module-added\n    do: [{run: h}]\n"
    )
    env = clean_env(EVENTROUTER_STATE_DIR=str(short_tmp))
    router = Router(["run", "--routes", str(tmp_path)], tmp_path / "log", env)
    try:
        router.ready()
        assert "embedded Redis server " in router.log and " started (pid " in router.log

        def publish(*args: str) -> subprocess.CompletedProcess[str]:
            return run_here("publish", *args, env=env)

        refused = publish("cluster/event/module-added", '{"module": "mail1"}')
        assert refused.returncode == 1 and "node" in refused.stderr
        refused = publish("cluster/event/module-added", "not json")
        assert refused.returncode == 1 and "not JSON" in refused.stderr
        done = publish("cluster/event/module-added", '{"module": "mail1", "node": 1}')
        assert done.returncode == 0, done.stderr
        assert "1 receiver(s)" in done.stdout
        wait_for(out.exists, what="the handler")
        assert json.loads(out.read_text()) == {"module": "mail1", "node": 1}
        assert router.stop() == 0
    finally:
        router.kill()
    gone = run_here("publish", "--raw", "a/event/b", "x", env=env)
    assert gone.returncode == 1 and "no embedded server answers" in gone.stderr
    assert os.path.exists(short_tmp)
