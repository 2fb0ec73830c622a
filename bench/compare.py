"""Benchmark another commit beside the working tree: same harness, same run, interleaved.

    .venv/bin/python bench/compare.py REF [REF ...] [--only NAME ...] [--quick] [--repeat N]

REF (any commit git names: a hash, a tag, ``main~3``) is exported with ``git archive`` into a
temp folder and installed in a virtual environment of its own; the working tree, as it is now
(uncommitted changes included, untracked files not ignored too), is installed the same way in
another. Both get the dependencies the working tree's ``uv.lock`` pins (``uv export``), then
their own package without dependencies: what differs between the two columns is our code. The
main ``.venv`` is not touched. Every benchmark then measures both, interleaved round by round
where it can (footprint, spawn, latency, emit), and prints one table: each row's figure for
REF and for the working tree, and the ratio of the two (tree / REF). Several REFs make one
column each (a bisection in one run); the ratio is to the first. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from harness import FULL, QUICK, REPO, Daemon, Row, started
from run import BENCHES, run_all

UV = REPO / ".venv" / "bin" / "uv"
TREE = "tree"
#: The first number of a figure ("336/s", "1.010 ms; 3 lost", "+7.6 MiB").
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def git(*args: str) -> str:
    """Run git in the repository; return its stdout."""
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout


def export_ref(short: str, into: Path) -> None:
    """Write the files of commit ``short`` into ``into``."""
    into.mkdir(parents=True)
    # No group or world write bits (git archive's default umask is 002): the router refuses,
    # as root, route files and folders others can change.
    archive = subprocess.Popen(
        ["git", "-c", "tar.umask=022", "archive", short], cwd=REPO, stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {short} failed")


def export_tree(into: Path) -> None:
    """Copy the working tree's files (tracked, and untracked but not ignored) into ``into``."""
    listed = git("ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the tree is not copied
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def install(source: Path, venv: Path, requirements: Path) -> str:
    """Create ``venv``, install the pinned dependencies, then ``source`` without them."""
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", VIRTUAL_ENV=str(venv))
    env.pop("PYTHONPYCACHEPREFIX", None)
    base = getattr(sys, "_base_executable", sys.executable)
    python = str(venv / "bin" / "python")
    pip = [str(UV), "pip", "install", "-q", "--python", python]
    for cmd in (
        [str(UV), "venv", "-q", "--python", base, str(venv)],
        [*pip, "-r", str(requirements)],
        [*pip, "--no-deps", str(source)],
    ):
        subprocess.run(cmd, cwd=source, env=env, check=True, stdout=subprocess.DEVNULL)
    return python


def prepare(refs: Sequence[str], work: Path) -> list[Daemon]:
    """Install each REF and the working tree side by side in ``work``; return their daemons."""
    requirements = work / "requirements.txt"
    pinned = subprocess.run(
        [str(UV), "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-header",
         "--format", "requirements-txt"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    requirements.write_text(pinned.stdout)
    sources = []
    for ref in refs:
        short = git("rev-parse", "--short", f"{ref}^{{commit}}").strip()
        export_ref(short, work / short)
        sources.append((short, work / short))
    export_tree(work / TREE)
    cwd = work / "cwd"  # neither checkout: each interpreter imports its installed package
    cwd.mkdir()
    daemons = []
    for label, source in (*sources, (TREE, work / TREE)):
        start = time.perf_counter()
        python = install(source, work / f"venv-{label}", requirements)
        print(f"installed {label} in {time.perf_counter() - start:.1f}s", flush=True)
        daemons.append(Daemon(label, python=python, home=source, cwd=cwd))
    return daemons


def first_number(text: str) -> float | None:
    """Return the first number of a figure, or None."""
    found = NUMBER.search(text.replace(",", ""))
    return float(found.group()) if found else None


def ratio(ref: Sequence[str], tree: Sequence[str]) -> str:
    """Return tree / REF of the medians of the figures' first numbers."""
    theirs = [n for n in map(first_number, ref) if n is not None]
    ours = [n for n in map(first_number, tree) if n is not None]
    if not theirs or not ours or statistics.median(theirs) == 0:
        return "-"
    return f"{statistics.median(ours) / statistics.median(theirs):.2f}x"


def print_comparison(rows: Sequence[Row], refs: Sequence[str]) -> None:
    """Print each (bench, metric) with each REF's figures, the tree's, and tree / first REF."""
    keys: list[tuple[str, str]] = []
    figures: dict[tuple[str, str], dict[str, list[str]]] = {}
    for row in rows:
        key = (row.bench, row.metric)
        if key not in figures:
            keys.append(key)
            figures[key] = {}
        shown = row.measured + (f" {row.verdict}" if row.verdict != "info" else "")
        figures[key].setdefault(row.who or "-", []).append(shown)
    lines = [("bench", "metric", *refs, TREE, f"tree/{refs[0]}", "other")]
    for key in keys:
        seen = figures[key]
        columns = [seen.pop(label, []) for label in (*refs, TREE)]
        other = "; ".join(f"{who}: {' | '.join(got)}" for who, got in seen.items())
        shown = [" | ".join(got) or "-" for got in columns]
        lines.append((*key, *shown, ratio(columns[0], columns[-1]), other or "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Benchmark a commit beside the working tree.")
    parser.add_argument(
        "refs", metavar="REF", nargs="+", help="the commit(s) to compare with (git revs)"
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHES), help="this benchmark (repeatable)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="N", help="run the benchmarks N times (ranges)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folders")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Install both, run the benchmarks, print the comparison; 2 when the harness breaks."""
    args = parse_args(argv)
    names = args.only or [name for name in BENCHES if name != "cluster"]
    work = Path(tempfile.mkdtemp(prefix="erc-", dir="/tmp"))
    start = time.perf_counter()
    try:
        daemons = prepare(args.refs, work)
        rows: list[Row] = []
        notes: list[str] = []
        for n in range(args.repeat):  # the order alternates from one run to the next
            subjects = tuple(daemons if n % 2 == 0 else reversed(daemons))
            with started(QUICK if args.quick else FULL, False, args.keep,
                         subjects=subjects) as ctx:  # fmt: skip
                rows += run_all(ctx, names)
                notes += ctx.notes
    except Exception:
        traceback.print_exc()
        print("compare: the harness itself broke (see above)", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_comparison(rows, [who.label for who in daemons[:-1]])
    for note in notes:
        print(f"note: {note}")
    print(f"total {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
