"""Cluster latency: publish on the master -> step start on each node's router, same run.

Three Redis-compatible servers on loopback TCP (node 1 the master, nodes 2 and 3
``--replicaof`` it, the embedded server binary), one router per node subscribing to its own
server and publishing to the master, as in an NS8 cluster. Events are published on the master
at a steady rate; every router runs the latency benchmark's bash step, which stamps its start.
The replicas' figures are compared with the master router's, measured on the same events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from harness import BenchError, Context, Row, percentile, running_router, verdict, write_file
from traffic import LATENCY_STEP, delays_ms, pace

from eventrouter.redis.binaries import find_server_binary

NODES = (1, 2, 3)


def free_port() -> int:
    """Return a loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def topology(work: Path) -> Iterator[dict[int, str]]:
    """Start a master and two replicas on loopback; yield node -> URL; stop them after."""
    binary = find_server_binary()
    if binary is None:
        raise BenchError("no redis-server/valkey-server binary")
    ports = {number: free_port() for number in NODES}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for number in NODES:
            folder = work / f"node{number}"
            folder.mkdir(parents=True)
            replica = [] if number == 1 else ["--replicaof", "127.0.0.1", str(ports[1])]
            command = [
                str(binary), "--port", str(ports[number]), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(folder),
                "--logfile", str(folder / "server.log"), *replica,
            ]  # fmt: skip
            procs.append(subprocess.Popen(command))
        urls = {number: f"redis://127.0.0.1:{port}" for number, port in ports.items()}
        for number in NODES[1:]:
            wait_linked(urls[number])
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def wait_linked(url: str, timeout: float = 20.0) -> None:
    """Wait until the replica at ``url`` reports its link to the master up."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            client = redis.Redis.from_url(url, socket_timeout=1)
            try:
                if client.info("replication").get("master_link_status") == "up":
                    return
            finally:
                client.close()
        time.sleep(0.02)
    raise BenchError(f"replica {url} not linked to its master after {timeout:g}s")


class Listener:
    """A bare redis-py subscriber on one node, stamping when each latency event arrives."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe("bench/event/latency")
        self.pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        self.stamps: dict[int, float] = {}
        self.thread = threading.Thread(target=self.listen, daemon=True)
        self.thread.start()

    def listen(self) -> None:
        """Record arrival times until closed."""
        with contextlib.suppress(redis.RedisError, OSError, ValueError):
            for message in self.pubsub.listen():
                if message["type"] == "message":
                    seq = json.loads(message["data"])["seq"]
                    self.stamps[int(seq)] = time.time()

    def delays(self, sent: dict[int, float]) -> list[float]:
        """Return publish -> arrival delays (ms)."""
        return [(self.stamps[seq] - at) * 1000 for seq, at in sent.items() if seq in self.stamps]

    def close(self) -> None:
        """Stop listening."""
        with contextlib.suppress(redis.RedisError, OSError):
            self.pubsub.close()
            self.client.close()


def publish_paced(url: str, count: int, rate: float) -> dict[int, float]:
    """Publish ``count`` latency events on ``url`` at ``rate``/s; return seq -> send time."""
    sent: dict[int, float] = {}
    client = redis.Redis.from_url(url)
    try:
        client.ping()
        start = time.perf_counter()
        for seq in range(count):
            pace(start, seq, rate)
            sent[seq] = time.time()
            client.publish("bench/event/latency", b'{"seq": %d}\n' % seq)
    finally:
        client.close()
    return sent


#: The `latency` benchmark's step, run by a route: the payload (its seq) on stdin.
LATENCY_ROUTE = """\
routes:
  - name: latency
    on: bench/event/latency
    do:
      - run: ../handlers/latency
"""


def bench_cluster(ctx: Context) -> list[Row]:
    """Publish -> step start on the master's router and on each replica's, same events."""
    sizes = ctx.sizes
    work = ctx.tmp / "cluster"
    write_file(work / "handlers" / "latency" / "10stamp", LATENCY_STEP, executable=True)
    write_file(work / "routes.d" / "latency.yml", LATENCY_ROUTE)
    count = int(sizes.latency_rate * sizes.latency_seconds)
    outs = {number: work / f"node{number}.out" for number in NODES}
    with topology(work / "servers") as urls, contextlib.ExitStack() as stack:
        for number in NODES:
            node_ctx = dataclasses.replace(ctx, redis_url=urls[number])  # notes stay shared
            args = ["--routes", str(work / "routes.d"), "--publish-redis", urls[1],
                    "--node", str(number), "--instance", f"node{number}",
                    "--state-dir", str(work / f"state{number}")]  # fmt: skip
            stack.enter_context(
                running_router(node_ctx, f"cluster-node{number}", args,
                               env={"OUT": str(outs[number])})
            )  # fmt: skip
        listeners = {number: Listener(urls[number]) for number in NODES}
        stack.callback(lambda: [listener.close() for listener in listeners.values()])
        sent = publish_paced(urls[1], count, sizes.latency_rate)
        deadline = time.perf_counter() + 10.0
        while time.perf_counter() < deadline and any(count_stamps(outs[n]) < count for n in NODES):
            time.sleep(0.01)
    found = rows(ctx, sent, outs)
    for number, listener in listeners.items():
        arrived = listener.delays(sent)
        if arrived:
            found.append(
                Row(
                    "cluster",
                    f"node {number}: publish -> a bare subscriber there receives it, p50 / p99",
                    f"{percentile(arrived, 0.5):.2f} / {percentile(arrived, 0.99):.2f} ms",
                    "-",
                )
            )
    return found


def count_stamps(path: Path) -> int:
    """Return how many steps stamped their start in ``path``."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def rows(ctx: Context, sent: dict[int, float], outs: dict[int, Path]) -> list[Row]:
    """Return p50/p99 per node, each replica beside the master's router."""
    figures: dict[int, tuple[float, float, int]] = {}
    for number, path in outs.items():
        if not path.exists():
            raise BenchError(f"node {number}'s router ran no step")
        delays, lost = delays_ms(sent, path)
        if not delays:
            raise BenchError(f"node {number}'s router recorded no start")
        figures[number] = (percentile(delays, 0.5), percentile(delays, 0.99), lost)
    what = f"{ctx.sizes.latency_rate:g}/s for {ctx.sizes.latency_seconds:g}s"
    found = []
    for number in NODES:
        p50, p99, lost = figures[number]
        where = "master" if number == 1 else "replica"
        for label, ours, base, limit in (
            ("p50", p50, figures[1][0], 5.0),
            ("p99", p99, figures[1][1], 25.0),
        ):
            found.append(
                Row(
                    "cluster",
                    f"node {number} ({where}) publish on master -> step start {label}, {what}",
                    f"{ours:.2f} ms",
                    f"< {limit:g} ms",
                    f"master's router {base:.2f} ms",
                    f"{ours / base:.2f}x",
                    verdict(ours < limit),
                )
            )
        lost_row = Row("cluster", f"node {number}: events without a step run", str(lost), "0")
        found.append(dataclasses.replace(lost_row, verdict=verdict(lost == 0)))
    ctx.notes.append(
        "cluster: three servers on loopback TCP (node 1 master, 2 and 3 --replicaof it), one "
        "router per node on its own server; the same events, published on the master, start "
        "the same bash step on every router"
    )
    return found
