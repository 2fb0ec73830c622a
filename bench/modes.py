"""Benchmark execution modes: one burst through a route in ``parallel`` and ``queued`` mode."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from harness import (
    POLL,
    BenchError,
    Context,
    Row,
    count_lines,
    running_router,
    verdict,
    wait_lines,
    write_file,
)
from traffic import publish_burst

CHANNEL = "bench/event/job"
# One short write with O_APPEND is atomic: the lines of steps running at once do not interleave.
JOB_STEP = '#!/bin/sh\nprintf \'%s %s\\n\' "$KEY" "$SEQ" >> "$OUT"\n'
JOB_ROUTE = """\
routes:
  - name: modes
    on: bench/event/job
%s    do:
      - run: ../handlers/job
        env:
          KEY: "{{ payload.key }}"
          SEQ: "{{ payload.seq }}"
"""
WARM_UP = 20  # events run before the burst, so that the first spawns are not in the figure
IDLE = 5.0  # seconds without a new line after which the missing runs count as lost
DEADLINE = 60.0  # the whole burst, at most


@dataclass(frozen=True)
class Variant:
    """One route of the comparison: its name, its execution options, how the table calls it."""

    name: str
    options: tuple[str, ...]
    label: str


QUEUED = Variant("queued", (), "mode: queued (default), no key")
PARALLEL = Variant("parallel", ("mode: parallel", "max: 4"), "mode: parallel, max: 4, no key")
KEYED = Variant("keyed", ('key: "{{ payload.key }}"',), "mode: queued, key: payload.key")


@dataclass(frozen=True)
class ModeRun:
    """What one burst gave: runs/s, the lost and the surplus lines, the steps seen at once."""

    rate: float
    lost: int
    surplus: int
    peak: int


def step_children(pid: int) -> int:
    """Return how many child processes (the steps) the router has now, from /proc."""
    total = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += len((task / "children").read_bytes().split())
    return total


def watch_runs(out: Path, count: int, pid: int) -> tuple[float, int]:
    """Poll until ``out`` holds ``count`` lines, or none came for IDLE s, or DEADLINE passed.

    Return perf_counter() at the last new line, and the most steps seen running at once (the
    router's children, sampled at each poll: a lower bound, as a step lives about a ms).
    """
    start = last = time.perf_counter()
    have, peak = 0, 0
    while have < count:
        peak = max(peak, step_children(pid))
        now = time.perf_counter()
        lines = count_lines(out)
        if lines > have:
            have, last = lines, now
        elif now - last > IDLE or now - start > DEADLINE:
            break
        time.sleep(POLL)
    return last, peak


def burst_payloads(count: int, keys: int) -> list[bytes]:
    """Return ``count`` payloads ``{"key": "k<seq % keys>", "seq": seq}``."""
    return [b'{"key": "k%d", "seq": %d}' % (seq % keys, seq) for seq in range(count)]


def lost_and_surplus(out: Path, count: int, keys: int) -> tuple[int, int]:
    """Return how many (key, seq) pairs of the burst ``out`` lacks, and its other lines."""
    lines = out.read_text().splitlines() if out.exists() else []
    expected = {f"k{seq % keys} {seq}" for seq in range(count)}
    found = expected.intersection(lines)
    return len(expected) - len(found), len(lines) - len(found)


def run_variant(ctx: Context, work: Path, variant: Variant, n: int) -> ModeRun:
    """Start a router on the variant's route, warm it up, then time one burst through it."""
    count, keys = ctx.sizes.modes_events, ctx.sizes.modes_keys
    routes = work / f"routes-{variant.name}"
    options = "".join(f"    {option}\n" for option in variant.options)
    write_file(routes / "modes.yml", JOB_ROUTE % options)
    out = work / f"{variant.name}{n}.out"
    # compare.py runs each round once per install in the same folder: a file left by the
    # other install's round would end the warm-up wait at once.
    out.unlink(missing_ok=True)
    payloads = burst_payloads(count, keys)
    args = ["--routes", str(routes)]
    with running_router(ctx, f"modes-{variant.name}{n}", args, env={"OUT": str(out)}) as router:
        client = redis.Redis.from_url(ctx.redis_url)
        try:
            publish_burst(client, CHANNEL, burst_payloads(WARM_UP, keys))
            wait_lines(out, WARM_UP, timeout=10.0)
            out.unlink()  # every warm-up step has written its line and exited
            start = time.perf_counter()
            publish_burst(client, CHANNEL, payloads)
            last, peak = watch_runs(out, count, router.proc.pid)
        finally:
            client.close()
    if count_lines(out) == 0:
        raise BenchError(f"no step of the {variant.name} burst ran within {IDLE:g}s")
    lost, surplus = lost_and_surplus(out, count, keys)
    return ModeRun(count_lines(out) / max(last - start, 1e-9), lost, surplus, peak)


def mode_runs(ctx: Context, work: Path) -> dict[str, ModeRun]:
    """Alternate queued and parallel rounds, then run keyed once; return the best of each.

    Best is the highest runs/s; the losses, surplus lines and peak are the worst round's.
    """
    runs: dict[str, list[ModeRun]] = {v.name: [] for v in (QUEUED, PARALLEL, KEYED)}
    for n in range(ctx.sizes.modes_rounds):
        for variant in (QUEUED, PARALLEL):
            runs[variant.name].append(run_variant(ctx, work, variant, n))
    runs[KEYED.name].append(run_variant(ctx, work, KEYED, 0))
    each = "; ".join(
        f"{key} {', '.join(f'{r.rate:.0f}' for r in got)}" for key, got in runs.items()
    )
    ctx.notes.append(f"modes: runs/s per round: {each} (best of each in the table)")
    return {
        key: ModeRun(
            max(r.rate for r in got),
            max(r.lost for r in got),
            max(r.surplus for r in got),
            max(r.peak for r in got),
        )
        for key, got in runs.items()
    }


def lost_row(variant: Variant, got: ModeRun) -> Row:
    """Return the target row: nothing lost, nothing written twice."""
    extra = f" (+{got.surplus} surplus lines)" if got.surplus else ""
    return Row(
        "modes",
        f"lost (N - distinct (key, seq) written), {variant.name}",
        f"{got.lost}{extra}",
        "0",
        "0",
        verdict=verdict(got.lost == 0 and got.surplus == 0),
    )


def bench_modes(ctx: Context) -> list[Row]:
    """Runs/s of a burst in ``parallel`` mode (max 4) against the same burst ``queued``."""
    count, keys = ctx.sizes.modes_events, ctx.sizes.modes_keys
    work = ctx.tmp / "modes"
    write_file(work / "handlers" / "job" / "10step", JOB_STEP, executable=True)
    got = mode_runs(ctx, work)
    queued, parallel, keyed = got["queued"], got["parallel"], got["keyed"]
    ctx.notes.append(
        f"modes: one route on {CHANNEL}, one #!/bin/sh step appending 'KEY SEQ' to a file; "
        f"{count} events over {keys} keys in one pipeline, first publish -> last line; router "
        "log level INFO. Without key: all the route's runs are one lane, so queued = one run "
        "at a time and parallel = up to max (4) at once; with key: each key is a lane (queued "
        "per key, in order), all capped by --max-concurrency (32). 'peak' = the most step "
        "processes seen at once, sampled from /proc at each poll (a lower bound); losses are "
        "the worst round's"
    )
    what = f"{count} events / {keys} keys"
    peaks = f"queued {queued.peak}, parallel {parallel.peak}, keyed {keyed.peak}"
    return [
        Row("modes", f"runs/s, {what}, {PARALLEL.label} (base: queued)", f"{parallel.rate:.0f}/s",
            ">= 1.5x base", f"{queued.rate:.0f}/s", f"{parallel.rate / queued.rate:.2f}x",
            verdict(parallel.rate >= 1.5 * queued.rate)),
        lost_row(PARALLEL, parallel),
        lost_row(QUEUED, queued),
        Row("modes", f"runs/s, {what}, {KEYED.label} ({keys} lanes); lost",
            f"{keyed.rate:.0f}/s; {keyed.lost}", "-", f"{queued.rate:.0f}/s",
            f"{keyed.rate / queued.rate:.2f}x"),
        Row("modes", "peak steps running at once (sampled)", peaks, "-"),
    ]  # fmt: skip
