"""What an idle node pays for: start-up time, imports, launch until subscribed, idle RSS."""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness import (
    REPO,
    BenchError,
    Context,
    Row,
    clean_env,
    daemon_cmd,
    eventrouter_cmd,
    proc_cpu,
    rss_mib,
    verdict,
    wait_patterns,
)

EXAMPLES = REPO / "examples" / "ns8-cluster"
STARTS = 7  # runs of each command; the median is reported
LAUNCHES = 5  # router launches; the median is reported
#: Module groups whose import cost is measured, each in a fresh interpreter.
GROUPS = (
    ("cli (what --help loads)", "eventrouter.cli.main"),
    ("config: loader, yaml, voluptuous, jinja2", "eventrouter.config.loader"),
    ("analysis (deep check)", "eventrouter.analysis.validate"),
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
# A bare redis-py subscriber, the baseline of launch and idle RSS.
SUBSCRIBER_CODE = """
import sys, redis
client = redis.Redis.from_url(sys.argv[1])
pubsub = client.pubsub()
pubsub.psubscribe('*/event/*')
pubsub.get_message(timeout=5)
while True:
    pubsub.get_message(timeout=1.0)
"""


def children_cpu() -> float:
    """Return the user + system CPU seconds of this process's reaped children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(cmd: Sequence[str], runs: int = STARTS) -> tuple[float, float]:
    """Return the median wall time and CPU time (s) of ``cmd`` run ``runs`` times."""
    times, cpus = [], []
    for _ in range(runs):
        cpu, start = children_cpu(), time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, env=clean_env(), cwd=REPO, check=False)
        times.append(time.perf_counter() - start)
        cpus.append(children_cpu() - cpu)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-300:]!r}")
    return statistics.median(times), statistics.median(cpus)


def start_rows(ctx: Context) -> list[Row]:
    """`eventrouter --help` and `check` on the examples, against a bare interpreter start."""
    base, base_cpu = wall([sys.executable, "-c", "pass"])
    check = ["check", "--routes", str(EXAMPLES / "routes.d"), "--events-dir"]
    rows = []
    for label, args in (
        ("`eventrouter --help`", ["--help"]),
        ("`eventrouter check`, shipped examples", [*check, str(EXAMPLES / "events")]),
    ):
        took, cpu = wall(eventrouter_cmd(ctx, "start", args))
        rows.append(
            Row("footprint", f"{label} wall time, median of {STARTS} (base: python -c pass)",
                f"{took * 1000:.0f} ms", "< 150 ms", f"{base * 1000:.0f} ms",
                f"+{(took - base) * 1000:.0f} ms", verdict(took < 0.150))
        )  # fmt: skip
        rows.append(
            Row("footprint", f"{label} CPU time (user+sys), median", f"{cpu * 1000:.0f} ms",
                "-", f"{base_cpu * 1000:.0f} ms", f"+{(cpu - base_cpu) * 1000:.0f} ms")
        )  # fmt: skip
    return rows


def import_rows() -> list[Row]:
    """Import time and RSS of each module group, each alone in a fresh interpreter."""
    rows = []
    for label, module in GROUPS:
        samples = []
        for _ in range(3):
            done = subprocess.run(
                [sys.executable, "-c", IMPORT_CODE.format(module=module)],
                capture_output=True, text=True, env=clean_env(), cwd=REPO, check=True,
            )  # fmt: skip
            ms, mib = (float(x) for x in done.stdout.split())
            samples.append((ms, mib))
        ms = statistics.median(s[0] for s in samples)
        mib = statistics.median(s[1] for s in samples)
        rows.append(Row("footprint", f"import {module} ({label}), median of 3",
                        f"{ms:.0f} ms, +{mib:.1f} MiB", "-"))  # fmt: skip
    return rows


def children_rss(pid: int) -> float:
    """Return the VmRSS of the children of ``pid`` (the router's warden, when idle), in MiB."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sum(rss_mib(int(child)) for child in children)


def launch(cmd: Sequence[str], url: str, settle: float) -> tuple[float, float, float, float]:
    """Start ``cmd``; return seconds until it has subscribed, its CPU seconds by then, and
    its VmRSS and its children's ``settle`` seconds later."""
    wait_patterns(url, lambda n: n == 0, 5.0)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=clean_env(), cwd=REPO, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_patterns(url, lambda n: n > 0, 30.0)
        ready = time.perf_counter() - start
        cpu = proc_cpu(proc.pid)
        time.sleep(settle)
        if proc.poll() is not None:
            raise BenchError(f"{cmd[0]} exited ({proc.returncode}) once subscribed")
        return ready, cpu, rss_mib(proc.pid), children_rss(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def router_cmd(ctx: Context) -> list[str]:
    """Return the router's command line on the shipped examples (or --daemon's)."""
    events = EXAMPLES / "events"
    if ctx.daemon is not None:
        return daemon_cmd(ctx, events, EXAMPLES / "routes.d")
    args = ["run", "--redis", ctx.redis_url, "--routes", str(EXAMPLES / "routes.d")]
    return eventrouter_cmd(ctx, "launch", [*args, "--events-dir", str(events)])


def launch_rows(ctx: Context) -> list[Row]:
    """Launch until subscribed and idle RSS: the router on the examples, a bare subscriber."""
    subscriber = [sys.executable, "-c", SUBSCRIBER_CODE, ctx.redis_url]
    ours, bare = [], []
    for n in range(LAUNCHES):  # interleaved, so that the machine's load weighs on both
        bare.append(launch(subscriber, ctx.redis_url, 0.0 if n else 0.5))
        ours.append(launch(router_cmd(ctx), ctx.redis_url, 0.0 if n else 1.0))
    ready = statistics.median(run[0] for run in ours)
    base = statistics.median(run[0] for run in bare)
    cpu = statistics.median(run[1] for run in ours)
    base_cpu = statistics.median(run[1] for run in bare)
    rss, base_rss, children = ours[0][2], bare[0][2], ours[0][3]
    ctx.notes.append(
        "footprint: launch = Popen -> PUBSUB NUMPAT > 0 with the server already running, "
        f"router runs {', '.join(f'{run[0] * 1000:.0f}' for run in ours)} ms, bare redis-py "
        f"subscriber {', '.join(f'{run[0] * 1000:.0f}' for run in bare)} ms; RSS 1 s after "
        "the first launch"
    )
    return [
        Row("footprint", f"launch until subscribed, examples, median of {LAUNCHES} "
            "(base: bare redis-py subscriber)", f"{ready * 1000:.0f} ms", "< 100 ms",
            f"{base * 1000:.0f} ms", f"{ready / base:.2f}x", verdict(ready < 0.100)),
        Row("footprint", "CPU time (user+sys) until subscribed, median", f"{cpu * 1000:.0f} ms",
            "-", f"{base_cpu * 1000:.0f} ms", f"{cpu / base_cpu:.2f}x"),
        Row("footprint", "idle VmRSS, shipped examples (base: bare redis-py subscriber)",
            f"{rss:.1f} MiB", "<= 30 MiB", f"{base_rss:.1f} MiB", f"{rss / base_rss:.2f}x",
            verdict(rss <= 30.0)),
        Row("footprint", "idle VmRSS of the router's children (its step warden)",
            f"{children:.1f} MiB", "-"),
    ]  # fmt: skip


def bench_footprint(ctx: Context) -> list[Row]:
    """Start-up, imports, launch until subscribed and idle memory."""
    rows = launch_rows(ctx)
    if ctx.daemon is None:
        rows = start_rows(ctx) + rows + import_rows()
    return rows
