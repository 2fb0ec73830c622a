"""End to end: the real CLI in a subprocess, a real Redis server, real step scripts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from eventrouter.redis.embedded import EmbeddedServer
from tests.conftest import RedisCli
from tests.routerproc import Router, clean_env, lines, run_cli, wait_for, write_step


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


def test_failing_step_aborts_handler_and_actions(
    tmp_path: Path, router_factory, redis_cli: RedisCli
) -> None:
    out = tmp_path / "out"
    write_step(tmp_path / "h" / "10fail", "exit 3")
    write_step(tmp_path / "h" / "20never", f"touch {out}.never")
    write_step(tmp_path / "after" / "10", f"touch {out}.after")
    (tmp_path / "r.yml").write_text(
        "routes:\n  - name: failing\n    on: x/event/go\n    do:\n"
        "      - run: h\n      - run: after\n"
    )
    router = router_factory("--routes", str(tmp_path))
    redis_cli("PUBLISH", "x/event/go", "{}")
    log = router.wait_log("1 later action")
    assert "step 10fail of handler" in log and "exit status 3" in log
    assert not Path(f"{out}.never").exists()
    assert not Path(f"{out}.after").exists()


def test_emit_derived_event_is_handled_in_turn(
    tmp_path: Path, router_factory, redis_cli: RedisCli
) -> None:
    out = tmp_path / "derived.json"
    write_step(tmp_path / "h" / "10save", f"cat > {out}")
    (tmp_path / "r.yml").write_text(
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
      - run: h
"""
    )
    router = router_factory("--routes", str(tmp_path))
    payload = {"module": "mail1", "node": 2, "domains": ["a.org"], "text": "{{ 7 * 7 }}"}
    redis_cli("PUBLISH", "cluster/event/module-added", json.dumps(payload))
    wait_for(lambda: out.exists() and out.read_text(), what="the derived event's handler")
    assert json.loads(out.read_text()) == {
        "modules": ["mail1"],
        "domains": ["a.org"],
        "node": 2,
        "label": "node 2",
        "untouched": "{{ 7 * 7 }}",
    }
    log = router.wait_log("emitted")
    assert (
        "route module-added-announces-domains emitted 'cluster/event/module-domain-changed' "
        "(caused by 'cluster/event/module-added'" in log
    )


def test_loop_guard_cuts_derived_chain(tmp_path: Path, router_factory, redis_cli: RedisCli) -> None:
    (tmp_path / "r.yml").write_text(
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
"""
    )
    router = router_factory("--routes", str(tmp_path), "--max-depth", "4")
    redis_cli("PUBLISH", "x/event/ping", "{}")
    log = router.wait_log("loop guard")
    assert "chain deeper than 4" in log
    assert "ping emitted x/event/pong -> pong emitted x/event/ping" in log
    time.sleep(0.5)  # nothing more happens after the cut
    assert router.log.count(" emitted 'x/event/") == 4


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


def test_convention_folders_without_yaml(
    tmp_path: Path, router_factory, redis_cli: RedisCli
) -> None:
    events = tmp_path / "events"
    out = tmp_path / "out"
    write_step(
        events / "certificate-changed" / "10save",
        f'echo "$AGENT_EVENT_NAME $AGENT_EVENT_SOURCE $(cat)" >> {out}',
    )
    escaped = tmp_path / "actions" / "y"
    write_step(escaped / "10escape", f"touch {tmp_path}/escaped")
    (tmp_path / "empty").mkdir()
    router = router_factory("--events-dir", str(events), "--routes", str(tmp_path / "empty"))
    redis_cli("PUBLISH", "module/traefik1/event/certificate-changed", "plain text")
    redis_cli("PUBLISH", "module/x/event/../actions/y", "{}")
    redis_cli("PUBLISH", "no-event-here", "{}")
    wait_for(lambda: lines(out), what="the convention handler")
    assert lines(out) == ["certificate-changed module/traefik1 plain text"]
    log = router.wait_log("refused event name")
    assert "'../actions/y'" in log
    assert not (tmp_path / "escaped").exists()


def test_sighup_reload_applies_changes_and_keeps_old_on_error(
    tmp_path: Path, router_factory, redis_cli: RedisCli
) -> None:
    out = tmp_path / "out"
    write_step(tmp_path / "h" / "10", f'echo "$WHO $AGENT_EVENT_NAME" >> {out}')
    routes = tmp_path / "routes.d"
    routes.mkdir()
    first = routes / "10.yml"
    first.write_text(
        "routes:\n  - name: one\n    on: x/event/a\n    do: [{run: ../h, env: {WHO: old}}]\n"
        "  - name: gone\n    on: x/event/gone\n    do: [{run: ../h}]\n"
    )
    router = router_factory("--routes", str(routes))
    first.write_text(
        "routes:\n  - name: one\n    on: x/event/a\n    do: [{run: ../h, env: {WHO: new}}]\n"
    )
    (routes / "20.yml").write_text(
        "routes:\n  - name: two\n    on: x/event/b\n    do: [{run: ../h, env: {WHO: two}}]\n"
    )
    router.signal(signal.SIGHUP)
    router.wait_log(r"reloaded: 2 routes \(\+1 -1 ~1\)")
    redis_cli("PUBLISH", "x/event/a", "{}")
    redis_cli("PUBLISH", "x/event/b", "{}")
    wait_for(lambda: len(lines(out)) >= 2, what="two runs")
    assert sorted(lines(out)) == ["new a", "two b"]

    (routes / "30.yml").write_text(
        "routes:\n  - name: three\n    on: x/event/c\n    do: [{run: ../missing}]\n    bogus: 1\n"
    )
    router.signal(signal.SIGHUP)
    log = router.wait_log("reload failed with 2 error")
    assert f"{routes / '30.yml'}:4: error: routes[0].do[0].run: handler folder" in log
    assert f"{routes / '30.yml'}:5: error: routes[0].bogus: unknown key 'bogus'" in log
    redis_cli("PUBLISH", "x/event/a", "{}")
    wait_for(lambda: len(lines(out)) >= 3, what="the old routes still working")
    assert lines(out)[-1] == "new a"

    (routes / "30.yml").unlink()
    (routes / "40.yml").symlink_to(tmp_path / "vanished.yml")  # unreadable: dangling
    router.signal(signal.SIGHUP)
    log = router.wait_log("reload failed with 1 error")
    assert f"{routes / '40.yml'}:1: error: cannot read file" in log
    redis_cli("PUBLISH", "x/event/b", "{}")
    wait_for(lambda: len(lines(out)) >= 4, what="the old routes after an unreadable file")
    assert lines(out)[-1] == "two b"


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


def test_bad_input_is_logged_and_next_event_handled(
    tmp_path: Path, router_factory, redis_cli: RedisCli
) -> None:
    out = tmp_path / "out"
    write_step(tmp_path / "h" / "10", f"cat >> {out}; echo >> {out}")
    (tmp_path / "r.yml").write_text(
        """
routes:
  - name: strict
    on: x/event/*
    when: payload.wanted is defined or payload == none
    do:
      - run: h
        env: {FIELD: "{{ payload.wanted }}"}
"""
    )
    router = router_factory("--routes", str(tmp_path), "--max-payload", "64")
    redis_cli("PUBLISH", "x/event/big", "x" * 100)
    redis_cli("PUBLISH", "x/event/notjson", "{not json")
    redis_cli("PUBLISH", "x/event/good", '{"wanted": 1}')
    wait_for(lambda: lines(out), what="the good event")
    log = router.wait_log("undefined")
    assert "payload of 100 bytes exceeds the 64-byte limit" in log
    assert "env of" in log  # the non-JSON event failed at its template, with a reason
    assert lines(out) == ['{"wanted": 1}']


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
            return run_cli("publish", *args, env=env)

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
    gone = run_cli("publish", "--raw", "a/event/b", "x", env=env)
    assert gone.returncode == 1 and "no embedded server answers" in gone.stderr
    assert os.path.exists(short_tmp)
