"""READY=1 only once the router is subscribed, with STATUS= saying what it waits for.

A real NOTIFY_SOCKET (a datagram socket bound here), the real CLI, a Redis that comes up late.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventrouter.redis.binaries import find_server_binary
from eventrouter.redis.embedded import EmbeddedServer
from tests.conftest import free_port
from tests.routerproc import Router, clean_env


@pytest.fixture
def notify_socket(short_tmp: Path) -> Iterator[socket.socket]:
    """Yield a datagram socket standing in for systemd's NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short_tmp / "notify"))
    yield sock
    sock.close()


def _messages(sock: socket.socket, until: float) -> list[str]:
    """Return every notification received before the monotonic deadline ``until``."""
    found = []
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            found.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return found


def _wait_message(sock: socket.socket, wanted: str, timeout: float = 15.0) -> list[str]:
    """Return the notifications up to and including the first one containing ``wanted``."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        seen.append(sock.recv(4096).decode())
        if wanted in seen[-1]:
            return seen
    raise AssertionError(f"no {wanted!r} notification within {timeout}s; got {seen}")


def test_ready_only_once_subscribed_to_a_late_redis(
    tmp_path: Path, short_tmp: Path, notify_socket: socket.socket
) -> None:
    binary = find_server_binary()
    assert binary is not None
    port = free_port()
    (tmp_path / "r.yml").write_text(
        "routes:\n  - name: r\n    on: a/event/b\n    do: [{emit: {channel: c/event/d}}]\n"
    )
    env = clean_env(NOTIFY_SOCKET=str(short_tmp / "notify"))
    url = f"redis://127.0.0.1:{port}"
    router = Router(["run", "--redis", url, "--routes", str(tmp_path)], tmp_path / "log", env)
    server = EmbeddedServer(short_tmp / "srv", binary=binary, port=port)
    try:
        router.wait_log("cannot reach Redis")
        # Waited for, not given a fixed window: a loaded machine may send it late.
        before = _wait_message(notify_socket, f"STATUS=waiting for Redis at {url}")
        before += _messages(notify_socket, time.monotonic() + 0.3)
        assert not any("READY=1" in message for message in before), before
        (short_tmp / "srv").mkdir()
        server.start()
        seen = _wait_message(notify_socket, "READY=1")
        # The route's pattern and the two control channels (retry, status/history).
        assert "STATUS=subscribed to 4 patterns; routing with 1 routes" in seen[-1], seen
        assert router.stop() == 0
    finally:
        router.kill()
        server.stop()
