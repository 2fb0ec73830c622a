"""Scale: 10,000 generated routes (check, start, reload, RSS) and the shipped examples."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import (
    READY,
    REPO,
    WARM_CODE,
    BenchError,
    Context,
    Daemon,
    Row,
    clean_env,
    eventrouter_cmd,
    print_profile,
    rss_mib,
    running_router,
    verdict,
    write_file,
)

RELOADED = r"reloaded: (\d+) routes \(\+\d+ -\d+ ~\d+\)"
# Bounds of the scale runs: 20x their 3 s targets is plenty to tell a FAIL, and keeps the
# whole benchmark near its 3-minute budget.
CHECK_TIMEOUT = 60.0
LOAD_TIMEOUT = 60.0

# --- 4. scale ------------------------------------------------------------------------------

WELL_KNOWN = (
    "module-added",
    "module-removed",
    "module-domain-changed",
    "user-domain-changed",
    "ldap-provider-changed",
    "backup-status-changed",
    "leader-changed",
    "fqdn-changed",
)
VERBS = ("changed", "added", "removed", "started", "stopped", "updated", "failed", "restored")
APPS = ("mail", "nextcloud", "samba", "traefik", "loki", "webtop", "dokuwiki", "ejabberd")
HANDLERS = 5


def scale_pattern(r: int) -> str:
    """Return a channel pattern for generated route ``r``: literals, captures, globs, classes."""
    app, verb = APPS[r % len(APPS)], VERBS[(r // 7) % len(VERBS)]
    event = WELL_KNOWN[r % len(WELL_KNOWN)] if r % 4 == 0 else f"{app}-{r % 211}-{verb}"
    shapes = (
        f"cluster/event/{event}",
        f"module/{{module}}/event/{event}",
        f"node/{{node}}/event/{event}",
        f"module/{app}[0-9]/event/{event}",
        f"*/event/{event}",
        f"module/{app}{r % 9 + 1}/event/{app}-*-{verb}",
    )
    return shapes[r % len(shapes)]


def scale_condition(r: int, pattern: str) -> str | None:
    """Return a ``when:`` expression for route ``r`` (or none), in a few realistic shapes."""
    app = APPS[(r // 3) % len(APPS)]
    if "{module}" in pattern and r % 2:
        return f'match.module != "{app}{r % 5}" and payload.node | default(0) != {r % 4}'
    shapes = (
        None,
        f'payload.module is defined and payload.module.startswith("{app}")',
        f"payload.node | default(0) == {r % 9 + 1}",
        f'"d{r % 97}.example.org" in (payload.domains | default([]))',
        f"payload.backup_id is defined and payload.backup_id > {r % 13}",
    )
    return shapes[r % len(shapes)]


def emit_yaml(r: int, pattern: str) -> str:
    """Return an emit action for route ``r``, with templated channel and payload."""
    target = "module/{{ match.module }}" if "{module}" in pattern else "cluster"
    return (
        f"      - emit:\n"
        f'          channel: "{target}/event/derived-{r}-{VERBS[r % len(VERBS)]}"\n'
        f"          payload:\n"
        f'            origin: "{{{{ channel }}}}"\n'
        f'            route: "{{{{ route }}}}"\n'
        f"            seq: {r}\n"
        f"            modules: [\"{{{{ payload.module | default('m{r % 31}') }}}}\"]\n"
    )


def run_yaml(r: int) -> str:
    """Return a run action for route ``r``: one of a few handler folders, env templates."""
    app = APPS[r % len(APPS)].upper()
    return (
        f"      - run: ../handlers/h{r % HANDLERS}\n"
        f"        timeout: {r % 50 + 5}s\n"
        f"        env:\n"
        f"          TARGET_{app}: \"{{{{ payload.module | default('none-{r}') }}}}\"\n"
        f'          ROUTE_SEQ: "{r}"\n'
        f'          EVENT_CHANNEL: "{{{{ channel }}}} #{r}"\n'
    )


def route_yaml(r: int) -> str:
    """Return the YAML text of generated route ``r``."""
    pattern = scale_pattern(r)
    # A second pattern of the same shape: the captures a template uses stay defined.
    patterns = json.dumps([pattern, scale_pattern(r + 6)] if r % 7 == 0 else pattern)
    lines = [
        f"  - name: r{r:05d}-{APPS[r % len(APPS)]}-{VERBS[r % len(VERBS)]}\n",
        f"    description: generated route {r} for {pattern}\n",
        f"    on: {patterns}\n",
    ]
    when = scale_condition(r, pattern)
    if when is not None:
        lines.append(f"    when: {json.dumps(when)}\n")
    lines.append("    do:\n")
    # Runs only on specific channels (own event, no '*' source): as an operator would, so one
    # event does not run a handler folder twice through two routes (the lint warns of that).
    runs = r % 3 != 0 and r % 6 < 4 and r % 4 != 0
    if not runs or r % 3 == 2:
        lines.append(emit_yaml(r, pattern))
    if runs:
        lines.append(run_yaml(r))
    if r % 50 == 49:
        lines.append("    enabled: false\n")
    return "".join(lines)


def generate_routes(root: Path, files: int, per_file: int) -> Path:
    """Write ``files`` route files of ``per_file`` routes and their handlers; return routes.d."""
    for h in range(HANDLERS):
        write_file(root / "handlers" / f"h{h}" / "10step", "#!/bin/sh\nexit 0\n", executable=True)
    routes = root / "routes.d"
    for f in range(files):
        area = APPS[f % len(APPS)]
        body = "".join(route_yaml(f * per_file + i) for i in range(per_file))
        text = f"# generated routes, file {f}: {area}\nroutes:\n{body}"
        write_file(routes / f"{f:04d}-{area}.yml", text)
    return routes


def timed_check(ctx: Context, name: str, routes: Path, expected: int) -> float:
    """Run ``eventrouter check`` in a subprocess; return its wall time in seconds."""
    cmd = eventrouter_cmd(ctx, name, ["check", "--routes", str(routes)])
    start = time.perf_counter()
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ctx.subjects[0].cwd,
        timeout=CHECK_TIMEOUT,
        check=False,
    )
    elapsed = time.perf_counter() - start
    summary = f"{expected} route{'' if expected == 1 else 's'} checked: 0 errors"
    # Another commit (compare.py) may word its summary otherwise: its exit status then.
    worded = summary in done.stderr or "checked" not in done.stderr
    if done.returncode != 0 or not worded:
        found = (done.stdout + done.stderr).strip().splitlines()[:5]
        raise BenchError(f"check of {routes} failed ({done.returncode}): {' | '.join(found)}")
    print_profile(ctx, name)
    return elapsed


@dataclass(frozen=True)
class DaemonFigures:
    """What one router run on a route set measured."""

    ready_s: float
    rss_load: float
    reload_s: float
    rss_reload: float
    peak: float
    patterns: int


def edit_one_file(routes: Path) -> None:
    """Change one route's description in the first file, so the reload has a change to find."""
    first = sorted(routes.glob("*.yml"))[0]
    first.write_text(first.read_text().replace("description: ", "description: edited ", 1))


def measure_daemon(
    ctx: Context, name: str, folder: Path, extra: Sequence[str], routes: int
) -> DaemonFigures:
    """Start a router, then time a SIGHUP reload, with its RSS after the load and the reload."""
    args = ["--routes", str(folder), *extra]
    start = time.perf_counter()
    with running_router(ctx, name, args, ready_timeout=LOAD_TIMEOUT) as router:
        ready = router.wait_log(READY, 1.0)
        ready_s = time.perf_counter() - start  # upper bound: includes the poll interval
        time.sleep(0.3)
        rss_load = rss_mib(router.proc.pid)
        edit_one_file(folder)
        mark = len(router.read_log())
        sent = time.perf_counter()
        router.proc.send_signal(signal.SIGHUP)
        reloaded = router.wait_log(RELOADED, LOAD_TIMEOUT, since=mark)
        reload_s = time.perf_counter() - sent
        if int(reloaded.group(1)) != routes:
            raise BenchError(f"{name}: reloaded {reloaded.group(1)} routes, expected {routes}")
        time.sleep(0.3)
        rss_reload = rss_mib(router.proc.pid)
        peak = rss_mib(router.proc.pid, "VmHWM")
    return DaemonFigures(ready_s, rss_load, reload_s, rss_reload, peak, int(ready.group(1)))


def imports_rss(who: Daemon) -> float:
    """Return the RSS of an idle interpreter that imported the router and its dependencies."""
    code = (
        "import sys, time, eventrouter.cli.main, eventrouter.service.daemon,"
        " eventrouter.config.loader;"
        "print('ready', flush=True); time.sleep(30)"
    )
    if who.home != REPO:  # another commit's modules: what the harness warms its cache with
        code = WARM_CODE + "\nprint('ready', flush=True); time.sleep(30)"
    proc = subprocess.Popen(
        [who.python, "-c", "import time\n" + code], stdout=subprocess.PIPE, env=clean_env(),
        cwd=who.cwd,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise BenchError("the imports-only interpreter did not start")
        return rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait(5)


def examples_copy(ctx: Context) -> Path:
    """Copy the shipped examples, since the reload edits a route file; return the copy."""
    copy = ctx.tmp / f"examples-{ctx.subjects[0].label}"
    shutil.copytree(ctx.subjects[0].examples, copy, symlinks=True)
    return copy


def below(metric: str, value: float, unit: str, limit: float, base: float | None) -> Row:
    """Return a scale row whose target is ``value < limit``, with its baseline when known."""
    return Row(
        "scale",
        metric,
        f"{value:.2f} {unit}",
        f"< {limit:g} {unit}" if limit else "-",
        "-" if base is None else f"{base:.2f} {unit}",
        "-" if not base else f"{value / base:.2f}x",
        verdict(value < limit) if limit else "info",
    )


def attempt(ctx: Context, what: str, measure: Callable[[], list[Row]]) -> list[Row]:
    """Run one part of a benchmark; a part that cannot complete gives a FAIL row and a note."""
    try:
        return measure()
    except BenchError as exc:
        ctx.notes.append(f"scale: {what}: did not complete: {exc}")
        return [Row("scale", f"{what}: did not complete (see the notes)", "-", "-", verdict="FAIL")]


def _route_names(path: Path) -> list[str]:
    """Return the names of the routes in a shipped route file (lines ``- name: X``)."""
    return [
        line.split(":", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.lstrip().startswith("- name:")
    ]


def check_rows(ctx: Context, routes: Path, total: int) -> list[Row]:
    """Time ``eventrouter check`` on the generated routes and on a folder of one route."""
    # One route, not an empty folder: `check` on nothing is an error (a forgotten --routes).
    single = ctx.tmp / "single.d"
    single.mkdir(exist_ok=True)
    (single / "one.yml").write_text(
        "routes:\n  - name: one\n    on: bench/event/one\n    do:\n"
        "      - emit: {channel: bench/event/two}\n"
    )
    base = timed_check(ctx, "check-single", single, 1)
    metric = f"`check` wall time, {total} routes (base: a folder of one route)"
    try:
        took = timed_check(ctx, "check-scale", routes, total)
    except subprocess.TimeoutExpired:
        ctx.notes.append(f"scale: `check` killed after {CHECK_TIMEOUT:g}s")
        return [Row("scale", metric, f"> {CHECK_TIMEOUT:g} s", "< 3 s", f"{base:.2f} s", "-",
                    "FAIL")]  # fmt: skip
    return [below(metric, took, "s", 3, base)]


def daemon_rows(ctx: Context, routes: Path, total: int) -> list[Row]:
    """Load, reload and RSS of the router on the generated routes and on the shipped examples."""
    label = ctx.subjects[0].label
    big = measure_daemon(ctx, f"scale-{label}", routes, (), total)
    copy = examples_copy(ctx)
    events = ("--events-dir", str(copy / "events"))
    shipped = sum(len(_route_names(path)) for path in (copy / "routes.d").glob("*.yml"))
    small = measure_daemon(ctx, f"examples-{label}", copy / "routes.d", events, shipped)
    floor = imports_rss(ctx.subjects[0])
    ctx.notes.append(
        f"scale: {total} routes -> {big.patterns} PSUBSCRIBE patterns; peak RSS (VmHWM) "
        f"{big.peak:.1f} MiB, examples {small.peak:.1f} MiB; RSS base = an idle interpreter "
        "that imported eventrouter.cli/daemon/config and their dependencies"
    )
    what = f"{total} routes"
    return [
        below(f"router start -> subscribed, {what} (base: examples)", big.ready_s, "s", 0,
              small.ready_s),
        below(f"SIGHUP -> 'reloaded' line, {what} (base: examples)", big.reload_s, "s", 3,
              small.reload_s),
        below(f"daemon VmRSS after load, {what} (base: imports only)", big.rss_load, "MiB", 80,
              floor),
        below(f"daemon VmRSS after reload, {what}", big.rss_reload, "MiB", 80, floor),
        # Its target is footprint's idle RSS row, against the floor.
        below("daemon VmRSS, shipped examples", small.rss_load, "MiB", 0, floor),
    ]  # fmt: skip


def bench_scale(ctx: Context) -> list[Row]:
    """Check time, reload time and RSS on 10,000 generated routes, and RSS on the examples."""
    sizes = ctx.sizes
    total = sizes.scale_files * sizes.routes_per_file
    routes = generate_routes(ctx.tmp / "scale", sizes.scale_files, sizes.routes_per_file)
    rows = attempt(ctx, "check", lambda: check_rows(ctx, routes, total))
    return rows + attempt(ctx, "daemon", lambda: daemon_rows(ctx, routes, total))
