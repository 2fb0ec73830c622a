"""Benchmarks that push events through a running router: spawn, latency, emit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from harness import (
    REPO,
    BenchError,
    Context,
    Router,
    Row,
    clean_env,
    count_lines,
    percentile,
    proc_cpu,
    running_router,
    step_env,
    verdict,
    wait_lines,
    wait_patterns,
    write_file,
)

# --- 1. spawn throughput and router CPU per event ------------------------------------------

# The NS8 convention: events/<name>/ is the handler of */event/<name>, queued, no route file,
# so that another daemon (--daemon, NS8's agent) runs the very same step.
SPAWN_STEP = '#!/bin/sh\necho x >> "$OUT"\n'


def publish_burst(client: redis.Redis, channel: str, payloads: Sequence[bytes]) -> None:
    """Publish ``payloads`` back to back in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.publish(channel, payload)
    pipe.execute()


@dataclass(frozen=True)
class Round:
    """One burst: runs/s, and CPU seconds per run of the process that started the steps."""

    rate: float
    cpu: float


def direct_spawn_round(step: Path, runs: int, out: Path) -> Round:
    """Run posix_spawn + waitpid of ``step`` in a loop, with the router's env."""
    env = step_env("bench/event/spawn", OUT=str(out))
    program = str(step)
    cpu = os.times()
    start = time.perf_counter()
    for _ in range(runs):
        pid = os.posix_spawn(program, [program], env)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise BenchError(f"direct spawn of {step} failed: wait status {status}")
    elapsed = time.perf_counter() - start
    used = os.times()
    if count_lines(out) != runs:
        raise BenchError(f"direct spawn recorded {count_lines(out)} of {runs} runs")
    own = used.user - cpu.user + used.system - cpu.system
    return Round(runs / elapsed, own / runs)


def routed_spawn_round(client: redis.Redis, router: Router, out: Path, runs: int) -> Round:
    """Publish ``runs`` events back to back; measure until the last step wrote."""
    done = count_lines(out)
    payloads = [b'{"seq": %d}' % seq for seq in range(runs)]
    cpu = proc_cpu(router.proc.pid)
    start = time.perf_counter()
    publish_burst(client, "bench/event/spawn", payloads)
    end = wait_lines(out, done + runs, timeout=max(30.0, runs * 0.05))
    used = proc_cpu(router.proc.pid) - cpu
    return Round(runs / (end - start), used / runs)


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
    """Each round of each way of running the step."""

    direct: list[Round]
    floor: list[float]
    routed: list[Round]


def spawn_rates(ctx: Context, work: Path, step: Path) -> SpawnRates:
    """Alternate direct, asyncio and routed rounds after a warm-up."""
    runs = ctx.sizes.spawn_runs
    out = work / "router.out"
    rates = SpawnRates([], [], [])
    args = ["--routes", str(work / "routes.d"), "--events-dir", str(work / "events")]
    env = {"OUT": str(out)}
    with running_router(ctx, "spawn", args, env=env, events=work / "events") as router:
        client = redis.Redis.from_url(ctx.redis_url)
        try:
            direct_spawn_round(step, 10, work / "warm.out")
            routed_spawn_round(client, router, out, 10)
            for n in range(ctx.sizes.spawn_rounds):
                rates.direct.append(direct_spawn_round(step, runs, work / f"direct{n}.out"))
                floor = asyncio_spawns(step, ctx.sizes.floor_runs, work / f"asyncio{n}.out")
                rates.floor.append(asyncio.run(floor))
                rates.routed.append(routed_spawn_round(client, router, out, runs))
        finally:
            client.close()
    each = "; ".join(
        f"{key} {', '.join(f'{r.rate:.0f}/s {r.cpu * 1000:.3f} ms' for r in got)}"
        for key, got in (("direct", rates.direct), ("routed", rates.routed))
    )
    floors = ", ".join(f"{r:.0f}" for r in rates.floor)
    ctx.notes.append(
        f"spawn: per round (runs/s, CPU per run): {each}; asyncio floor {floors}/s "
        "(table: best rate of each, CPU of the routed round with the most per run)"
    )
    return rates


def in_process(ctx: Context, work: Path, base: float, base_cpu: float) -> list[Row]:
    """The same step run in process by the step runner, then by the dispatcher (no Redis).

    ``base`` is the direct loop's runs/s, ``base_cpu`` its CPU per step in ms.
    """
    runs = ctx.sizes.spawn_runs // 5
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "inproc.py"), str(work / "events"), str(runs)],
        capture_output=True, text=True, env=clean_env(OUT=str(work / "inproc.out")),
        cwd=REPO, check=False, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"bench/inproc.py exited {done.returncode}: {done.stderr[-300:]!r}")
    found = json.loads(done.stdout)
    rows = []
    for key, what in (
        ("runner", "step runner alone, in process, one run after another"),
        ("dispatcher", f"Dispatcher.receive of {runs} events at once, in process, log WARNING"),
    ):
        rate, cpu = found[key]
        rows.append(
            Row("spawn", f"{what}: runs/s; CPU per run (base: direct)",
                f"{rate:.0f}/s; {cpu * 1000:.3f} ms", "-",
                f"{base:.0f}/s; {base_cpu:.3f} ms", f"{rate / base:.2f}x")
        )  # fmt: skip
    return rows


def bench_spawn(ctx: Context) -> list[Row]:
    """Queued burst through the router, and its CPU per event, against a bare spawn loop."""
    work = ctx.tmp / "spawn"
    step = write_file(work / "events" / "spawn" / "10step", SPAWN_STEP, executable=True)
    (work / "routes.d").mkdir(parents=True, exist_ok=True)
    rates = spawn_rates(ctx, work, step)
    runs = ctx.sizes.spawn_runs
    base = max(r.rate for r in rates.direct)
    routed = max(r.rate for r in rates.routed)
    floor = max(rates.floor)
    cpu = max(r.cpu for r in rates.routed) * 1000
    base_cpu = min(r.cpu for r in rates.direct) * 1000
    what = f"{runs} events -> events/spawn/ (queued), 1 sh step, log INFO"
    return [
        Row("spawn", f"queued burst runs/s, {what}", f"{routed:.0f}/s", ">= 0.85x base",
            f"{base:.0f}/s", f"{routed / base:.2f}x", verdict(routed >= 0.85 * base)),
        Row("spawn", "router CPU (user+sys) per event in that burst (base: spawn loop's)",
            f"{cpu:.3f} ms", "<= 0.25 ms", f"{base_cpu:.3f} ms", f"{cpu / base_cpu:.2f}x",
            verdict(cpu <= 0.25)),
        Row("spawn", "same step via asyncio, 3 pipes, new session (base: direct)",
            f"{floor:.0f}/s", "-", f"{base:.0f}/s", f"{floor / base:.2f}x"),
        *([] if ctx.daemon is not None else in_process(ctx, work, base, base_cpu)),
    ]  # fmt: skip


# --- 2. latency ----------------------------------------------------------------------------

# $EPOCHREALTIME is read once bash has started: the interpreter's start-up is in every figure,
# router and baseline alike, so the difference of the two is the router's own share. The
# payload (its seq) comes on stdin, as NS8's convention gives it, read after the stamp.
LATENCY_STEP = (
    '#!/bin/bash\nt=$EPOCHREALTIME\nIFS= read -r p\nprintf \'%s %s\\n\' "$t" "$p" >> "$OUT"\n'
)
#: How far above the bare spawn the router's p50 and p99 may be (issue 11).
LATENCY_MARGINS = (("p50", 0.5, 0.4), ("p99", 0.99, 1.5))


def pace(start: float, seq: int, rate: float) -> None:
    """Sleep until the ``seq``-th tick of a ``rate``-per-second schedule begun at ``start``."""
    delay = start + seq / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def read_stamps(path: Path) -> dict[int, float]:
    """Return seq -> start time (epoch seconds) from the lines ``time payload`` a step wrote."""
    stamps: dict[int, float] = {}
    for line in path.read_text().splitlines():
        stamp, _, payload = line.partition(" ")
        # $EPOCHREALTIME follows the locale
        stamps[int(json.loads(payload)["seq"])] = float(stamp.replace(",", "."))
    return stamps


def delays_ms(sent: dict[int, float], path: Path) -> tuple[list[float], int]:
    """Return the step-start delays in ms and how many sent events never started a step."""
    stamps = read_stamps(path)
    delays = [(stamps[seq] - at) * 1000 for seq, at in sent.items() if seq in stamps]
    return delays, len(sent) - len(delays)


def spawn_fed(program: str, env: dict[str, str], payload: bytes) -> int:
    """posix_spawn ``program`` with ``payload`` on its stdin; return its pid."""
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(
            program, [program], env, file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0)]
        )
        os.write(write_end, payload)
    finally:
        os.close(read_end)
        os.close(write_end)
    return pid


def direct_latency(step: Path, samples: int, rate: float, out: Path) -> list[float]:
    """Return the delays (ms) from posix_spawn of ``step`` to its recorded start."""
    env = step_env("bench/event/latency", OUT=str(out))
    program = str(step)
    sent: dict[int, float] = {}
    start = time.perf_counter()
    for seq in range(samples):
        pace(start, seq, rate)
        sent[seq] = time.time()
        pid = spawn_fed(program, env, b'{"seq": %d}\n' % seq)
        os.waitpid(pid, 0)
    delays, lost = delays_ms(sent, out)
    if lost:
        raise BenchError(f"direct spawn: {lost} of {samples} runs recorded no start time")
    return delays


def paced_events(ctx: Context, out: Path) -> tuple[list[float], int]:
    """Publish at the target rate; return the delays (ms) until each step's start, and losses."""
    sizes = ctx.sizes
    count = int(sizes.latency_rate * sizes.latency_seconds)
    sent: dict[int, float] = {}
    client = redis.Redis.from_url(ctx.redis_url)
    try:
        client.ping()
        start = time.perf_counter()
        for seq in range(count):
            pace(start, seq, sizes.latency_rate)
            sent[seq] = time.time()
            client.publish("bench/event/latency", b'{"seq": %d}\n' % seq)
    finally:
        client.close()
    with contextlib.suppress(BenchError):  # losses are reported, not fatal
        wait_lines(out, count, timeout=10.0)
    return delays_ms(sent, out)


def routed_latency(ctx: Context, work: Path, out: Path) -> tuple[list[float], int]:
    """Publish at the target rate to a handler folder; return delays (ms) and losses."""
    args = ["--routes", str(work / "routes.d"), "--events-dir", str(work / "events")]
    env = {"OUT": str(out)}
    with running_router(ctx, "latency", args, env=env, events=work / "events") as _router:
        return paced_events(ctx, out)


def subscriber_latency(ctx: Context, step: Path, out: Path) -> tuple[list[float], int]:
    """The same events through ``bench/spawner.py``, a bare subscriber that spawns the step."""
    wait_patterns(ctx.redis_url, lambda n: n == 0, 5.0)
    env = step_env("bench/event/latency", OUT=str(out))
    cmd = [sys.executable, str(REPO / "bench" / "spawner.py"), ctx.redis_url, "*/event/*"]
    spawner = subprocess.Popen([*cmd, str(step)], env=env, cwd=REPO)
    try:
        wait_patterns(ctx.redis_url, lambda n: n > 0, 30.0)
        return paced_events(ctx, out)
    finally:
        spawner.terminate()
        spawner.wait()


def bench_latency(ctx: Context) -> list[Row]:
    """Publish -> step start at a steady rate, against the same spawn done directly."""
    sizes = ctx.sizes
    work = ctx.tmp / "latency"
    step = write_file(work / "events" / "latency" / "10stamp", LATENCY_STEP, executable=True)
    (work / "routes.d").mkdir(parents=True, exist_ok=True)
    base = direct_latency(step, sizes.latency_baseline, sizes.latency_rate, work / "direct.out")
    delays, lost = routed_latency(ctx, work, work / "router.out")
    if not delays:
        raise BenchError("no routed step recorded its start")
    what = f"{sizes.latency_rate:g}/s for {sizes.latency_seconds:g}s"
    rows = []
    for label, fraction, margin in LATENCY_MARGINS:
        ours, theirs = percentile(delays, fraction), percentile(base, fraction)
        rows.append(
            Row(
                "latency",
                f"publish -> step start {label}, {what} (base: bare spawn)",
                f"{ours:.2f} ms",
                f"<= base + {margin:g} ms",
                f"{theirs:.2f} ms",
                f"+{ours - theirs:.2f} ms",
                verdict(ours <= theirs + margin),
            )
        )
    ctx.notes.append(
        "latency: the step is #!/bin/bash stamping $EPOCHREALTIME, then reading its payload on "
        "stdin, so exec and bash start-up are inside both the routed and the direct (base) "
        "figures; router log level INFO"
    )
    rows.append(
        Row("latency", "max; events without a step run", f"{max(delays):.2f} ms; {lost} lost", "-")
    )
    if ctx.daemon is None:
        floor, missed = subscriber_latency(ctx, step, work / "spawner.out")
        if floor:
            ours, theirs = percentile(delays, 0.5), percentile(floor, 0.5)
            rows.append(
                Row("latency", "p50 of a bare redis-py subscriber spawning the step, "
                    f"{missed} lost (base: bare spawn); the router above it",
                    f"{theirs:.2f} ms", "-", f"{percentile(base, 0.5):.2f} ms",
                    f"+{theirs - percentile(base, 0.5):.2f} ms; router +{ours - theirs:.2f} ms")
            )  # fmt: skip
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
EMIT_ROUNDS = 2  # relay and router bursts, alternated


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


def routed_burst(ctx: Context, routes: Path, level: str) -> Burst:
    """Run a burst through a router started with ``level`` logging."""
    name = f"emit-{level.lower()}"
    with running_router(ctx, name, ["--routes", str(routes)], level=level) as router:
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
    routed: list[Burst] = []
    for _ in range(EMIT_ROUNDS):
        relays.append(relay_burst(ctx, count))
        routed.append(routed_burst(ctx, routes, "WARNING"))
    relayed, ours = max(relays, key=rate), max(routed, key=rate)
    relay_rate, rate_ = rate(relayed), rate(ours)
    serial = asyncio.run(awaited_publishes(ctx.redis_url, max(count // 4, 1)))
    noisy = routed_burst(ctx, routes, "INFO")
    noisy_rate = rate(noisy)
    each = "; ".join(
        f"{name} {', '.join(f'{rate(b):.0f}/s {b.cpu * 1000:.3f} ms' for b in bursts)}"
        for name, bursts in (("relay", relays), ("router", routed))
    )
    ctx.notes.append(f"emit: per round (derived/s, CPU per derived event): {each}")
    lost = count - ours.distinct
    ctx.notes.append(
        "emit: target rows with the router at --log-level WARNING (INFO logs one line per "
        "emit: its own row); relay = bench/relay.py, a bare redis-py client in its own process "
        "that receives each event and publishes one derived event per message, pipelined; "
        "subscriber = a bare redis-py psubscribe + get_message loop in this process receiving "
        "the same burst published straight to bench/event/out"
    )
    what = f"{count} events"
    return [
        Row("emit", f"derived/s, {what}, log WARNING (base: bare relay)", f"{rate_:.0f}/s",
            ">= 0.50x base", f"{relay_rate:.0f}/s", f"{rate_ / relay_rate:.2f}x",
            verdict(rate_ >= 0.5 * relay_rate)),
        Row("emit", "CPU (user+sys) per derived event, log WARNING (base: the relay's)",
            f"{ours.cpu * 1000:.3f} ms", "-", f"{relayed.cpu * 1000:.3f} ms",
            f"{ours.cpu / relayed.cpu:.2f}x"),
        Row("emit", "router CPU per derived event, log INFO", f"{noisy.cpu * 1000:.3f} ms", "-"),
        Row("emit", "lost (N - distinct received), log WARNING", str(lost), "0", "0",
            verdict=verdict(lost == 0 and ours.received == count)),
        Row("emit", f"derived/s, {what}, log INFO; lost", f"{noisy_rate:.0f}/s; "
            f"{count - noisy.distinct}", "-", f"{relay_rate:.0f}/s",
            f"{noisy_rate / relay_rate:.2f}x"),
        Row("emit", "bare relay vs bare subscriber (no publishing)", f"{relay_rate:.0f}/s", "-",
            f"{base_rate:.0f}/s", f"{relay_rate / base_rate:.2f}x"),
        Row("emit", "bare redis-py: one awaited PUBLISH after another", f"{serial:.0f}/s", "-",
            f"{base_rate:.0f}/s", f"{serial / base_rate:.2f}x"),
    ]  # fmt: skip
