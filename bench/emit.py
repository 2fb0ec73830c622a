"""The emit benchmark: derived events/s of an emit-only route against a bare redis-py relay."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from harness import (
    REPO,
    BenchError,
    Context,
    Daemon,
    Row,
    clean_env,
    proc_cpu,
    running_router,
    verdict,
    wait_patterns,
    write_file,
)

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
EMIT_ROUNDS = 2  # relay and router bursts, alternated
#: An emit-only route's derived events/s against the bare relay's (issue 19).
EMIT_RATIO = 0.6


@dataclass(frozen=True)
class Burst:
    """What a subscriber saw of a burst: messages, distinct ones, first publish -> last one."""

    received: int
    distinct: int
    seconds: float
    cpu: float = 0.0  # the router's CPU seconds per derived event, when a router relayed it


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


def routed_burst(ctx: Context, routes: Path, level: str, who: Daemon) -> Burst:
    """Run a burst through a router started with ``level`` logging."""
    name = f"emit-{who.label}-{level.lower()}"
    args = ["--routes", str(routes)]
    with running_router(ctx, name, args, level=level, who=who) as router:
        cpu = proc_cpu(router.proc.pid)
        got = asyncio.run(burst(ctx.redis_url, "bench/event/in", ctx.sizes.emit_events, 5.0))
        used = proc_cpu(router.proc.pid) - cpu
    return dataclasses.replace(got, cpu=used / max(got.received, 1))


def relay_burst(ctx: Context, count: int) -> Burst:
    """Run the burst through bench/relay.py, a bare redis-py relay in its own process."""
    wait_patterns(ctx.redis_url, lambda n: n == 0, 5.0)
    cmd = [sys.executable, str(REPO / "bench" / "relay.py"), ctx.redis_url, "bench/event/in"]
    proc = subprocess.Popen([*cmd, OUT_CHANNEL], env=clean_env(), stdin=subprocess.DEVNULL)
    try:
        wait_patterns(ctx.redis_url, lambda n: n > 0, 30.0)
        cpu = proc_cpu(proc.pid)
        got = asyncio.run(burst(ctx.redis_url, "bench/event/in", count, 5.0))
        used = proc_cpu(proc.pid) - cpu
    finally:
        proc.terminate()
        proc.wait(5)
    if got.distinct != count:
        raise BenchError(f"the bare relay itself lost {count - got.distinct} messages")
    return dataclasses.replace(got, cpu=used / max(got.received, 1))


def rate(got: Burst) -> float:
    """Return the derived events per second of a burst."""
    return got.received / got.seconds


def emit_rows(ctx: Context, who: Daemon, routed: list[Burst], relays: list[Burst]) -> list[Row]:
    """Return a router's emit rows against the relay: rate, CPU per event, losses."""
    count = ctx.sizes.emit_events
    relayed, ours = max(relays, key=rate), max(routed, key=rate)
    relay_rate, rate_ = rate(relayed), rate(ours)
    lost = max(count - burst.distinct for burst in routed)
    surplus = max(burst.received - burst.distinct for burst in routed)
    what = f"{count} events"
    return [
        Row("emit", f"derived/s, {what}, log WARNING (base: bare relay)", f"{rate_:.0f}/s",
            f">= {EMIT_RATIO:g}x base", f"{relay_rate:.0f}/s", f"{rate_ / relay_rate:.2f}x",
            verdict(rate_ >= EMIT_RATIO * relay_rate), who.label),
        Row("emit", "CPU (user+sys) per derived event, log WARNING (base: the relay's)",
            f"{ours.cpu * 1000:.3f} ms", "-", f"{relayed.cpu * 1000:.3f} ms",
            f"{ours.cpu / relayed.cpu:.2f}x", who=who.label),
        Row("emit", "lost (N - distinct received), worst round, log WARNING; duplicates",
            f"{lost}; {surplus}", "0; 0", "0", verdict=verdict(lost == 0 and surplus == 0),
            who=who.label),
    ]  # fmt: skip


def bench_emit(ctx: Context) -> list[Row]:
    """Derived events/s of an emit-only route, against a bare redis-py relay."""
    count = ctx.sizes.emit_events
    routes = ctx.tmp / "emit" / "routes.d"
    write_file(routes / "emit.yml", EMIT_ROUTE)
    base = asyncio.run(burst(ctx.redis_url, OUT_CHANNEL, count, 5.0))
    base_rate = base.received / base.seconds
    if base.distinct != count:
        raise BenchError(f"the bare subscriber itself lost {count - base.distinct} messages")
    # Alternated, best of each: the machine's load moves a single burst by half.
    relays: list[Burst] = []
    routed: dict[str, list[Burst]] = {who.label: [] for who in ctx.routers}
    for n in range(EMIT_ROUNDS):
        relays.append(relay_burst(ctx, count))
        for who in ctx.routers if n % 2 == 0 else reversed(ctx.routers):
            routed[who.label].append(routed_burst(ctx, routes, "WARNING", who))
    relay_rate = max(rate(b) for b in relays)
    serial = asyncio.run(awaited_publishes(ctx.redis_url, max(count // 4, 1)))
    each = "; ".join(
        f"{name} {', '.join(f'{rate(b):.0f}/s {b.cpu * 1000:.3f} ms' for b in bursts)}"
        for name, bursts in (("relay", relays), *routed.items())
    )
    ctx.notes.append(f"emit: per round (derived/s, CPU per derived event): {each}")
    ctx.notes.append(
        "emit: target rows with the router at --log-level WARNING (INFO logs one line per "
        "emit: its own row); relay = bench/relay.py, a bare redis-py client in its own process "
        "that receives each event and publishes one derived event per message, pipelined; "
        "subscriber = a bare redis-py psubscribe + get_message loop in this process receiving "
        "the same burst published straight to bench/event/out"
    )
    rows = []
    for who in ctx.routers:
        rows += emit_rows(ctx, who, routed[who.label], relays)
        noisy = routed_burst(ctx, routes, "INFO", who)
        rows.append(
            Row("emit", f"derived/s, {count} events, log INFO; lost; CPU per derived event",
                f"{rate(noisy):.0f}/s; {count - noisy.distinct}; {noisy.cpu * 1000:.3f} ms",
                "-", f"{relay_rate:.0f}/s", f"{rate(noisy) / relay_rate:.2f}x", who=who.label)
        )  # fmt: skip
    return [
        *rows,
        Row("emit", "bare relay vs bare subscriber (no publishing)", f"{relay_rate:.0f}/s", "-",
            f"{base_rate:.0f}/s", f"{relay_rate / base_rate:.2f}x"),
        Row("emit", "bare redis-py: one awaited PUBLISH after another", f"{serial:.0f}/s", "-",
            f"{base_rate:.0f}/s", f"{serial / base_rate:.2f}x"),
    ]  # fmt: skip
