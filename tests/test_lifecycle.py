"""Daemon lifecycle: systemd notifications, journal format, start-up without Redis and the
second SIGTERM with the real CLI in a subprocess and a real Redis; reload semantics for queued
runs, odd channels and runs killed at shutdown in process (eventrouter.testing)."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from eventrouter.redis.binaries import find_server_binary
from eventrouter.redis.embedded import EmbeddedServer
from eventrouter.testing import Harness
from tests.conftest import RedisCli, free_port
from tests.routerproc import Router, clean_env, handler, wait_for, write_routes, write_step


@pytest.fixture
def notify_socket(short_tmp: Path) -> Iterator[socket.socket]:
    """Yield a datagram socket standing in for systemd's NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short_tmp / "notify"))
    sock.settimeout(10)
    yield sock
    sock.close()


def _receive(sock: socket.socket, wanted: str) -> str:
    while True:
        message = sock.recv(4096).decode()
        if wanted in message:
            return message


def test_systemd_notify_and_journal_prefixes(
    tmp_path: Path, redis_url: str, notify_socket: socket.socket, redis_cli: RedisCli
) -> None:
    write_step(tmp_path / "h" / "10", 'echo "<4>careful"')
    (tmp_path / "r.yml").write_text("routes:\n  - name: r\n    on: a/event/b\n    do: [{run: h}]\n")
    env = clean_env(NOTIFY_SOCKET=notify_socket.getsockname(), JOURNAL_STREAM="8:1234")
    router = Router(["run", "--redis", redis_url, "--routes", str(tmp_path)], tmp_path / "log", env)
    try:
        assert "READY=1" in _receive(notify_socket, "READY=1")
        router.ready()
        redis_cli("PUBLISH", "a/event/b", "{}")
        log = router.wait_log("careful")
        assert "<4>eventrouter.runtime.steps: r [a/event/b] step 10: careful" in log
        assert "<6>eventrouter.service.daemon: started" in log
        router.signal(signal.SIGHUP)
        reloading = _receive(notify_socket, "RELOADING=1")
        assert "MONOTONIC_USEC=" in reloading
        assert "READY=1" in _receive(notify_socket, "READY=1")
        router.signal(signal.SIGTERM)
        assert "STOPPING=1" in _receive(notify_socket, "STOPPING=1")
        assert router.stop() == 0
    finally:
        router.kill()


def test_waits_for_redis_not_reachable_at_start(tmp_path: Path, short_tmp: Path) -> None:
    binary = find_server_binary()
    assert binary is not None
    port = free_port()
    out = tmp_path / "out"
    write_step(tmp_path / "h" / "10", f"cat > {out}")
    (tmp_path / "r.yml").write_text("routes:\n  - name: r\n    on: a/event/b\n    do: [{run: h}]\n")
    url = f"redis://127.0.0.1:{port}"
    router = Router(["run", "--redis", url, "--routes", str(tmp_path)], tmp_path / "log")
    server = EmbeddedServer(short_tmp, binary=binary, port=port)
    try:
        router.wait_log("cannot reach Redis")
        time.sleep(0.5)
        server.start()
        router.wait_log("reachable again", timeout=15)
        router.ready()
        redis.Redis(port=port).publish("a/event/b", "late")
        wait_for(lambda: out.exists() and out.read_text(), what="the event after Redis came up")
        assert out.read_text() == "late"
        assert router.log.count("cannot reach Redis") == 1
        assert router.stop() == 0
    finally:
        router.kill()
        server.stop()


async def test_queued_run_keeps_its_route_version_across_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler(tmp_path / "h")
    routes = tmp_path / "routes.d"
    text = "routes:\n  - name: r\n    on: a/event/b\n    do: [{{run: ../h, env: {{WHO: {who}}}}}]\n"
    route = write_routes(routes, "r.yml", text.format(who="old"))
    async with Harness(routes) as router:
        gate = router.fake.hold("h")
        router.publish("a/event/b", "1")  # runs, held at the gate
        router.publish("a/event/b", "2")  # queued under the old version
        await router.settle()
        route.write_text(text.format(who="new"))
        assert await router.reload()
        assert "reloaded: 1 routes (+0 -0 ~1)" in caplog.text
        await router.send("a/event/b", "3")  # arrives under the new version
        gate.open()
        await router.settle()
    runs = [f"{call.env['WHO']} {call.payload.decode()}" for call in router.fake.calls]
    assert runs == ["old 1", "old 2", "new 3"]


async def test_odd_channels_and_payloads_do_not_stop_the_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = tmp_path / "events"
    handler(events / "ok")
    async with Harness(tmp_path, events=[events]) as router:
        for channel in (
            b"a/event/\xff\xfe",
            b"a/event/x\x00y",
            b"a/event/",
            b"a/event/..",
            b"a/event/.hidden",
            b"a/event/a\nb",
            b"/event/ok",
        ):
            router.publish(channel, b"\x00\xff binary")
        router.publish("node/1/event/ok", "[1, 2]")
        await router.settle()
        assert router.serving
    log = caplog.text
    assert "refused event name '\ufffd\ufffd'" in log  # invalid UTF-8, replaced
    assert "refused event name 'x\\x00y'" in log
    assert "refused event name '..'" in log
    assert "refused event name 'a\\nb'" in log
    assert [call.payload for call in router.fake.calls] == [b"\x00\xff binary", b"[1, 2]"]


def _sleeper(tmp_path: Path, body: str) -> tuple[Path, Path]:
    """Write a route running a step that writes its pid to a file; return (routes, pid file)."""
    pid = tmp_path / "pid"
    write_step(tmp_path / "h" / "10sleep", f"echo $$ > {pid}.tmp && mv {pid}.tmp {pid}\n{body}")
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "r.yml").write_text(
        "routes:\n  - name: sleeper\n    on: a/event/b\n    do: [{run: ../h}]\n"
    )
    return tmp_path / "routes", pid


async def test_a_run_killed_at_shutdown_is_journaled_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes, _ = _sleeper(tmp_path, "sleep 60")
    async with Harness(routes, stop_timeout=0.2) as router:
        router.fake.hold("h")  # the run outlasts the stop timeout
        await router.send("a/event/b", '{"n": 1}')
        assert await router.stop() == 0
    assert "shutdown: 1 run(s) still running after 0.2s; killing them" in caplog.text
    assert re.search(r"stopped: .* 1 killed at shutdown", caplog.text), caplog.text
    failures = [(f.route, f.status) for f in router.journal.failures]
    assert failures == [("sleeper", "killed at shutdown")]
    assert json.loads(router.journal.failures[0].payload) == {"n": 1}  # enough to run it again


def test_a_second_sigterm_during_the_stop_kills_at_once(
    tmp_path: Path, redis_url: str, redis_cli: RedisCli
) -> None:
    # The whole group ignores SIGTERM: only SIGKILL, after the grace periods, would end it.
    routes, pid = _sleeper(tmp_path, "trap '' TERM\nsleep 60")
    args = ["run", "--redis", redis_url, "--routes", str(routes), "--stop-timeout", "30s"]
    router = Router(args, tmp_path / "log")
    try:
        router.ready()
        redis_cli("PUBLISH", "a/event/b", '{"n": 1}')
        wait_for(pid.exists, what="the step to start")
        router.signal(signal.SIGTERM)
        router.wait_log("waiting up to 30.0s for 1 running run")
        started = time.monotonic()
        router.signal(signal.SIGTERM)
        assert router.stop(timeout=5) == 0
        assert time.monotonic() - started < 3
        log = router.log
        assert "second SIGTERM: not waiting any longer; killing the running steps" in log
        assert re.search(r"stopped: .* 1 killed at shutdown", log), log
    finally:
        router.kill()
