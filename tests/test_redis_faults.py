"""The router under Redis faults: connection resets, restarts, half-open links, refused PUBLISH."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from eventrouter.redis.embedded import EmbeddedServer
from tests.conftest import RedisCli
from tests.routerproc import Router, lines, wait_for, write_routes, write_step

CHAIN = 200

CHAIN_ROUTES = """\
routes:
  - name: hop
    on: chain/event/hop
    when: payload.n <= {last}
    do:
      - run: rec
      - emit:
          channel: chain/event/hop
          payload: {{n: "{{{{ payload.n + 1 }}}}"}}
"""


def chain_router(tmp_path: Path, start: Callable[..., Router]) -> tuple[Router, Path]:
    """Start a router whose route hands each hop n on as n + 1, recording every n it runs."""
    out = tmp_path / "out"
    write_step(tmp_path / "routes" / "rec" / "10rec", f"cat >> {out}; echo >> {out}")
    write_routes(tmp_path / "routes", "chain.yml", CHAIN_ROUTES.format(last=CHAIN))
    router = start("--routes", str(tmp_path / "routes"), "--max-depth", str(CHAIN + 10))
    return router, out


def handled(out: Path) -> list[int]:
    """Return the hops recorded so far, in order."""
    return [json.loads(line)["n"] for line in lines(out) if line]


def assert_whole_chain_once(router: Router, out: Path) -> None:
    """Wait for the chain's end; every hop must have run exactly once."""
    try:
        wait_for(lambda: len(handled(out)) > CHAIN, timeout=20, what="the end of the chain")
    except AssertionError:
        missing = sorted(set(range(CHAIN + 1)) - set(handled(out)))
        raise AssertionError(f"hops never handled: {missing[:10]}…\n{router.log}") from None
    time.sleep(0.3)  # a hop handled twice would show up now
    counts = Counter(handled(out))
    assert [n for n, seen in counts.items() if seen > 1] == []
    assert handled(out) == list(range(CHAIN + 1))


def test_chain_survives_repeated_pubsub_kills(
    tmp_path: Path, router_factory: Callable[..., Router], redis_cli: RedisCli
) -> None:
    router, out = chain_router(tmp_path, router_factory)
    redis_cli("PUBLISH", "chain/event/hop", '{"n": 0}')
    for progress in (30, 70, 110, 150):
        wait_for(lambda p=progress: len(handled(out)) >= p, what=f"hop {progress}")  # type: ignore[misc]
        killed = redis_cli("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed.stdout.strip() == "1", killed
    assert_whole_chain_once(router, out)
    log = router.log
    assert log.count("lost the connection to Redis") == 4
    assert "events published in that window may have been missed" in log
    assert re.search(r"subscription back: \d+ derived event\(s\) .* recovered", log)


def test_chain_survives_a_server_restart(
    tmp_path: Path,
    router_factory: Callable[..., Router],
    redis_cli: RedisCli,
    redis_server: EmbeddedServer,
) -> None:
    router, out = chain_router(tmp_path, router_factory)
    redis_cli("PUBLISH", "chain/event/hop", '{"n": 0}')
    wait_for(lambda: len(handled(out)) >= 80, what="hop 80")
    redis_server.stop()
    router.wait_log("lost the connection to Redis")
    redis_server.start()
    assert_whole_chain_once(router, out)
    assert "reachable again" in router.log


# --- Half-open connections ------------------------------------------------------------------


class FreezingProxy:
    """A TCP proxy on loopback that can stop forwarding while keeping its sockets open."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._frozen: list[asyncio.Event] = []  # one per connection: set = frozen
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FreezingProxy:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    async def _shut(self) -> None:
        """Close every socket and end every task, so nothing is left for the collector."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in self._writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def freeze(self) -> None:
        """Stop forwarding on every connection open now; new ones forward."""
        for event in list(self._frozen):
            self.loop.call_soon_threadsafe(event.set)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.append(up_writer)
        frozen = asyncio.Event()
        self._frozen.append(frozen)
        await asyncio.gather(
            self._pump(reader, up_writer, frozen), self._pump(up_reader, writer, frozen)
        )

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frozen: asyncio.Event
    ) -> None:
        while not frozen.is_set():
            reading = asyncio.ensure_future(reader.read(65536))
            freezing = asyncio.ensure_future(frozen.wait())
            await asyncio.wait({reading, freezing}, return_when=asyncio.FIRST_COMPLETED)
            if frozen.is_set():
                reading.cancel()
                break
            freezing.cancel()
            data = reading.result()
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()
        await asyncio.Event().wait()  # frozen: hold the socket open, forward nothing


@pytest.fixture
def proxy(redis_server: EmbeddedServer) -> Iterator[FreezingProxy]:
    """Yield a freezing proxy in front of the test server."""
    assert redis_server.port is not None
    with FreezingProxy(redis_server.port) as running:
        yield running


def test_half_open_subscription_is_detected_and_replaced(
    tmp_path: Path, redis_url: str, redis_cli: RedisCli, proxy: FreezingProxy
) -> None:
    out = tmp_path / "out"
    write_step(tmp_path / "routes" / "rec" / "10rec", f"cat >> {out}; echo >> {out}")
    write_routes(
        tmp_path / "routes", "r.yml", "routes:\n  - {name: r, on: x/event/y, do: [{run: rec}]}\n"
    )
    router = Router(
        [
            "run",
            "--routes",
            str(tmp_path / "routes"),
            "--redis",
            f"redis://127.0.0.1:{proxy.port}",
            "--publish-redis",
            redis_url,
            "--ping-interval",
            "0.3",
            "--ping-timeout",
            "0.3",
        ],
        tmp_path / "router.log",
    )
    try:
        router.ready()
        redis_cli("PUBLISH", "x/event/y", "before")
        wait_for(lambda: lines(out) == ["before"], what="the event before the freeze")
        proxy.freeze()
        started = time.monotonic()
        router.wait_log("half-open", timeout=5)
        assert time.monotonic() - started < 3
        router.wait_log(r"subscribed to \d+ pattern", count=2, timeout=5)
        redis_cli("PUBLISH", "x/event/y", "after")
        wait_for(lambda: lines(out) == ["before", "after"], what="the event after the freeze")
        assert router.stop() == 0
    finally:
        router.kill()


# --- A refused PUBLISH ------------------------------------------------------------------------


REFUSED_ROUTES = """\
routes:
  - name: fan-out
    on: go/event/now
    do:
      - emit: {channel: allowed/event/first, payload: {n: 1}}
      - emit: {channel: denied/event/nope, payload: {n: 2}}
      - emit: {channel: allowed/event/last, payload: {n: 3}}
"""


def test_a_refused_publish_fails_alone(
    tmp_path: Path, redis_server: EmbeddedServer, redis_cli: RedisCli
) -> None:
    setuser = redis_cli(
        "ACL", "SETUSER", "emitter", "on", ">pw", "~*", "+@all", "resetchannels", "&allowed/*"
    )
    assert setuser.stdout.strip() == "OK", setuser
    write_routes(tmp_path / "routes", "r.yml", REFUSED_ROUTES)
    router = Router(
        [
            "run",
            "--routes",
            str(tmp_path / "routes"),
            "--redis",
            redis_server.url,
            "--publish-redis",
            f"redis://emitter:pw@127.0.0.1:{redis_server.port}",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        tmp_path / "router.log",
    )
    seen: list[tuple[bytes, bytes]] = []
    try:
        with redis.Redis.from_url(redis_server.url) as client, client.pubsub() as pubsub:
            pubsub.psubscribe("allowed/*", "denied/*")
            router.ready()
            redis_cli("PUBLISH", "go/event/now", "{}")
            deadline = time.monotonic() + 1.5  # long enough for several backoff rounds
            while time.monotonic() < deadline:
                message = pubsub.get_message(timeout=0.05)
                if message and message["type"] == "pmessage":
                    seen.append((message["channel"], message["data"]))
        log = router.wait_log("Redis refused to publish")
        assert router.stop() == 0
    finally:
        router.kill()
    assert seen == [
        (b"allowed/event/first", b'{"n": 1}'),
        (b"allowed/event/last", b'{"n": 3}'),
    ]
    refused = next(line for line in log.splitlines() if "Redis refused to publish" in line)
    assert "route fan-out" in refused and "'go/event/now'" in refused
    assert "denied/event/nope" in refused and "NOPERM" in refused.upper()
    assert "emitted 'denied/event/nope'" not in log
    assert log.count("emitted 'allowed/event/first'") == 1
    with redis.Redis.from_url(redis_server.url) as client:
        entries = client.xrange("eventrouter/failures")
    recorded = [json.loads(fields[b"data"]) for _, fields in entries if b"data" in fields]
    assert [(item["route"], item["status"], item["action_index"]) for item in recorded] == [
        ("fan-out", "publish refused", 2)
    ]
