"""Benchmark the real router against baselines measured in the same run.

Benchmarks are not tests: this starts a real Redis-compatible server (``EmbeddedServer`` on a
Unix socket in a temporary folder) and the real router (``python -m eventrouter run`` in a
subprocess, on routes and handler folders generated here), drives it, and prints one table:
measured figure, target, baseline, ratio, PASS/FAIL. It exits 0 whatever the verdicts, and
non-zero only when the harness itself breaks. See bench/README.md for what each figure means.

    .venv/bin/python bench/run.py [--quick] [--only NAME] [--profile] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from cluster import bench_cluster
from emit import bench_emit
from footprint import bench_footprint
from harness import FULL, QUICK, BenchError, Context, Daemon, Row, started
from modes import bench_modes
from scale import bench_scale
from traffic import bench_latency, bench_spawn

BENCHES: dict[str, Callable[[Context], list[Row]]] = {
    "footprint": bench_footprint,
    "spawn": bench_spawn,
    "latency": bench_latency,
    "emit": bench_emit,
    "modes": bench_modes,
    "scale": bench_scale,
    "cluster": bench_cluster,
}


#: The benchmarks that another daemon (--daemon) can run: their handlers are an events folder.
DAEMON_BENCHES = ("footprint", "spawn", "latency")
#: The benchmarks that measure every subject themselves, interleaved; the others run once per
#: eventrouter install.
INTERLEAVED = ("footprint", "spawn", "latency", "emit")


def run_one(ctx: Context, name: str) -> list[Row]:
    """Run one benchmark; a router that misbehaves gives a FAIL row, not a crash."""
    print(f"running {name} ...", flush=True)
    start = time.perf_counter()
    rows: list[Row] = []
    if name in INTERLEAVED or not ctx.routers:
        parts = [(ctx, "")]
    else:  # notes stay shared: replace copies the reference to the list
        parts = [(dataclasses.replace(ctx, subjects=(who,)), who.label) for who in ctx.routers]
    for part, label in parts:
        try:
            got = BENCHES[name](part)
        except BenchError as exc:
            ctx.notes.append(f"{name}{f' ({label})' if label else ''}: did not complete: {exc}")
            got = [Row(name, "did not complete (see the notes)", "-", "-", verdict="FAIL")]
        rows += [dataclasses.replace(row, who=row.who or label) for row in got]
    print(f"  {name} took {time.perf_counter() - start:.1f}s", flush=True)
    return rows


def run_all(ctx: Context, names: Sequence[str]) -> list[Row]:
    """Run the named benchmarks in order; return all their rows."""
    return [row for name in names for row in run_one(ctx, name)]


def print_table(rows: Sequence[Row]) -> None:
    """Print the rows as an aligned table."""
    header = Row("bench", "metric", "measured", "target", "baseline", "ratio", "verdict", "who")
    cells = [
        [r.bench, r.who, r.metric, r.measured, r.target, r.baseline, r.ratio, r.verdict]
        for r in (header, *rows)
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    for n, line in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Benchmark eventrouter (reports, never gates).")
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--only", choices=sorted(BENCHES), help="run one benchmark")
    parser.add_argument(
        "--profile", action="store_true", help="run the router under cProfile (distorts figures)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and logs")
    parser.add_argument(
        "--daemon",
        metavar="CMD",
        help="run this daemon instead of `eventrouter run` where the benchmark's handlers are "
        "an events folder (footprint, spawn, latency): {redis}, {events}, {routes}, "
        "{address}, {python} are filled in (bench/README.md)",
    )
    parser.add_argument(
        "--peer",
        metavar="CMD",
        help="another daemon measured beside the router and the floor (footprint, spawn, "
        "latency), same fields as --daemon: NS8's agent, say (bench/README.md)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help="serve Redis on 127.0.0.1:PORT too, for a --daemon that cannot use a Unix socket",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print the table; return 0 unless the harness breaks."""
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    names = [args.only] if args.only else list(BENCHES)
    if args.daemon and not args.only:
        names = [name for name in names if name in DAEMON_BENCHES]
    print(
        f"eventrouter bench: Python {platform.python_version()}, {os.cpu_count()} CPU(s), "
        f"{'quick' if args.quick else 'full'} sizes{', PROFILED' if args.profile else ''}"
        f"{f', daemon: {args.daemon}' if args.daemon else ''}"
        f"{f', peer: {args.peer}' if args.peer else ''}",
        flush=True,
    )
    start = time.perf_counter()
    subject = Daemon("daemon", command=args.daemon) if args.daemon else Daemon("router")
    peer = Daemon("peer", command=args.peer) if args.peer else None
    try:
        with started(
            sizes, args.profile, args.keep, subjects=(subject,), port=args.port, peer=peer
        ) as ctx:
            rows = run_all(ctx, names)
    except Exception:
        traceback.print_exc()
        print("bench: the harness itself broke (see above)", file=sys.stderr)
        return 2
    print()
    print_table(rows)
    for note in ctx.notes:
        print(f"note: {note}")
    print(f"total {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
