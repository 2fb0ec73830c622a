"""Benchmarks that push events through a running router: spawn, latency, emit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from harness import (
    FLOOR,
    REPO,
    BenchError,
    Context,
    Daemon,
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
    write_file,
)

# --- 1. spawn throughput and router CPU per event ------------------------------------------

# The NS8 convention: events/<name>/ is the handler of */event/<name>, queued, no route file,
# so that another daemon (--daemon, NS8's agent) runs the very same step.
SPAWN_STEP = '#!/bin/sh\necho x >> "$OUT"\n'
#: A daemon's burst rate and CPU per event against the floor's (issue 19).
BURST_RATIO = 0.9
CPU_RATIO = 1.3


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
    """Each round of each way of running the step: directly, via asyncio, by each daemon."""

    direct: list[Round]
    floor: list[float]
    daemons: dict[str, list[Round]]


def daemon_spawn_round(ctx: Context, work: Path, who: Daemon, n: int) -> Round:
    """Start ``who`` on the events folder, warm it up, time one burst through it."""
    out = work / f"{who.label}{n}.out"
    args = ["--routes", str(work / "routes.d"), "--events-dir", str(work / "events")]
    name = f"spawn-{who.label}{n}"
    with running_router(ctx, name, args, env={"OUT": str(out)}, events=work / "events",
                        who=who) as router:  # fmt: skip
        client = redis.Redis.from_url(ctx.redis_url)
        try:
            routed_spawn_round(client, router, out, 10)
            return routed_spawn_round(client, router, out, ctx.sizes.spawn_runs)
        finally:
            client.close()


def spawn_rates(ctx: Context, work: Path, step: Path) -> SpawnRates:
    """Alternate direct, asyncio and each daemon's rounds after a warm-up."""
    runs = ctx.sizes.spawn_runs
    daemons = ctx.folder_daemons()
    rates = SpawnRates([], [], {who.label: [] for who in daemons})
    direct_spawn_round(step, 10, work / "warm.out")
    for n in range(ctx.sizes.spawn_rounds):
        rates.direct.append(direct_spawn_round(step, runs, work / f"direct{n}.out"))
        floor = asyncio_spawns(step, ctx.sizes.floor_runs, work / f"asyncio{n}.out")
        rates.floor.append(asyncio.run(floor))
        for who in daemons if n % 2 == 0 else reversed(daemons):
            rates.daemons[who.label].append(daemon_spawn_round(ctx, work, who, n))
    each = "; ".join(
        f"{key} {', '.join(f'{r.rate:.0f}/s {r.cpu * 1000:.3f} ms' for r in got)}"
        for key, got in (("direct", rates.direct), *rates.daemons.items())
    )
    floors = ", ".join(f"{r:.0f}" for r in rates.floor)
    ctx.notes.append(
        f"spawn: per round (runs/s, CPU per run): {each}; asyncio loop {floors}/s "
        "(table: each daemon's best rate and least CPU per run)"
    )
    return rates


def in_process(ctx: Context, work: Path, base: float, base_cpu: float, who: Daemon) -> list[Row]:
    """The same step run in process by the step runner, then by the dispatcher (no Redis).

    ``base`` is the direct loop's runs/s, ``base_cpu`` its CPU per step in ms.
    """
    runs = ctx.sizes.spawn_runs // 5
    done = subprocess.run(
        [who.python, str(REPO / "bench" / "inproc.py"), str(work / "events"), str(runs)],
        capture_output=True, text=True, env=clean_env(OUT=str(work / "inproc.out")),
        cwd=who.cwd, check=False, timeout=120,
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
                f"{base:.0f}/s; {base_cpu:.3f} ms", f"{rate / base:.2f}x", who=who.label)
        )  # fmt: skip
    return rows


def spawn_rows(ctx: Context, rates: SpawnRates, who: Daemon) -> list[Row]:
    """Return a subject's target rows: its burst rate and CPU per event against the floor's."""
    best = max(rates.daemons[who.label], key=lambda r: r.rate).rate
    cpu = min(r.cpu for r in rates.daemons[who.label]) * 1000
    floor = max(r.rate for r in rates.daemons[FLOOR.label])
    floor_cpu = min(r.cpu for r in rates.daemons[FLOOR.label]) * 1000
    what = f"{ctx.sizes.spawn_runs} events -> events/spawn/ (queued), 1 sh step, log INFO"
    rows = [
        Row("spawn", f"queued burst runs/s, {what} (base: the floor)", f"{best:.0f}/s",
            f">= {BURST_RATIO:g}x base", f"{floor:.0f}/s", f"{best / floor:.2f}x",
            verdict(best >= BURST_RATIO * floor), who.label),
        Row("spawn", "daemon CPU (user+sys) per event in that burst (base: the floor's)",
            f"{cpu:.3f} ms", f"<= {CPU_RATIO:g}x base", f"{floor_cpu:.3f} ms",
            f"{cpu / floor_cpu:.2f}x", verdict(cpu <= CPU_RATIO * floor_cpu), who.label),
    ]  # fmt: skip
    if ctx.peer is not None and who is not ctx.peer:
        peer = max(r.rate for r in rates.daemons[ctx.peer.label])
        rows.append(
            Row("spawn", "queued burst runs/s (base: the peer's)", f"{best:.0f}/s", ">= base",
                f"{peer:.0f}/s", f"{best / peer:.2f}x", verdict(best >= peer), who.label)
        )  # fmt: skip
    return rows


def bench_spawn(ctx: Context) -> list[Row]:
    """Queued burst through each daemon, and its CPU per event, against the floor's."""
    work = ctx.tmp / "spawn"
    step = write_file(work / "events" / "spawn" / "10step", SPAWN_STEP, executable=True)
    (work / "routes.d").mkdir(parents=True, exist_ok=True)
    rates = spawn_rates(ctx, work, step)
    base = max(r.rate for r in rates.direct)
    base_cpu = min(r.cpu for r in rates.direct) * 1000
    floor = max(r.rate for r in rates.daemons[FLOOR.label])
    floor_cpu = min(r.cpu for r in rates.daemons[FLOOR.label]) * 1000
    rows = [row for who in ctx.subjects for row in spawn_rows(ctx, rates, who)]
    if ctx.peer is not None:
        rows += spawn_rows(ctx, rates, ctx.peer)
    rows += [
        Row("spawn", "the floor's burst runs/s; CPU per event (base: a posix_spawn loop)",
            f"{floor:.0f}/s; {floor_cpu:.3f} ms", "-", f"{base:.0f}/s; {base_cpu:.3f} ms",
            f"{floor / base:.2f}x", who=FLOOR.label),
        Row("spawn", "same step via asyncio, 3 pipes, new session (base: posix_spawn loop)",
            f"{max(rates.floor):.0f}/s", "-", f"{base:.0f}/s", f"{max(rates.floor) / base:.2f}x"),
    ]  # fmt: skip
    for who in ctx.routers:
        if who.home == REPO:  # bench/inproc.py speaks this checkout's API
            rows += in_process(ctx, work, base, base_cpu, who)
    return rows


# --- 2. latency ----------------------------------------------------------------------------

# $EPOCHREALTIME is read once bash has started: the interpreter's start-up is in every figure,
# router and baseline alike, so the difference of the two is the router's own share. The
# payload (its seq) comes on stdin, as NS8's convention gives it, read after the stamp.
LATENCY_STEP = (
    '#!/bin/bash\nt=$EPOCHREALTIME\nIFS= read -r p\nprintf \'%s %s\\n\' "$t" "$p" >> "$OUT"\n'
)
#: How far above the floor's a daemon's p50 and p99 may be (issue 19).
LATENCY_MARGINS = (("p50", 0.5, 0.25), ("p99", 0.99, 1.0))


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


@dataclass
class Paced:
    """What the paced events through one daemon gave, over all its rounds."""

    delays: list[float] = dataclasses.field(default_factory=list)
    lost: int = 0
    cpu: list[float] = dataclasses.field(default_factory=list)  # seconds per round


def routed_latency(ctx: Context, work: Path, who: Daemon, n: int, into: Paced) -> None:
    """Publish at the target rate to an events folder through ``who``; add to ``into``."""
    args = ["--routes", str(work / "routes.d"), "--events-dir", str(work / "events")]
    out = work / f"{who.label}{n}.out"
    name = f"latency-{who.label}{n}"
    with running_router(ctx, name, args, env={"OUT": str(out)}, events=work / "events",
                        who=who) as router:  # fmt: skip
        cpu = proc_cpu(router.proc.pid)
        delays, lost = paced_events(ctx, out)
        into.cpu.append(proc_cpu(router.proc.pid) - cpu)
    into.delays += delays
    into.lost += lost


def latency_rows(ctx: Context, got: dict[str, Paced], who: Daemon) -> list[Row]:
    """Return a daemon's p50 and p99 against the floor's, its maximum, losses and CPU."""
    mine, floor = got[who.label], got[FLOOR.label]
    sizes = ctx.sizes
    what = f"{sizes.latency_rate:g}/s for {sizes.latency_seconds:g}s x {sizes.latency_rounds}"
    rows = []
    for label, fraction, margin in LATENCY_MARGINS:
        ours, theirs = percentile(mine.delays, fraction), percentile(floor.delays, fraction)
        rows.append(
            Row("latency", f"publish -> step start {label}, {what} (base: the floor)",
                f"{ours:.2f} ms", f"<= base + {margin:g} ms", f"{theirs:.2f} ms",
                f"+{ours - theirs:.2f} ms", verdict(ours <= theirs + margin), who.label)
        )  # fmt: skip
    cpu, base_cpu = sum(mine.cpu), sum(floor.cpu)
    events = int(sizes.latency_rate * sizes.latency_seconds) * len(mine.cpu)
    rows += [
        Row("latency", f"daemon CPU (user+sys) over the {events} paced events (base: the floor)",
            f"{cpu:.2f} s", "-", f"{base_cpu:.2f} s", f"{cpu / max(base_cpu, 1e-9):.2f}x",
            who=who.label),
        Row("latency", "max; events without a step run", f"{max(mine.delays):.2f} ms; "
            f"{mine.lost} lost", "0 lost", verdict=verdict(mine.lost == 0), who=who.label),
    ]  # fmt: skip
    return rows


def bench_latency(ctx: Context) -> list[Row]:
    """Publish -> step start at a steady rate through each daemon, against the floor."""
    sizes = ctx.sizes
    work = ctx.tmp / "latency"
    step = write_file(work / "events" / "latency" / "10stamp", LATENCY_STEP, executable=True)
    (work / "routes.d").mkdir(parents=True, exist_ok=True)
    base = direct_latency(step, sizes.latency_baseline, sizes.latency_rate, work / "direct.out")
    daemons = ctx.folder_daemons()
    got = {who.label: Paced() for who in daemons}
    for n in range(sizes.latency_rounds):
        for who in daemons if n % 2 == 0 else reversed(daemons):
            routed_latency(ctx, work, who, n, got[who.label])
    for who in daemons:
        if not got[who.label].delays:
            raise BenchError(f"no step run by {who.label} recorded its start")
    ctx.notes.append(
        "latency: the step is #!/bin/bash stamping $EPOCHREALTIME, then reading its payload on "
        "stdin, so exec and bash start-up are inside every figure; the daemons' rounds "
        "alternate, percentiles over all the rounds of each; router log level INFO"
    )
    rows = [row for who in daemons if who is not FLOOR for row in latency_rows(ctx, got, who)]
    floor = got[FLOOR.label].delays
    for label, fraction, _ in LATENCY_MARGINS:
        ours, theirs = percentile(floor, fraction), percentile(base, fraction)
        rows.append(
            Row("latency", f"the floor's {label} (base: posix_spawn of the step, no Redis)",
                f"{ours:.2f} ms", "-", f"{theirs:.2f} ms", f"+{ours - theirs:.2f} ms",
                who=FLOOR.label)
        )  # fmt: skip
    return rows
