"""The failure journal end to end: a failed run is recorded, survives a daemon restart, and
`eventrouter retry` runs the since-fixed route again on the same event."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import redis

from tests.routerproc import Router, clean_env, run_here, wait_for, write_step


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (in process: none of these is `run`)."""
    return run_here(*args, env=env)


def test_failure_recorded_survives_restart_and_retry_runs_fixed_route(
    tmp_path: Path, redis_url: str, short_tmp: Path
) -> None:
    out = tmp_path / "out"
    write_step(tmp_path / "broken" / "10", 'echo "<3>cannot reach the backend"; exit 4')
    write_step(tmp_path / "fixed" / "10", f"cat > {out}")
    routes = tmp_path / "routes.d"
    routes.mkdir()
    route = routes / "r.yml"
    text = (
        "routes:\n  - name: sync\n    on: module/{{m}}/event/changed\n    do: [{{run: ../{h}}}]\n"
    )
    route.write_text(text.format(h="broken"))
    env = clean_env(
        REDIS_ADDRESS=redis_url.removeprefix("redis://"), EVENTROUTER_STATE_DIR=str(short_tmp)
    )
    args = ["run", "--routes", str(routes), "--instance", "node1"]
    router = Router(args, tmp_path / "log1", env)
    try:
        router.ready()
        redis.Redis.from_url(redis_url).publish("module/mail1/event/changed", '{"n": 1}')
        log = router.wait_log("failure recorded as")
        failure_id = log.split("failure recorded as ")[1].split()[0]
        assert router.stop() == 0
    finally:
        router.kill()

    listed = cli("failures", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["id"] == failure_id
    assert entry["route"] == "sync" and entry["instance"] == "node1"
    assert entry["channel"] == "module/mail1/event/changed"
    assert entry["payload"] == '{"n": 1}'
    assert entry["step"] == "10" and entry["status"] == "exit status 4"
    assert "cannot reach the backend" in entry["tail"]

    route.write_text(text.format(h="fixed"))  # the operator fixes the route
    router = Router(args, tmp_path / "log2", env)  # a restarted daemon
    try:
        router.ready()
        retried = cli("retry", failure_id, env=env)
        assert retried.returncode == 0, retried.stderr
        # The step creates the file, then writes it: wait for what it writes.
        wait_for(lambda: out.exists() and out.read_text(), what="the retried run")
        assert out.read_text() == '{"n": 1}'
        log = router.wait_log(f"retry {failure_id}: running route sync")
        assert "current version" in log
        assert router.stop() == 0
    finally:
        router.kill()


def test_embedded_default_keeps_the_journal_in_the_state_folder(
    tmp_path: Path, short_tmp: Path
) -> None:
    write_step(tmp_path / "h" / "10", "exit 9")
    routes = tmp_path / "routes.d"
    routes.mkdir()
    (routes / "r.yml").write_text(
        "routes:\n  - name: bad\n    on: a/event/b\n    do: [{run: ../h}]\n"
    )
    env = clean_env(EVENTROUTER_STATE_DIR=str(short_tmp))
    router = Router(["run", "--routes", str(routes)], tmp_path / "log", env)
    try:
        router.ready()
        assert f"failure journal: local file {short_tmp}" in router.log
        published = cli("publish", "--raw", "a/event/b", "x", env=env)
        assert published.returncode == 0, published.stderr
        router.wait_log("failure recorded as")
        assert router.stop() == 0  # stops the embedded server too: its data is gone
    finally:
        router.kill()
    listed = cli("failures", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["route"] == "bad" and entry["status"] == "exit status 9"
