"""Benchmarks that push events through a running router: spawn, latency, emit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from harness import (
    BenchError,
    Context,
    Row,
    count_lines,
    percentile,
    running_router,
    step_env,
    verdict,
    wait_lines,
    write_file,
)

# --- 1. spawn throughput -------------------------------------------------------------------

SPAWN_ROUTE = """\
routes:
  - name: spawn
    on: bench/event/spawn
    do:
      - run: ../handlers/spawn
"""
SPAWN_STEP = '#!/bin/sh\necho x >> "$OUT"\n'


def publish_burst(client: redis.Redis, channel: str, payloads: Sequence[bytes]) -> None:
    """Publish ``payloads`` back to back in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.publish(channel, payload)
    pipe.execute()


def direct_spawn_rate(step: Path, runs: int, out: Path) -> float:
    """Return runs/s of posix_spawn + waitpid of ``step`` in a loop, with the router's env."""
    env = step_env("bench/event/spawn", OUT=str(out))
    program = str(step)
    start = time.perf_counter()
    for _ in range(runs):
        pid = os.posix_spawn(program, [program], env)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise BenchError(f"direct spawn of {step} failed: wait status {status}")
    elapsed = time.perf_counter() - start
    if count_lines(out) != runs:
        raise BenchError(f"direct spawn recorded {count_lines(out)} of {runs} runs")
    return runs / elapsed


def routed_spawn_round(client: redis.Redis, out: Path, runs: int) -> float:
    """Publish ``runs`` events back to back; return runs/s until the last step wrote."""
    done = count_lines(out)
    payloads = [b'{"seq": %d}' % seq for seq in range(runs)]
    start = time.perf_counter()
    publish_burst(client, "bench/event/spawn", payloads)
    end = wait_lines(out, done + runs, timeout=max(30.0, runs * 0.05))
    return runs / (end - start)


async def asyncio_spawns(step: Path, runs: int, out: Path) -> float:
    """Return runs/s of the same step via asyncio with three pipes and a new session.

    This is the floor of any asyncio design that feeds stdin and reads the output of each step
    (README "Handler folders"), one run after another: what the router adds on top of it is its
    own logic.
    """
    env = step_env("bench/event/spawn", OUT=str(out))
    start = time.perf_counter()
    for _ in range(runs):
        proc = await asyncio.create_subprocess_exec(
            str(step),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        await proc.communicate(b'{"seq": 0}')
    return runs / (time.perf_counter() - start)


@dataclass(frozen=True)
class SpawnRates:
    """Best runs/s of each way of running the step."""

    direct: float
    floor: float
    routed: float


def spawn_rates(ctx: Context, work: Path, step: Path) -> SpawnRates:
    """Alternate direct, asyncio and routed rounds after a warm-up; return the best of each."""
    runs = ctx.sizes.spawn_runs
    out = work / "router.out"
    rates: dict[str, list[float]] = {"direct": [], "asyncio": [], "routed": []}
    args = ["--routes", str(work / "routes.d")]
    with running_router(ctx, "spawn", args, env={"OUT": str(out)}) as _router:
        client = redis.Redis.from_url(ctx.redis_url)
        try:
            direct_spawn_rate(step, 10, work / "warm.out")
            routed_spawn_round(client, out, 10)
            for n in range(ctx.sizes.spawn_rounds):
                rates["direct"].append(direct_spawn_rate(step, runs, work / f"direct{n}.out"))
                floor = asyncio.run(asyncio_spawns(step, runs, work / f"asyncio{n}.out"))
                rates["asyncio"].append(floor)
                rates["routed"].append(routed_spawn_round(client, out, runs))
        finally:
            client.close()
    each = "; ".join(f"{key} {', '.join(f'{r:.0f}' for r in got)}" for key, got in rates.items())
    ctx.notes.append(f"spawn: runs/s per round: {each} (best of each in the table)")
    return SpawnRates(max(rates["direct"]), max(rates["asyncio"]), max(rates["routed"]))


def bench_spawn(ctx: Context) -> list[Row]:
    """Router runs/s of one trivial sh step, against spawning it directly in a loop."""
    work = ctx.tmp / "spawn"
    step = write_file(work / "handlers" / "spawn" / "10step", SPAWN_STEP, executable=True)
    write_file(work / "routes.d" / "spawn.yml", SPAWN_ROUTE)
    rates = spawn_rates(ctx, work, step)
    base = rates.direct
    return [
        Row(
            "spawn",
            f"runs/s, {ctx.sizes.spawn_runs} events -> 1 queued route, 1 sh step, log INFO",
            f"{rates.routed:.0f}/s",
            ">= 0.80x base",
            f"{base:.0f}/s",
            f"{rates.routed / base:.2f}x",
            verdict(rates.routed >= 0.8 * base),
        ),
        Row(
            "spawn",
            "same step via asyncio, 3 pipes, new session (base: direct)",
            f"{rates.floor:.0f}/s",
            "-",
            f"{base:.0f}/s",
            f"{rates.floor / base:.2f}x",
        ),
        Row(
            "spawn",
            "router vs that asyncio floor",
            f"{rates.routed:.0f}/s",
            "-",
            f"{rates.floor:.0f}/s",
            f"{rates.routed / rates.floor:.2f}x",
        ),
    ]


# --- 2. latency ----------------------------------------------------------------------------

LATENCY_ROUTE = """\
routes:
  - name: latency
    on: bench/event/latency
    do:
      - run: ../handlers/latency
        env:
          SEQ: "{{ payload.seq }}"
"""
# $EPOCHREALTIME is read once bash has started: the interpreter's start-up is in every figure,
# router and baseline alike, so the difference of the two is the router's own share.
LATENCY_STEP = '#!/bin/bash\nprintf \'%s %s\\n\' "$SEQ" "$EPOCHREALTIME" >> "$OUT"\n'


def pace(start: float, seq: int, rate: float) -> None:
    """Sleep until the ``seq``-th tick of a ``rate``-per-second schedule begun at ``start``."""
    delay = start + seq / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def read_stamps(path: Path) -> dict[int, float]:
    """Return seq -> start time (epoch seconds) from the lines ``seq time`` a step wrote."""
    stamps: dict[int, float] = {}
    for line in path.read_text().splitlines():
        seq, _, stamp = line.partition(" ")
        stamps[int(seq)] = float(stamp.replace(",", "."))  # $EPOCHREALTIME follows the locale
    return stamps


def delays_ms(sent: dict[int, float], path: Path) -> tuple[list[float], int]:
    """Return the step-start delays in ms and how many sent events never started a step."""
    stamps = read_stamps(path)
    delays = [(stamps[seq] - at) * 1000 for seq, at in sent.items() if seq in stamps]
    return delays, len(sent) - len(delays)


def direct_latency(step: Path, samples: int, rate: float, out: Path) -> list[float]:
    """Return the delays (ms) from posix_spawn of ``step`` to its recorded start."""
    base = step_env("bench/event/latency", OUT=str(out))
    program = str(step)
    sent: dict[int, float] = {}
    start = time.perf_counter()
    for seq in range(samples):
        pace(start, seq, rate)
        env = base | {"SEQ": str(seq)}
        sent[seq] = time.time()
        pid = os.posix_spawn(program, [program], env)
        os.waitpid(pid, 0)
    delays, lost = delays_ms(sent, out)
    if lost:
        raise BenchError(f"direct spawn: {lost} of {samples} runs recorded no start time")
    return delays


def routed_latency(ctx: Context, work: Path, out: Path) -> tuple[list[float], int]:
    """Publish at the target rate to a routed bash step; return delays (ms) and losses."""
    sizes = ctx.sizes
    count = int(sizes.latency_rate * sizes.latency_seconds)
    sent: dict[int, float] = {}
    args = ["--routes", str(work / "routes.d")]
    with running_router(ctx, "latency", args, env={"OUT": str(out)}) as _router:
        client = redis.Redis.from_url(ctx.redis_url)
        try:
            client.ping()
            start = time.perf_counter()
            for seq in range(count):
                pace(start, seq, sizes.latency_rate)
                sent[seq] = time.time()
                client.publish("bench/event/latency", b'{"seq": %d}' % seq)
        finally:
            client.close()
        with contextlib.suppress(BenchError):  # losses are reported, not fatal
            wait_lines(out, count, timeout=10.0)
    return delays_ms(sent, out)


def bench_latency(ctx: Context) -> list[Row]:
    """Publish -> step start at a steady rate, against the same spawn done directly."""
    sizes = ctx.sizes
    work = ctx.tmp / "latency"
    step = write_file(work / "handlers" / "latency" / "10stamp", LATENCY_STEP, executable=True)
    write_file(work / "routes.d" / "latency.yml", LATENCY_ROUTE)
    base = direct_latency(step, sizes.latency_baseline, sizes.latency_rate, work / "direct.out")
    delays, lost = routed_latency(ctx, work, work / "router.out")
    if not delays:
        raise BenchError("no routed step recorded its start")
    what = f"{sizes.latency_rate:g}/s for {sizes.latency_seconds:g}s"
    rows = []
    for label, fraction, limit in (("p50", 0.5, 5.0), ("p99", 0.99, 25.0)):
        ours, theirs = percentile(delays, fraction), percentile(base, fraction)
        rows.append(
            Row(
                "latency",
                f"publish -> step start {label}, {what}",
                f"{ours:.2f} ms",
                f"< {limit:g} ms",
                f"{theirs:.2f} ms",
                f"{ours / theirs:.2f}x",
                verdict(ours < limit),
            )
        )
    ctx.notes.append(
        "latency: the step is #!/bin/bash stamping $EPOCHREALTIME, so exec and bash start-up "
        "are inside both the routed and the direct (base) figures; router log level INFO"
    )
    share = percentile(delays, 0.5) - percentile(base, 0.5)
    rows.append(
        Row("latency", "router's own share of p50 (p50 - base p50)", f"{share:.2f} ms", "-")
    )
    rows.append(
        Row("latency", "max; events without a step run", f"{max(delays):.2f} ms; {lost} lost", "-")
    )
    return rows


# --- 3. emit throughput --------------------------------------------------------------------

EMIT_ROUTE = """\
routes:
  - name: emit
    on: bench/event/in
    do:
      - emit:
          channel: bench/event/out
          payload:
            n: "{{ payload.n }}"
"""
OUT_CHANNEL = "bench/event/out"


@dataclass(frozen=True)
class Burst:
    """What a subscriber saw of a burst: messages, distinct ones, first publish -> last one."""

    received: int
    distinct: int
    seconds: float


async def subscribed(pubsub: Any) -> None:
    """Wait for the PSUBSCRIBE confirmation, so nothing published next can be missed."""
    for _ in range(50):
        message = await pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "psubscribe":
            return
    raise BenchError("no PSUBSCRIBE confirmation within 5s")


async def collect(pubsub: Any, count: int, idle: float) -> tuple[list[bytes], float]:
    """Read up to ``count`` pmessages, giving up after ``idle`` s without one."""
    got: list[bytes] = []
    last = time.perf_counter()
    deadline = last + 60.0
    while len(got) < count and time.perf_counter() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=idle)
        if message is None:
            if time.perf_counter() - last >= idle:
                break
            continue
        if message["type"] == "pmessage":
            got.append(message["data"])
            last = time.perf_counter()
    return got, last


async def burst(url: str, channel: str, count: int, idle: float) -> Burst:
    """Publish ``count`` events on ``channel`` in a pipeline; count what reaches OUT_CHANNEL."""
    listener, sender = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    pubsub: Any = listener.pubsub()  # redis-py leaves PubSub.aclose untyped
    try:
        await pubsub.psubscribe(OUT_CHANNEL)
        await subscribed(pubsub)
        await sender.ping()
        pipe = sender.pipeline(transaction=False)
        for n in range(count):
            pipe.publish(channel, b'{"n": %d}' % n)
        reader = asyncio.create_task(collect(pubsub, count, idle))
        start = time.perf_counter()
        await pipe.execute()
        got, last = await reader
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await sender.aclose()
    distinct = len({json.loads(data)["n"] for data in got})
    return Burst(len(got), distinct, max(last - start, 1e-9))


async def awaited_publishes(url: str, count: int) -> float:
    """Return PUBLISH/s of one awaited PUBLISH after another: the floor of a serial emit path."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.ping()
        start = time.perf_counter()
        for n in range(count):
            await client.publish(OUT_CHANNEL, b'{"n": %d}' % n)
        return count / (time.perf_counter() - start)
    finally:
        await client.aclose()


def routed_burst(ctx: Context, routes: Path, level: str) -> Burst:
    """Run a burst through a router started with ``level`` logging."""
    name = f"emit-{level.lower()}"
    with running_router(ctx, name, ["--routes", str(routes)], level=level) as _router:
        return asyncio.run(burst(ctx.redis_url, "bench/event/in", ctx.sizes.emit_events, 5.0))


def bench_emit(ctx: Context) -> list[Row]:
    """Derived events/s of an emit-only route, against a bare redis-py subscriber."""
    count = ctx.sizes.emit_events
    routes = ctx.tmp / "emit" / "routes.d"
    write_file(routes / "emit.yml", EMIT_ROUTE)
    base = asyncio.run(burst(ctx.redis_url, OUT_CHANNEL, count, 5.0))
    base_rate = base.received / base.seconds
    if base.distinct != count:
        raise BenchError(f"the bare subscriber itself lost {count - base.distinct} messages")
    serial = asyncio.run(awaited_publishes(ctx.redis_url, max(count // 4, 1)))
    ours = routed_burst(ctx, routes, "WARNING")
    rate = ours.received / ours.seconds
    noisy = routed_burst(ctx, routes, "INFO")
    noisy_rate = noisy.received / noisy.seconds
    lost = count - ours.distinct
    ctx.notes.append(
        "emit: target rows with the router at --log-level WARNING (INFO logs one line per "
        "emit: last row); base = a bare redis-py asyncio psubscribe + get_message loop in this "
        "process receiving the same pipelined burst published straight to bench/event/out"
    )
    what = f"{count} events"
    ratio = f"{rate / base_rate:.2f}x"
    return [
        Row("emit", f"derived/s, {what}, log WARNING", f"{rate:.0f}/s", ">= 10000/s",
            verdict=verdict(rate >= 10_000)),
        Row("emit", "derived/s vs bare redis-py subscriber", f"{rate:.0f}/s", ">= 0.40x base",
            f"{base_rate:.0f}/s", ratio, verdict(rate >= 0.4 * base_rate)),
        Row("emit", "lost (N - distinct received), log WARNING", str(lost), "0", "0",
            verdict=verdict(lost == 0 and ours.received == count)),
        Row("emit", f"derived/s, {what}, log INFO; lost", f"{noisy_rate:.0f}/s; "
            f"{count - noisy.distinct}", "-", f"{base_rate:.0f}/s",
            f"{noisy_rate / base_rate:.2f}x"),
        Row("emit", "bare redis-py: one awaited PUBLISH after another", f"{serial:.0f}/s", "-",
            f"{base_rate:.0f}/s", f"{serial / base_rate:.2f}x"),
    ]  # fmt: skip
