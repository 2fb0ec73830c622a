"""What an idle node pays for: start-up time, imports, launch until subscribed, idle RSS."""

from __future__ import annotations

import resource
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import (
    FLOOR,
    BenchError,
    Context,
    Daemon,
    Row,
    clean_env,
    daemon_cmd,
    daemon_env,
    eventrouter_cmd,
    proc_cpu,
    rss_mib,
    verdict,
    wait_patterns,
)

STARTS = 7  # runs of each command; the median is reported
LAUNCHES = 5  # launches of each daemon, interleaved; the median is reported
#: Targets against the floor launched the same way (issue 19).
LAUNCH_RATIO = 1.3
RSS_MARGIN = 4.0  # MiB
#: Module groups whose import cost is measured, each in a fresh interpreter.
GROUPS = (
    ("cli (what --help loads)", "eventrouter.cli.main"),
    ("config: loader, yaml, voluptuous, jinja2", "eventrouter.config.loader"),
    ("analysis (deep check)", "eventrouter.analysis.verdict"),
    ("asyncio", "asyncio"),
    ("redis-py + hiredis", "redis.asyncio"),
    ("runtime (dispatch, steps, spawn)", "eventrouter.runtime.dispatch"),
    ("service.daemon (all `run` needs)", "eventrouter.service.daemon"),
)
# Prints the import's wall time (ms) and the VmRSS it added (MiB).
IMPORT_CODE = """
import time
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
before, start = rss(), time.perf_counter()
import {module}
print((time.perf_counter() - start) * 1000, rss() - before)
"""


def children_cpu() -> float:
    """Return the user + system CPU seconds of this process's reaped children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(cmd: Sequence[str], cwd: Path, runs: int = STARTS) -> tuple[float, float]:
    """Return the median wall time and CPU time (s) of ``cmd`` run ``runs`` times."""
    times, cpus = [], []
    for _ in range(runs):
        cpu, start = children_cpu(), time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, env=clean_env(), cwd=cwd, check=False)
        times.append(time.perf_counter() - start)
        cpus.append(children_cpu() - cpu)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-300:]!r}")
    return statistics.median(times), statistics.median(cpus)


def start_rows(ctx: Context, who: Daemon) -> list[Row]:
    """`eventrouter --help` and `check` on the examples, against a bare interpreter start."""
    base, base_cpu = wall([who.python, "-c", "pass"], who.cwd)
    examples = who.examples
    check = ["check", "--routes", str(examples / "routes.d"), "--events-dir"]
    rows = []
    for label, args in (
        ("`eventrouter --help`", ["--help"]),
        ("`eventrouter check`, shipped examples", [*check, str(examples / "events")]),
    ):
        took, cpu = wall(eventrouter_cmd(ctx, "start", args, who), who.cwd)
        rows.append(
            Row("footprint", f"{label} wall time, median of {STARTS} (base: python -c pass)",
                f"{took * 1000:.0f} ms", "< 150 ms", f"{base * 1000:.0f} ms",
                f"+{(took - base) * 1000:.0f} ms", verdict(took < 0.150), who.label)
        )  # fmt: skip
        rows.append(
            Row("footprint", f"{label} CPU time (user+sys), median", f"{cpu * 1000:.0f} ms",
                "-", f"{base_cpu * 1000:.0f} ms", f"+{(cpu - base_cpu) * 1000:.0f} ms",
                who=who.label)
        )  # fmt: skip
    return rows


def import_rows(who: Daemon) -> list[Row]:
    """Import time and RSS of each module group, each alone in a fresh interpreter."""
    rows = []
    for label, module in GROUPS:
        samples = []
        for _ in range(3):
            done = subprocess.run(
                [who.python, "-c", IMPORT_CODE.format(module=module)],
                capture_output=True, text=True, env=clean_env(), cwd=who.cwd, check=False,
            )  # fmt: skip
            if done.returncode != 0:  # another commit may not have this module
                break
            ms, mib = (float(x) for x in done.stdout.split())
            samples.append((ms, mib))
        if not samples:
            continue
        ms = statistics.median(s[0] for s in samples)
        mib = statistics.median(s[1] for s in samples)
        rows.append(Row("footprint", f"import {module} ({label}), median of 3",
                        f"{ms:.0f} ms, +{mib:.1f} MiB", "-", who=who.label))  # fmt: skip
    return rows


def children_rss(pid: int) -> float:
    """Return the VmRSS of the children of ``pid`` (the router's warden, when idle), in MiB."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sum(rss_mib(int(child)) for child in children)


@dataclass(frozen=True)
class Launch:
    """One launch: seconds until subscribed, CPU seconds by then, VmRSS and the children's."""

    ready: float
    cpu: float
    rss: float
    children: float


def launch(cmd: Sequence[str], url: str, settle: float, who: Daemon, env: dict[str, str]) -> Launch:
    """Start ``cmd``; return how long until it has subscribed, its CPU by then, and its
    VmRSS and its children's ``settle`` seconds later."""
    wait_patterns(url, lambda n: n == 0, 5.0)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=who.cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_patterns(url, lambda n: n > 0, 30.0)
        ready = time.perf_counter() - start
        cpu = proc_cpu(proc.pid)
        time.sleep(settle)
        if proc.poll() is not None:
            raise BenchError(f"{who.label} exited ({proc.returncode}) once subscribed")
        return Launch(ready, cpu, rss_mib(proc.pid), children_rss(proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def launch_cmd(ctx: Context, who: Daemon) -> list[str]:
    """Return a daemon's command line on its shipped examples."""
    events = who.examples / "events"
    if not who.router:
        return daemon_cmd(ctx, who, events, who.examples / "routes.d")
    args = ["run", "--redis", ctx.redis_url, "--routes", str(who.examples / "routes.d")]
    return eventrouter_cmd(ctx, "launch", [*args, "--events-dir", str(events)], who)


def launches(ctx: Context) -> dict[str, list[Launch]]:
    """Launch every daemon LAUNCHES times, interleaved, after one warm-up launch each."""
    daemons = ctx.folder_daemons()
    got: dict[str, list[Launch]] = {who.label: [] for who in daemons}
    for n in range(LAUNCHES + 1):  # interleaved, so that the machine's load weighs on all
        for who in daemons:
            cmd, env = launch_cmd(ctx, who), daemon_env(ctx, who)
            # RSS once settled: 1 s after the first counted launch
            run = launch(cmd, ctx.redis_url, 1.0 if n == 1 else 0.0, who, env)
            if n:
                got[who.label].append(run)
    return got


def launch_rows(ctx: Context) -> list[Row]:
    """Launch until subscribed and idle RSS of each daemon on the examples, beside the floor."""
    got = launches(ctx)
    floor = got[FLOOR.label]
    base = statistics.median(run.ready for run in floor)
    base_cpu = statistics.median(run.cpu for run in floor)
    base_rss = floor[0].rss
    ctx.notes.append(
        "footprint: launch = Popen -> PUBSUB NUMPAT > 0 with the server already running, "
        "each daemon on its checkout's shipped examples, interleaved after a warm-up launch; "
        + "; ".join(
            f"{label} {', '.join(f'{run.ready * 1000:.0f}' for run in runs)} ms"
            for label, runs in got.items()
        )
        + "; RSS 1 s after the first counted launch"
    )
    rows = []
    for who in ctx.folder_daemons():
        if who is FLOOR:
            continue
        runs = got[who.label]
        ready = statistics.median(run.ready for run in runs)
        cpu = statistics.median(run.cpu for run in runs)
        rss, children = runs[0].rss, runs[0].children
        rows += [
            Row("footprint", f"launch until subscribed, examples, median of {LAUNCHES} "
                "(base: the floor)", f"{ready * 1000:.0f} ms", f"<= {LAUNCH_RATIO:g}x base",
                f"{base * 1000:.0f} ms", f"{ready / base:.2f}x",
                verdict(ready <= LAUNCH_RATIO * base), who.label),
            Row("footprint", "CPU time (user+sys) until subscribed, median",
                f"{cpu * 1000:.0f} ms", "-", f"{base_cpu * 1000:.0f} ms",
                f"{cpu / base_cpu:.2f}x", who=who.label),
            Row("footprint", "idle VmRSS, shipped examples (base: the floor)", f"{rss:.1f} MiB",
                f"<= base + {RSS_MARGIN:g} MiB", f"{base_rss:.1f} MiB",
                f"+{rss - base_rss:.1f} MiB", verdict(rss <= base_rss + RSS_MARGIN), who.label),
            Row("footprint", "idle VmRSS of its children (the router's step warden)",
                f"{children:.1f} MiB", "-", who=who.label),
        ]  # fmt: skip
    return rows


def bench_footprint(ctx: Context) -> list[Row]:
    """Start-up, imports, launch until subscribed and idle memory."""
    launched = launch_rows(ctx)
    rows = [row for who in ctx.routers for row in start_rows(ctx, who)]
    return rows + launched + [row for who in ctx.routers for row in import_rows(who)]
